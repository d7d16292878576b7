"""`bnpp search`: the split AND the rate from measured accuracy (short fits, then halving), its state
an Optuna study that any number of workers share (the same command, --storage for many machines).

The options are declared once below (one alias each), :func:`search_config` turns them into a
SearchConfig, and progress goes to stderr through cli/search_render.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand

from .options import (check_outputs, CheckpointOpt, DataOpt, ImgSizeOpt, JsonOpt, MeanOpt, ModelArg, ModelKwargsOpt, NumClassesOpt,
                      PretrainedOpt, SeedOpt, StdOpt, backbone_config, channel_config, parse_list, write_json_output)


def _opt(kind, help: str, *flags: str):
    return Annotated[kind, typer.Option(*flags, help=help)]


Str, Int = Optional[str], Optional[int]
OutOpt = _opt(Path, "Search directory: study.journal, candidates/NAME runs, search.json.", "--out")
ValDataOpt = _opt(Str, "Validation images (default: a split of --data, as fit).")
ValFractionOpt = _opt(float, "Share of --data held out when no --val-data.")
ChannelOpt = _opt(str, "none, awgn, awgn-power, rayleigh, bec, bsc.")
SnrOpt = _opt(Str, "Analog: train from S dB to noiseless, measured at S.")
ErasureOpt = _opt(Str, "bec: train for erasure probability p in [0, P), measured at P.")
FlipOpt = _opt(Str, "bsc: train for bit flip (crossover) probability p in [0, P), measured at P.")
BitsOpt = _opt(int, "Digital channels: bits per symbol.")
SplitsOpt = _opt(str, "auto, or split points a,b,c (see `bnpp profile`).")
AutoSplitsOpt = _opt(int, "How many points 'auto' spreads over device MACs.")
RatiosOpt = _opt(str, "Bandwidth ratios to try, e.g. 16,64,256.")
BitsPerImageOpt = _opt(Str, "Digital: rates as bits per image (replaces --ratios).")
MaxDropOpt = _opt(float, "Tolerated top-1 drop, points, on validation images.")
BandwidthOpt = _opt(float, "Budget: uplink bandwidth in Mbit/s.")
DeviceGmacsOpt = _opt(float, "Budget: device speed in GMAC/s.")
EdgeGmacsOpt = _opt(float, "Budget: edge speed in GMAC/s.")
FirstImagesOpt = _opt(int, "Round 0: training images per candidate.")
FirstEpochsOpt = _opt(int, "Round 0: epochs per candidate.")
EtaOpt = _opt(int, "Keep ~1/eta of the candidates per round, at eta x the budget.")
RoundsOpt = _opt(int, "Rounds of halving (round r: eta^r x round 0's budget).")
PresetOpt = _opt(str, "Codec preset.")  # the registered names are added when the help is shown (_SearchCommand)
BatchOpt = _opt(Int, "Mini-batch size [preset's].")
AugmentOpt = _opt(bool, "Random crop + flip in the fits (off: the feature cache serves them).")
CacheOpt = _opt(Optional[bool], "Compute each split's frozen-head features once, under DIR/features [on with "
                                "--no-augment].", "--cache-features/--no-cache-features")
DrawsOpt = _opt(int, "Noise draws per measurement.")
DeviceOpt = _opt(str, "cpu or cuda.")
PlotOpt = _opt(Optional[Path], "Write the picture (PNG): MACs vs bits, drop as colour.")
StorageOpt = _opt(Str, "The study's storage [DIR/study.journal]: postgresql://..., mysql://..., sqlite:///... or "
                       "journal:PATH; start the same command on every worker.")
StudyOpt = _opt(str, "The study's name in the storage.")


def search(
    model: ModelArg, data: DataOpt = None, out: OutOpt = Path("runs/search"), val_data: ValDataOpt = None,
    val_fraction: ValFractionOpt = 0.1, channel: ChannelOpt = "awgn", snr: SnrOpt = None, erasure: ErasureOpt = None,
    flip: FlipOpt = None, bits: BitsOpt = 8, splits: SplitsOpt = "auto", auto_splits: AutoSplitsOpt = 4,
    ratios: RatiosOpt = "16,64,256", bits_per_image: BitsPerImageOpt = None, max_drop: MaxDropOpt = 1.0,
    bandwidth_mbps: BandwidthOpt = 10.0, device_gmacs: DeviceGmacsOpt = 10.0, edge_gmacs: EdgeGmacsOpt = 1000.0,
    first_images: FirstImagesOpt = 2000, first_epochs: FirstEpochsOpt = 1, eta: EtaOpt = 3, rounds: RoundsOpt = 3,
    preset: PresetOpt = "bnpp", batch_size: BatchOpt = None, augment: AugmentOpt = False,
    cache_features: CacheOpt = None, draws: DrawsOpt = 2, device: DeviceOpt = "cpu", plot: PlotOpt = None,
    storage: StorageOpt = None, study: StudyOpt = "bnpp-search",
    json_path: JsonOpt = None, pretrained: PretrainedOpt = False, checkpoint: CheckpointOpt = None,
    num_classes: NumClassesOpt = None, img_size: ImgSizeOpt = None, model_kwargs: ModelKwargsOpt = None,
    mean: MeanOpt = None, std: StdOpt = None, seed: SeedOpt = 0,
):
    """Fit short candidates over splits x rates, give the promising more budget, recommend from measured drops."""
    check_outputs(json_path, plot)  # every output path, before any work
    from ..run.search import search_split_rate
    from .search_render import SearchProgress, render_search

    config = search_config(**locals())
    if plot is not None:
        from ..run.evaluate import check_plotting

        check_plotting()
    result = search_split_rate(config, callback=SearchProgress())
    write_json_output(json_path, result.to_dict())
    if plot is not None:
        from ..run.search_plot import plot_search

        plot_search(result, str(plot))
    render_search(result)


def search_config(**o: Any):
    """The SearchConfig of `bnpp search`'s options (named as its parameters); bad options fail here."""
    from ..errors import DataError
    from ..run.search import SearchConfig
    from ..split.profile import Budget

    if o["data"] is None:
        raise DataError("--data is required: an .npz, an ImageFolder directory or a dataset name")
    backbone = backbone_config(o["model"], o["pretrained"], o["checkpoint"], o["num_classes"], o["img_size"],
                               o["model_kwargs"], o["mean"], o["std"])
    link = channel_config(o["channel"], o["snr"], o["erasure"], o["flip"], o["bits"])
    per_image = o["bits_per_image"] is not None
    rates = parse_list(o["bits_per_image"], "--bits-per-image") if per_image else parse_list(o["ratios"], "--ratios")
    splits = None if o["splits"] == "auto" else [s.strip() for s in o["splits"].split(",") if s.strip()]
    budget = Budget(bandwidth_mbps=o["bandwidth_mbps"], device_gmacs=o["device_gmacs"], edge_gmacs=o["edge_gmacs"])
    same = ("data", "auto_splits", "max_drop", "val_data", "val_fraction", "first_images", "first_epochs", "eta",
            "rounds", "preset", "batch_size", "augment", "draws", "device", "seed", "storage", "study")
    return SearchConfig(backbone=backbone, out=str(o["out"]), channel=link, splits=splits, rates=rates,
                        bits_per_image=per_image, budget=budget, feature_cache=o["cache_features"],
                        **{k: o[k] for k in same})


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
