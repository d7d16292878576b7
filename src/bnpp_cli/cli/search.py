"""`bnpp search`: the split AND the rate from measured accuracy (short fits, then halving)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from .options import (CheckpointOpt, DataOpt, ImgSizeOpt, JsonOpt, ModelArg, ModelKwargsOpt, MeanOpt, StdOpt, NumClassesOpt,
                      PretrainedOpt, SeedOpt, backbone_config, parse_list, parse_range, write_json_output)


def search(
    model: ModelArg,
    data: DataOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Search directory: candidates/NAME runs and search.json.")] = Path("runs/search"),
    val_data: Annotated[Optional[str], typer.Option(help="Validation images (default: a split of --data, as fit).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of --data held out when no --val-data.")] = 0.1,
    channel: Annotated[str, typer.Option(help="none, awgn, awgn-power, rayleigh, bec, bsc.")] = "awgn",
    snr: Annotated[Optional[str], typer.Option(help="Analog: train from S dB to noiseless, measured at S.")] = None,
    erasure: Annotated[Optional[str], typer.Option(help="Digital: train for p in [0, P), measured at P.")] = None,
    bits: Annotated[int, typer.Option(help="Digital channels: bits per symbol.")] = 8,
    splits: Annotated[str, typer.Option(help="auto, or split points a,b,c (see `bnpp profile`).")] = "auto",
    auto_splits: Annotated[int, typer.Option(help="How many points 'auto' spreads over device MACs.")] = 4,
    ratios: Annotated[str, typer.Option(help="Bandwidth ratios to try, e.g. 16,64,256.")] = "16,64,256",
    bits_per_image: Annotated[Optional[str], typer.Option(help="Digital: rates as bits per image (replaces --ratios).")] = None,
    max_drop: Annotated[float, typer.Option(help="Tolerated top-1 drop, points, on validation images.")] = 1.0,
    bandwidth_mbps: Annotated[float, typer.Option(help="Budget: uplink bandwidth in Mbit/s.")] = 10.0,
    device_gmacs: Annotated[float, typer.Option(help="Budget: device speed in GMAC/s.")] = 10.0,
    edge_gmacs: Annotated[float, typer.Option(help="Budget: edge speed in GMAC/s.")] = 1000.0,
    first_images: Annotated[int, typer.Option(help="Round 0: training images per candidate.")] = 2000,
    first_epochs: Annotated[int, typer.Option(help="Round 0: epochs per candidate.")] = 1,
    eta: Annotated[int, typer.Option(help="Keep ~1/eta of the candidates per round, at eta x the budget.")] = 3,
    rounds: Annotated[int, typer.Option(help="Rounds of halving (round r: eta^r x round 0's budget).")] = 3,
    preset: Annotated[str, typer.Option(help="Codec preset.")] = "bnpp",
    batch_size: Annotated[Optional[int], typer.Option(help="Mini-batch size [preset's].")] = None,
    augment: Annotated[bool, typer.Option(help="Random crop + flip in the fits (off: the feature cache serves them).")] = False,
    cache_features: Annotated[Optional[bool], typer.Option(
        "--cache-features/--no-cache-features",
        help="Compute each split's frozen-head features once, under DIR/features [on with --no-augment].")] = None,
    draws: Annotated[int, typer.Option(help="Noise draws per measurement.")] = 2,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    plot: Annotated[Optional[Path], typer.Option(help="Write the picture (PNG): MACs vs bits, drop as colour.")] = None,
    json_path: JsonOpt = None,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    num_classes: NumClassesOpt = None,
    img_size: ImgSizeOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    seed: SeedOpt = 0,
):
    """Fit short candidates over splits x rates, give the promising more budget, recommend from measured drops."""
    from ..errors import DataError
    from ..link.config import ChannelConfig
    from ..run.search import SearchConfig, search_split_rate
    from ..split.profile import Budget
    from .search_render import SearchProgress, render_search

    if data is None:
        raise DataError("--data is required: an .npz, an ImageFolder directory or a dataset name")
    if plot is not None:
        from ..run.evaluate import check_plotting

        check_plotting()
    link = ChannelConfig.from_flags(channel, {"--snr": parse_range(snr, "--snr"),
                                              "--erasure": parse_range(erasure, "--erasure")}, bits)
    rates = parse_list(bits_per_image, "--bits-per-image") if bits_per_image else parse_list(ratios, "--ratios")
    config = SearchConfig(
        backbone=backbone_config(model, pretrained, checkpoint, num_classes, img_size, model_kwargs, mean, std), data=data,
        out=str(out), channel=link, splits=None if splits == "auto" else [s.strip() for s in splits.split(",") if s.strip()],
        auto_splits=auto_splits, rates=rates, bits_per_image=bits_per_image is not None, max_drop=max_drop,
        budget=Budget(bandwidth_mbps=bandwidth_mbps, device_gmacs=device_gmacs, edge_gmacs=edge_gmacs),
        val_data=val_data, val_fraction=val_fraction, first_images=first_images, first_epochs=first_epochs, eta=eta,
        rounds=rounds, preset=preset, batch_size=batch_size, augment=augment, feature_cache=cache_features, draws=draws, device=device, seed=seed)
    result = search_split_rate(config, callback=SearchProgress())
    write_json_output(json_path, result.to_dict())
    if plot is not None:
        from ..run.search_plot import plot_search

        plot_search(result, str(plot))
    render_search(result)


class _SearchCommand(TyperCommand):
    """`bnpp search` whose --preset help names every registered preset (codec.presets), read when the
    help is shown: the registry imports torch, which `bnpp` does not do at start."""

    def format_help(self, ctx, formatter) -> None:
        from ..codec.presets import list_presets

        for param in self.params:
            if param.name == "preset":
                param.help = f"Codec preset: {', '.join(list_presets())}."
        super().format_help(ctx, formatter)


def register(app: typer.Typer) -> None:
    app.command(cls=_SearchCommand)(search)
