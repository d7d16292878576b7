"""`bnpp profile`: valid split points with compute, feature size and sparsity; where to split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (check_outputs, CheckpointOpt, DataOpt, ImgSizeOpt, ModelKwargsOpt, MeanOpt, StdOpt, JsonOpt, ModelArg, NumClassesOpt, PretrainedOpt, SeedOpt,
                      ThreadsOpt,
                      backbone_config, write_json_output)


def profile(
    model: ModelArg,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    num_classes: NumClassesOpt = None,
    img_size: ImgSizeOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    all_points: Annotated[bool, typer.Option("--all", help="Every valid split point, not only the named ones.")] = False,
    data: DataOpt = None,
    samples: Annotated[int, typer.Option(help="Images used for the sparsity figures.")] = 16,
    repeats: Annotated[int, typer.Option(help="Timed runs per head (median reported).")] = 5,
    threads: ThreadsOpt = 1,
    verify: Annotated[bool, typer.Option("--verify", help="Check tail(head(x)) == model(x) at every point.")] = False,
    reparam: Annotated[bool, typer.Option("--reparam", help="Fuse re-parameterisable branches (RepVGG, MobileOne, "
                                                            "FastViT; timm's reparameterize_model) first.")] = False,
    bandwidth_mbps: Annotated[float, typer.Option(help="Budget: uplink bandwidth in Mbit/s.")] = 10.0,
    device_gmacs: Annotated[float, typer.Option(help="Budget: device speed in GMAC/s.")] = 10.0,
    edge_gmacs: Annotated[float, typer.Option(help="Budget: edge speed in GMAC/s.")] = 1000.0,
    ratio: Annotated[Optional[float], typer.Option(help="Budget: expected bit compression of the codec vs float32 "
                                                          "(assumed at every point; `bnpp search` measures it) [64].")] = None,
    bits_per_image: Annotated[Optional[float], typer.Option(
        help="Budget: instead of --ratio, this payload in bits per image at every point (e.g. an entropy "
             "code's measured bits_per_image from `bnpp eval --json`).")] = None,
    search: Annotated[Optional[Path], typer.Option(
        "--search", help="A finished `bnpp search --out DIR`: show its measured recommendation too.")] = None,
    json_path: JsonOpt = None,
    seed: SeedOpt = 0,
):
    """List valid split points with compute, feature size and sparsity; recommend where to split."""
    check_outputs(json_path)  # every output path, before any work
    from dataclasses import replace

    from ..split.profile import ProfileConfig, profile_model
    from .render import render_measured, render_profile

    backbone = replace(backbone_config(model, pretrained, checkpoint, num_classes, img_size, model_kwargs, mean, std),
                       reparam=reparam)
    config = ProfileConfig(backbone=backbone, all_points=all_points, data=data, samples=samples, repeats=repeats,
                           threads=threads,
                           verify=verify, seed=seed,
                           budget=budget(bandwidth_mbps, device_gmacs, edge_gmacs, ratio, bits_per_image))
    measured = None
    if search is not None:
        from ..run.search import read_search

        measured = read_search(search)  # before the model is built: a bad DIR fails at once
    result = profile_model(config)
    out = result.to_dict()
    if measured is not None:
        out["measured_recommendation"] = measured.recommendation
    write_json_output(json_path, out)
    render_profile(result)
    if measured is not None:
        render_measured(measured, search)


def budget(bandwidth_mbps: float, device_gmacs: float, edge_gmacs: float, ratio: float | None,
           bits_per_image: float | None):
    """The Budget of the options: --ratio or --bits-per-image (64x when neither is given)."""
    from ..errors import BnppError
    from ..split.profile import Budget

    if ratio is not None and bits_per_image is not None:
        raise BnppError(f"give --ratio ({ratio:g}) or --bits-per-image ({bits_per_image:g}), not both: "
                        "the payload per image is one of them")
    if ratio is None and bits_per_image is None:
        ratio = 64.0
    return Budget(bandwidth_mbps=bandwidth_mbps, device_gmacs=device_gmacs, edge_gmacs=edge_gmacs, ratio=ratio,
                  bits_per_image=bits_per_image)


def register(app: typer.Typer) -> None:
    app.command()(profile)
