"""`bnpp export`: the device half and the edge half of a fitted run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import JsonOpt, write_json_output


def export(
    run: Annotated[Path, typer.Argument(help="Run directory made by `bnpp fit`.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for device.safetensors and edge.safetensors.")],
    json_path: JsonOpt = None,
):
    """Write the device half (head + encoder) and the edge half (decoder + tail) as safetensors."""
    from ..deploy.export import export_halves
    from .render import render_export

    result = export_halves(run, out)
    write_json_output(json_path, result.to_dict())
    render_export(result)


def register(app: typer.Typer) -> None:
    app.command()(export)
