"""Shared option aliases, the one map from the library's setting names to flags, and the small
parsers the commands use (no library imports at module level).

The library names a setting by its config field or condition name, in backticks (errors.py);
``FLAGS`` is the one place that says which flag sets it, and :func:`render` shows a library
message with the flags.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

# condition name (Channel.condition_name) -> the flag that gives it
CONDITION_FLAGS = {"snr_db": "--snr", "erasure": "--erasure", "flip": "--flip"}
# config field -> the flag that sets it, where the flag is not the field's own name ("top_k" -> "--top")
_RENAMED = {"top_k": "--top", "all_points": "--all", "link": "--phy", "feature_cache": "--cache-features", "json_path": "--json"}
# every config field that a command exposes under its own name ("img_size" -> "--img-size")
_FIELDS = ("model", "pretrained", "checkpoint", "num_classes", "img_size", "model_kwargs", "mean", "std", "reparam",
           "data", "samples", "repeats", "verify", "ratio", "bits_per_image", "bandwidth_mbps", "device_gmacs",
           "edge_gmacs", "split", "out", "channel", "bits", "code_channels", "preset", "lmbda", "hidden_channels",
           "encoder_blocks", "decoder_blocks", "spatial_reduction", "val_data", "val_fraction", "data_root", "limit",
           "codec_epochs", "joint_epochs", "lr", "joint_lr", "lr_schedule", "batch_size", "distill",
           "distill_temperature", "distill_features", "distill_at", "augment", "cache_dir", "device", "resume",
           "overwrite", "checkpoint_steps", "checkpoint_minutes", "log_interval", "seed", "runtime", "draws",
           "format", "calib_data", "calib_images", "server", "token", "timeout", "plot", "threads")
FLAGS: dict[str, str] = {**{f: "--" + f.replace("_", "-") for f in _FIELDS}, **_RENAMED, **CONDITION_FLAGS}
_NAMED = re.compile(r"`([a-z][a-z0-9_]*)`")


def render(text: str | None) -> str | None:
    """A library message with each `setting` it names shown as its flag (`img_size` -> --img-size);
    a name with no flag keeps its backticks."""
    if text is None:
        return None
    return _NAMED.sub(lambda m: FLAGS.get(m.group(1), m.group(0)), text)

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
ErasureOpt = Annotated[Optional[float], typer.Option(help="bec: bit erasure probability.")]
FlipOpt = Annotated[Optional[float], typer.Option(help="bsc: bit flip (crossover) probability.")]
PhyOpt = Annotated[Optional[list[str]], typer.Option(
    "--phy", help="ofdm / ldpc (needs bnpp[phy]): the radio link as key=value, repeatable, e.g. --phy profile=C "
                  "--phy speed_mps=30 --phy csi=perfect; ldpc: --phy link=awgn --phy modulation_bits=4 --phy "
                  "code_rate=0.5. Keys: profile (A..E, A10..D30, none), delay_spread_ns, speed_mps, carrier_ghz, "
                  "subcarrier_spacing_khz, subcarriers, ofdm_symbols, pilot_symbols (2,11), csi (ls, perfect), "
                  "link, modulation_bits, code_rate, block_bits, crc.")]
TopOpt = Annotated[int, typer.Option(help="How many classes to show.")]
ThreadsOpt = Annotated[int, typer.Option(
    "--threads", help="torch threads for the timed work (1: batch-1 latency as one device core gives it, "
                      "not inflated by other work on the machine; each figure states it).")]
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


def check_outputs(*paths: Path | None) -> None:
    """--json / --plot files: writable, checked before any work (files.check_writable)."""
    from ..files import check_writable

    for path in paths:
        if path is not None:
            check_writable(path, "file")


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


def conditions(snr, erasure, flip) -> dict:
    """{condition name: the value of its flag} (cli options -> the library's names)."""
    return {"snr_db": snr, "erasure": erasure, "flip": flip}


def link_condition(snr: float | None, erasure: float | None, flip: float | None) -> tuple[str | None, float | None]:
    """(condition name, value) of the one of --snr / --erasure / --flip given, or (None, None).
    Whether it suits the deployed channel is the library's check (link.config)."""
    from ..link.config import given_condition

    return given_condition(conditions(snr, erasure, flip))


def channel_config(channel: str, snr: str | None, erasure: str | None, flip: str | None, bits: int,
                   phy: list[str] | None = None):
    """The ChannelConfig of --channel with the training range of --snr / --erasure / --flip, and the
    radio link of --phy (the Sionna channels)."""
    from ..errors import ChannelError
    from ..link.config import ChannelConfig
    from ..link.registry import PHY_CHANNELS

    if phy and channel not in PHY_CHANNELS:
        raise ChannelError(f"--phy applies to the radio links ({', '.join(PHY_CHANNELS)}), not channel '{channel}'")
    ranges = {flag: parse_range(value, flag) for flag, value in (("--snr", snr), ("--erasure", erasure),
                                                                 ("--flip", flip))}
    return ChannelConfig.for_condition(channel, conditions(*ranges.values()), bits, phy_config(phy))


def phy_config(values: list[str] | None):
    """--phy key=value ... -> a PhyConfig (its defaults for the keys not given), or None when none given."""
    from ..link.phy import PhyConfig

    return PhyConfig(**phy_overrides(values)) if values else None


def phy_overrides(values: list[str] | None) -> dict:
    """--phy key=value ... -> {PhyConfig field: value}, each parsed as its field's type; {} when none given."""
    import dataclasses

    from ..errors import ChannelError
    from ..link.phy import PhyConfig

    if not values:
        return {}
    fields = {f.name: f for f in dataclasses.fields(PhyConfig)}
    given: dict = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or key not in fields:
            raise ChannelError(f"--phy {item!r}: expected key=value with a key of {', '.join(fields)}")
        default = getattr(PhyConfig(), key)
        try:
            if isinstance(default, list):
                given[key] = [int(v) for v in raw.split(",") if v.strip()]
            elif isinstance(default, (int, float)) and not isinstance(default, bool):
                given[key] = type(default)(raw)
            else:
                given[key] = raw
        except ValueError:
            raise ChannelError(f"--phy {item!r}: {raw!r} is not a valid {key} "
                               f"(like {default!r})") from None
    return given
