"""`bnpp eval`: top-1 against channel quality, and the compression actually achieved."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (CONDITION_FLAGS, check_outputs, DataOpt, JsonOpt, PhyOpt, SeedOpt, link_condition, parse_list,
                      phy_overrides, write_json_output)


def eval_(
    run: Annotated[Path, typer.Argument(help="Run directory made by `bnpp fit`.")],
    data: DataOpt = None,
    snr: Annotated[Optional[str], typer.Option(help="PSNR values in dB, e.g. 0,5,10,20 (analog channels).")] = None,
    erasure: Annotated[Optional[str], typer.Option(help="bec: erasure probabilities, e.g. 0,0.01,0.05.")] = None,
    flip: Annotated[Optional[str], typer.Option(help="bsc: bit flip probabilities, e.g. 0,0.01,0.05.")] = None,
    draws: Annotated[int, typer.Option(help="Noise draws per condition.")] = 5,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N test images.")] = None,
    data_root: Annotated[Optional[str], typer.Option(help="Root for torchvision datasets.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    json_path: JsonOpt = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write accuracy vs condition as a PNG.")] = None,
    phy: PhyOpt = None,
    seed: SeedOpt = 0,
):
    """Top-1 against channel quality, and the compression actually achieved."""
    from ..errors import DataError
    from ..run.evaluate import EvalConfig, check_plotting, evaluate_run, plot_eval
    from .render import render_eval

    if data is None:
        raise DataError("--data is required: the test images (.npz, ImageFolder directory or dataset name)")
    if plot is not None:
        check_plotting()  # before the evaluation, not after it
    check_outputs(json_path, plot)
    name, values = link_condition(snr, erasure, flip)
    conditions = parse_list(values, CONDITION_FLAGS[name]) if name else None
    config = EvalConfig(run=str(run), data=data, conditions=conditions, condition_name=name,
                        draws=draws, limit=limit, data_root=data_root, device=device, seed=seed,
                        link=phy_overrides(phy) or None)
    result = evaluate_run(config)
    render_eval(result)  # the table first: a file that cannot be written does not hide it
    write_json_output(json_path, result.to_dict())
    if plot is not None:
        plot_eval(result, str(plot))


def register(app: typer.Typer) -> None:
    app.command(name="eval")(eval_)
