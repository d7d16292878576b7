"""The `bnpp` command line: a thin Typer layer over the library.

Each command parses options, builds a config, calls ONE library function and renders the result.
Heavy imports (torch, timm) happen inside the command bodies, so `bnpp --help` is instant.
Library errors (BnppError) become one line on stderr and exit code 2; BNPP_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

app = typer.Typer(
    name="bnpp",
    help="Device-edge co-inference with learned feature compression (BottleNet++) for any timm model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.callback()
def _root() -> None:
    """Device-edge co-inference with learned feature compression (BottleNet++) for any timm model."""


# ---- shared options ---------------------------------------------------------------------------
ModelArg = Annotated[str, typer.Argument(help="timm model name, e.g. resnet50, vit_tiny_patch16_224.")]
PretrainedOpt = Annotated[bool, typer.Option("--pretrained", help="timm's pretrained weights (needs the network).")]
CheckpointOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="Local weights: .safetensors, or .pth/.pt (read with weights_only=True).")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="Classifier size (default: the model's).")]
ImgSizeOpt = Annotated[Optional[int], typer.Option("--img-size", help="Square input size (default: the model's).")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON to this file.")]
DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Images: .npz (x uint8 NxHxWx3, y), an ImageFolder directory, or cifar10/cifar100/...")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]


def _fail(message: str, hint: str | None = None, code: int = 2) -> None:
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"[bold red]Error:[/] {message}", markup=True)
    if hint:
        err.print(f"[dim]Hint: {hint}[/]", markup=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Turn library errors into one-line messages and a non-zero exit, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import BnppError

        try:
            return fn(*args, **kwargs)
        except BnppError as e:
            if os.environ.get("BNPP_DEBUG"):
                raise
            _fail(str(e), e.hint)
        except KeyboardInterrupt:
            _fail("interrupted", code=130)

    return wrapper


def backbone_config(model, pretrained, checkpoint, num_classes, img_size):
    from .backbone import BackboneConfig

    return BackboneConfig(model=model, pretrained=pretrained, checkpoint=str(checkpoint) if checkpoint else None,
                          num_classes=num_classes, img_size=img_size)


def write_json_output(path: Path | None, obj) -> None:
    if path is not None:
        from .files import write_json

        write_json(path, obj)


# ---- commands ---------------------------------------------------------------------------------
@app.command()
@handle_errors
def profile(
    model: ModelArg,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    num_classes: NumClassesOpt = None,
    img_size: ImgSizeOpt = None,
    all_points: Annotated[bool, typer.Option("--all", help="Every valid split point, not only the named ones.")] = False,
    data: DataOpt = None,
    samples: Annotated[int, typer.Option(help="Images used for the sparsity figures.")] = 16,
    repeats: Annotated[int, typer.Option(help="Timed runs per head (median reported).")] = 5,
    verify: Annotated[bool, typer.Option("--verify", help="Check tail(head(x)) == model(x) at every point.")] = False,
    bandwidth_mbps: Annotated[float, typer.Option(help="Budget: uplink bandwidth in Mbit/s.")] = 10.0,
    device_gmacs: Annotated[float, typer.Option(help="Budget: device speed in GMAC/s.")] = 10.0,
    edge_gmacs: Annotated[float, typer.Option(help="Budget: edge speed in GMAC/s.")] = 1000.0,
    ratio: Annotated[float, typer.Option(help="Budget: expected bit compression of the codec vs float32.")] = 64.0,
    json_path: JsonOpt = None,
    seed: SeedOpt = 0,
):
    """List valid split points with compute, feature size and sparsity; recommend where to split."""
    from .profile import Budget, ProfileConfig, profile_model
    from .render import render_profile

    config = ProfileConfig(
        backbone=backbone_config(model, pretrained, checkpoint, num_classes, img_size), all_points=all_points,
        data=data, samples=samples, repeats=repeats, verify=verify, seed=seed,
        budget=Budget(bandwidth_mbps=bandwidth_mbps, device_gmacs=device_gmacs, edge_gmacs=edge_gmacs, ratio=ratio),
    )
    result = profile_model(config)
    write_json_output(json_path, result.to_dict())
    render_profile(result)


def main() -> None:
    app(prog_name="bnpp")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
