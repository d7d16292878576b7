"""`bnpp predict`: device -> wire -> channel -> edge on image files, in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import (check_outputs, ErasureOpt, FlipOpt, JsonOpt, SeedOpt, SnrOpt, ThreadsOpt, TopOpt, link_condition,
                      write_json_output)


def predict(
    deploy: Annotated[Path, typer.Argument(help="Directory made by `bnpp export` (safetensors and/or ONNX halves).")],
    images: Annotated[list[str], typer.Argument(help="Image files (PNG, JPEG, ...), folders of them, or quoted globs.")],
    snr: SnrOpt = None,
    erasure: ErasureOpt = None,
    flip: FlipOpt = None,
    top: TopOpt = 5,
    runtime: Annotated[str, typer.Option(help="torch (the .safetensors halves), onnxruntime (device.onnx + "
                                              "edge.onnx) or onnxruntime-int8 (device.int8.onnx + edge.onnx).")] = "torch",
    batch_size: Annotated[int, typer.Option(help="Images per device/edge pass (each still gets its own wire frame).")] = 1,
    json_path: JsonOpt = None,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = 1,
):
    """Run device -> wire -> channel -> edge on images; top classes, bytes on the wire, time per side."""
    check_outputs(json_path)  # every output path, before any work
    from ..deploy.predict import PredictConfig, predict as predict_images
    from .render import render_predictions

    name, condition = link_condition(snr, erasure, flip)
    config = PredictConfig(str(deploy), condition=condition, condition_name=name, top_k=top, seed=seed,
                           runtime=runtime, batch_size=batch_size, threads=threads)
    result = predict_images(config, images)
    write_json_output(json_path, result.to_dict())
    render_predictions(result)


def register(app: typer.Typer) -> None:
    app.command()(predict)
