"""`bnpp export`: the device half and the edge half of a fitted run (safetensors and/or ONNX)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import check_outputs, JsonOpt, SeedOpt, write_json_output


def export(
    run: Annotated[Path, typer.Argument(help="Run directory made by `bnpp fit`.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the halves.")],
    format: Annotated[str, typer.Option(
        "--format", help="safetensors (device/edge.safetensors), onnx (device/edge.onnx, checked with ONNX "
                         "Runtime; needs bnpp[onnx]) or all.")] = "safetensors",
    calib_data: Annotated[Optional[str], typer.Option(
        "--calib-data", help="Images (.npz, ImageFolder, ...) to calibrate an int8 device half, device.int8.onnx "
                             "(use training images, not test images).")] = None,
    calib_images: Annotated[int, typer.Option(help="How many --calib-data images to use.")] = 256,
    reparam: Annotated[bool, typer.Option("--reparam", help="Fuse re-parameterisable branches (RepVGG, MobileOne, "
                                                            "FastViT) before cutting; ONNX only.")] = False,
    json_path: JsonOpt = None,
    seed: SeedOpt = 0,
):
    """Write the device half (head + encoder) and the edge half (decoder + tail)."""
    check_outputs(json_path)  # every output path, before any work
    from ..deploy.export import ExportConfig, export_run
    from .render import render_export

    import time

    from rich.console import Console
    from rich.text import Text

    err, t0 = Console(stderr=True, highlight=False, soft_wrap=True), time.perf_counter()
    step = lambda what: err.print(Text(f"export: {what} ({time.perf_counter() - t0:.0f} s so far)", style="dim"))  # noqa: E731
    result = export_run(ExportConfig(str(run), str(out), format, calib_data, calib_images, reparam, seed), step)
    write_json_output(json_path, result.to_dict())
    render_export(result)


def register(app: typer.Typer) -> None:
    app.command()(export)
