"""`bnpp predict`: device -> wire -> channel -> edge on image files, in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import ErasureOpt, JsonOpt, SeedOpt, SnrOpt, TopOpt, link_condition, write_json_output


def predict(
    deploy: Annotated[Path, typer.Argument(help="Directory with device.safetensors and edge.safetensors.")],
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...).")],
    snr: SnrOpt = None,
    erasure: ErasureOpt = None,
    top: TopOpt = 5,
    json_path: JsonOpt = None,
    seed: SeedOpt = 0,
):
    """Run device -> wire -> channel -> edge on image files; top classes, payload size, time per side."""
    from ..deploy.predict import predict as run_predict
    from .render import render_predictions

    condition, flag = link_condition(snr, erasure)
    results = run_predict(deploy, [str(p) for p in images], condition=condition, topk=top, seed=seed,
                          condition_flag=flag)
    write_json_output(json_path, [r.to_dict() for r in results])
    render_predictions(results)


def register(app: typer.Typer) -> None:
    app.command()(predict)
