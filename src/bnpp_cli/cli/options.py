"""Shared option aliases and the small parsers the commands use (no library imports at module level)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ModelArg = Annotated[str, typer.Argument(help="timm model name, e.g. resnet50, vit_tiny_patch16_224.")]
PretrainedOpt = Annotated[bool, typer.Option("--pretrained", help="timm's pretrained weights (needs the network).")]
CheckpointOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="Local weights: .safetensors, or .pth/.pt (read with weights_only=True).")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="Classifier size (default: the model's).")]
ImgSizeOpt = Annotated[Optional[int], typer.Option("--img-size", help="Square input size (default: the model's).")]
ModelKwargsOpt = Annotated[Optional[list[str]], typer.Option(
    "--model-kwargs", help="timm.create_model keyword argument as key=value (int, float, bool or string); "
                           "repeatable: --model-kwargs patch_size=4 --model-kwargs depth=6.")]
MeanOpt = Annotated[Optional[str], typer.Option(
    "--mean", help="Input normalisation mean the weights were trained with, R,G,B (default: timm's data config).")]
StdOpt = Annotated[Optional[str], typer.Option(
    "--std", help="Input normalisation std the weights were trained with, R,G,B (default: timm's data config).")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON to this file.")]
DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Images: .npz (x uint8 NxHxWx3, y), an ImageFolder directory, or cifar10/cifar100/...")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
SnrOpt = Annotated[Optional[float], typer.Option(help="Analog channels: PSNR in dB (default: noiseless).")]
ErasureOpt = Annotated[Optional[float], typer.Option(help="Digital channels: bit error probability.")]
TopOpt = Annotated[int, typer.Option(help="How many classes to show.")]
TokenOpt = Annotated[Optional[str], typer.Option(
    "--token", envvar="BNPP_TOKEN", help="Shared secret between devices and the edge (or env BNPP_TOKEN).")]


def backbone_config(model, pretrained, checkpoint, num_classes, img_size, model_kwargs=None, mean=None, std=None):
    from ..split.backbone import BackboneConfig, parse_model_kwargs

    return BackboneConfig(model=model, pretrained=pretrained, checkpoint=str(checkpoint) if checkpoint else None,
                          num_classes=num_classes, img_size=img_size, model_kwargs=parse_model_kwargs(model_kwargs),
                          mean=parse_triple(mean, "--mean"), std=parse_triple(std, "--std"))


def parse_triple(value: str | None, flag: str) -> list[float] | None:
    """'0.485,0.456,0.406' -> [0.485, 0.456, 0.406] (the library checks the count and range)."""
    from ..errors import ModelError

    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise ModelError(f"{flag} {value!r} is not a comma-separated list of numbers",
                         hint=f"e.g. {flag} 0.485,0.456,0.406") from None


def write_json_output(path: Path | None, obj) -> None:
    if path is not None:
        from ..files import write_json

        write_json(path, obj)


def parse_range(value: str | None, flag: str):
    """'10' -> 10.0 (from 10 to the best condition); 'A:B' -> [A, B], A < B (a reversed range is a
    typo more often than a wish: refused, not silently sorted)."""
    from ..errors import ChannelError

    if value is None:
        return None
    try:
        parts = [float(v) for v in value.split(":")]
    except ValueError:
        raise ChannelError(f"{flag} {value!r} is not a number or a range A:B") from None
    if len(parts) > 2:
        raise ChannelError(f"{flag} {value!r}: give one number or a range A:B")
    if len(parts) == 2 and not parts[0] < parts[1]:
        raise ChannelError(f"{flag} {value!r}: a range A:B goes from low to high (A < B)",
                           hint=f"{flag} {parts[1]:g}:{parts[0]:g}" if parts[0] > parts[1] else None)
    return parts[0] if len(parts) == 1 else parts


def parse_list(value: str | None, flag: str) -> list[float] | None:
    """'0,5,10' -> [0.0, 5.0, 10.0]."""
    from ..errors import ChannelError

    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ChannelError(f"{flag} {value!r} is not a comma-separated list of numbers") from None


def link_condition(snr: float | None, erasure: float | None) -> tuple[float | None, str | None]:
    """(value, flag) of --snr / --erasure, at most one of them; (None, None) when neither is given.
    Whether the flag suits the export's channel is the library's check (link.config)."""
    from ..errors import ChannelError

    if snr is not None and erasure is not None:
        raise ChannelError("give --snr (analog channels) or --erasure (digital channels), not both")
    if snr is None and erasure is None:
        return None, None
    return (snr, "--snr") if snr is not None else (erasure, "--erasure")
