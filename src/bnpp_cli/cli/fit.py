"""`bnpp fit`: train the encoder/decoder pair at a split point under a simulated channel.

The options are declared once below (one alias each), :func:`fit_config` turns them into a
FitConfig, and progress goes to stderr through cli/progress.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import (CheckpointOpt, DataOpt, ImgSizeOpt, MeanOpt, ModelArg, ModelKwargsOpt, NumClassesOpt, PhyOpt,
                      PretrainedOpt, SeedOpt, StdOpt, backbone_config, channel_config)
from .progress import FitProgress  # noqa: F401 (the callback; importable from here as before)


def _opt(kind, help: str, *flags: str):
    return Annotated[kind, typer.Option(*flags, help=help)]


Str, Int, Float, Bool = Optional[str], Optional[int], Optional[float], Optional[bool]
SplitOpt = _opt(str, "Split point name (see `bnpp profile MODEL`).", "--split")
OutOpt = _opt(Path, "Run directory to create.", "--out")
ChannelOpt = _opt(str, "none, awgn, awgn-power, rayleigh, bec, bsc; with bnpp[phy]: ofdm (analog), ldpc (digital).")
SnrRangeOpt = _opt(Str, "Analog: train from S dB PSNR to noiseless, or a range A:B.")
ErasureRangeOpt = _opt(Str, "bec: train for erasure probability p in [0, P), or a range A:B.")
FlipRangeOpt = _opt(Str, "bsc: train for bit flip (crossover) probability p in [0, P), or a range A:B.")
BitsOpt = _opt(int, "Digital channels: bits per symbol.")
RatioOpt = _opt(Float, "Bandwidth reduction C*H*W/(C'*H'*W').")
CodeChannelsOpt = _opt(Int, "C' directly (overrides --ratio).")
PresetOpt = _opt(str, "Codec preset: bnpp (default), bottlenetpp (the paper's), entropy (an entropy-coded digital "
                      "code, with --channel none), or variable (a variable-length code: its length per condition "
                      "chosen on the validation images).")
LmbdaOpt = _opt(Float, "Entropy preset: rate weight, loss += lmbda x bits per image [preset's].")
HiddenOpt = _opt(Int, "bnpp preset: width of its extra layers.")
EncoderBlocksOpt = _opt(Int, "bnpp preset: residual blocks in the encoder (device side) [1].")
DecoderBlocksOpt = _opt(int, "bnpp preset: residual blocks in the decoder (edge side; device MACs unchanged).")
SpatialOpt = _opt(Bool, "Halve H and W in the encoder (default: preset bnpp when C/ratio < 4 and H, W >= 4; else "
                        "only if the ratio needs it).", "--spatial-reduction/--no-spatial-reduction")
ValDataOpt = _opt(Str, "Validation images (default: a split of --data).")
ValFractionOpt = _opt(float, "Share of --data held out when no --val-data.")
DataRootOpt = _opt(Str, "Root for torchvision datasets.")
LimitOpt = _opt(Int, "Use only the first N training images.")
CodecEpochsOpt = _opt(int, "Epochs with the backbone frozen.")
JointEpochsOpt = _opt(int, "Epochs fine-tuning everything afterwards.")
LrOpt = _opt(Float, "Adam learning rate, phase codec [preset's: bnpp 1e-3, bottlenetpp 1e-4].")
JointLrOpt = _opt(float, "Adam learning rate, phase joint.")
ScheduleOpt = _opt(Str, "cosine (to 0 over each phase) or constant [preset's: bnpp cosine, bottlenetpp constant].")
BatchOpt = _opt(Int, "Mini-batch size per process [preset's: 64 / 32].")
DistillOpt = _opt(Float, "Weight of distillation from the uncut model [preset's: 1 / 0].")
TemperatureOpt = _opt(Float, "Softmax temperature of the distillation [preset's: bnpp 4].")
DistillFeaturesOpt = _opt(Float, "Weight of the tail's pre-logits features' relative squared error against the uncut "
                                 "model's (also distilled; not with --cache-features) [0].")
DistillAtOpt = _opt(Str, "Tail modules, comma-separated, whose inputs --distill-features matches (the mean over "
                         "them), e.g. layer4.0.conv1 [the classifier].")
AugmentOpt = _opt(bool, "Random crop + flip.")
CacheOpt = _opt(bool, "Compute the frozen head's features and teacher logits once, not every epoch (needs "
                      "--no-augment, no --joint-epochs).", "--cache-features")
CacheDirOpt = _opt(Optional[Path], "Keep that cache as memory-mapped .npy files here, for later fits of the same "
                                   "backbone, split and images (implies --cache-features) [in memory].")
DeviceOpt = _opt(str, "cpu or cuda.")
ResumeOpt = _opt(bool, "Continue an interrupted run in --out.", "--resume")
OverwriteOpt = _opt(bool, "Start again in --out, deleting the bnpp run there (nothing else is deleted).",
                    "--overwrite")
StepsOpt = _opt(Int, "Also checkpoint every N optimizer steps (default: by time only).")
MinutesOpt = _opt(float, "Checkpoint at least this often within an epoch, in minutes (0: only at epoch ends).")
LogIntervalOpt = _opt(int, "Progress in a log (stderr not a terminal): one line every N batches (or minute).")


def fit(
    model: ModelArg, split: SplitOpt, data: DataOpt = None, out: OutOpt = Path("runs/run"),
    channel: ChannelOpt = "awgn", snr: SnrRangeOpt = None, erasure: ErasureRangeOpt = None, flip: FlipRangeOpt = None,
    phy: PhyOpt = None, bits: BitsOpt = 8, ratio: RatioOpt = 64.0, code_channels: CodeChannelsOpt = None, preset: PresetOpt = "bnpp",
    lmbda: LmbdaOpt = None, hidden_channels: HiddenOpt = None, encoder_blocks: EncoderBlocksOpt = None,
    decoder_blocks: DecoderBlocksOpt = 0, spatial_reduction: SpatialOpt = None,
    val_data: ValDataOpt = None, val_fraction: ValFractionOpt = 0.1, data_root: DataRootOpt = None,
    limit: LimitOpt = None, codec_epochs: CodecEpochsOpt = 10, joint_epochs: JointEpochsOpt = 0,
    lr: LrOpt = None, joint_lr: JointLrOpt = 1e-5, lr_schedule: ScheduleOpt = None, batch_size: BatchOpt = None,
    distill: DistillOpt = None, distill_temperature: TemperatureOpt = None,
    distill_features: DistillFeaturesOpt = None, distill_at: DistillAtOpt = None,
    augment: AugmentOpt = True, cache_features: CacheOpt = False, cache_dir: CacheDirOpt = None,
    device: DeviceOpt = "cpu", resume: ResumeOpt = False, overwrite: OverwriteOpt = False,
    checkpoint_steps: StepsOpt = None, checkpoint_minutes: MinutesOpt = 10.0, log_interval: LogIntervalOpt = 50,
    pretrained: PretrainedOpt = False, checkpoint: CheckpointOpt = None, num_classes: NumClassesOpt = None,
    img_size: ImgSizeOpt = None, model_kwargs: ModelKwargsOpt = None, mean: MeanOpt = None, std: StdOpt = None,
    seed: SeedOpt = 0,
):
    """Train the encoder/decoder pair at a split point under a simulated channel."""
    from ..run.fit import fit_codec
    from .render import render_fit

    config = fit_config(**locals())
    render_fit(fit_codec(config, callback=FitProgress(log_interval)))


def fit_config(**o: Any):
    """The FitConfig of `bnpp fit`'s options (named as its parameters); bad options fail here, before any work."""
    from ..errors import BnppError, DataError
    from ..run.config import FitConfig

    if o["data"] is None:
        raise DataError("--data is required: an .npz, an ImageFolder directory or a dataset name")
    if o["log_interval"] < 1:
        raise BnppError(f"--log-interval {o['log_interval']} must be at least 1 (batches)")
    backbone = backbone_config(o["model"], o["pretrained"], o["checkpoint"], o["num_classes"], o["img_size"],
                               o["model_kwargs"], o["mean"], o["std"])
    link = channel_config(o["channel"], o["snr"], o["erasure"], o["flip"], o["bits"], o.get("phy"))
    same = ("split", "data", "ratio", "code_channels", "preset", "hidden_channels", "encoder_blocks",
            "decoder_blocks", "spatial_reduction", "val_data", "val_fraction", "data_root", "limit", "codec_epochs",
            "joint_epochs", "lr", "joint_lr", "lr_schedule", "batch_size", "distill", "distill_temperature",
            "distill_features", "lmbda", "augment", "device", "seed", "resume", "overwrite", "checkpoint_steps")
    distill_at = [q.strip() for q in o["distill_at"].split(",")] if o["distill_at"] is not None else None
    cache = str(o["cache_dir"]) if o["cache_dir"] is not None else o["cache_features"]
    return FitConfig(backbone=backbone, out=str(o["out"]), channel=link, distill_at=distill_at, feature_cache=cache,
                     checkpoint_minutes=o["checkpoint_minutes"] or None, **{k: o[k] for k in same})


def register(app: typer.Typer) -> None:
    app.command()(fit)
