"""`bnpp fit`: train the encoder/decoder pair at a split point under a simulated channel."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (CheckpointOpt, DataOpt, ImgSizeOpt, ModelKwargsOpt, MeanOpt, StdOpt, ModelArg, NumClassesOpt, PretrainedOpt, SeedOpt,
                      backbone_config, parse_range)


class FitProgress:
    """Training progress on stderr: a Rich bar on a terminal; in a log (stderr not a terminal) one
    plain line every ``log_interval`` batches or ``log_seconds``, whichever comes first (as timm's
    train.py --log-interval). One line per finished epoch, and where a checkpoint stopped a fit."""

    def __init__(self, log_interval: int = 50, log_seconds: float = 60.0, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)  # a log line stays one line
        self.plain = not self.console.is_terminal
        self.log_interval, self.log_seconds = log_interval, log_seconds
        self.progress = self.task = None
        self._logged, self._last = 0, 0.0
        if not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.console)

    def _line(self, text: str) -> None:
        from rich.text import Text

        self.console.print(Text(text))

    def __call__(self, event: str, info: dict) -> None:
        import time

        if event == "epoch_start":
            self._logged, self._last = info.get("start", 0), time.monotonic()
            if self.progress is not None:
                self.progress.start()
                desc = f"{info['phase']} epoch {info['epoch'] + 1}"
                self.task = self.progress.add_task(desc, total=info["batches"], completed=info.get("start", 0),
                                                   stats="")
        elif event == "batch":
            stats = f"loss {info['loss']:.3f} acc {info['acc']:.1%} {info['images_per_s']:.0f} img/s"
            if self.task is not None:
                self.progress.update(self.task, completed=info["step"], stats=stats)
            elif self.plain and (info["step"] - self._logged >= self.log_interval or info["step"] == info["batches"]
                                 or time.monotonic() - self._last >= self.log_seconds):
                self._logged, self._last = info["step"], time.monotonic()
                left = info["batches"] - info["step"]
                eta = left * info["images"] / info["step"] / info["images_per_s"] if info["images_per_s"] else 0.0
                self._line(f"{info['phase']} epoch {info['epoch'] + 1}: batch {info['step']}/{info['batches']}, "
                           f"{info['images']} images, {stats}, ETA {_duration(eta)}")
        elif event == "epoch":
            self._stop_bar()
            val = ""
            if "val_top1_noiseless" in info:
                worst = info.get("val_worst_label")
                val = f", val top-1 {info['val_top1_noiseless']:.2%} noiseless"
                if worst is not None:
                    val += f", {info['val_top1_worst']:.2%} at {worst}"
            self._line(f"{info['phase']} epoch {info['epoch'] + 1}: loss {info['train_loss']:.4f}, "
                       f"train top-1 {info['train_top1']:.2%}{val} ({info['seconds']:.0f} s)")
        elif event == "features":
            how = "computed" if info["built"] else "reused"
            self._line(f"Feature cache: {how} for {info['rows']} images ({info['where']}, {info['build_s']:.1f} s)")
        elif event == "interrupted":
            self._stop_bar()
            where = "at its end" if info["batch"] is None else f"after batch {info['batch']}"
            self._line(f"Stopped {where} of {info['phase']} epoch {info['epoch'] + 1}; checkpoint saved in "
                       f"{info['run']}: continue with the same command and --resume")

    def _stop_bar(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        if self.progress is not None:
            self.progress.stop()


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def fit(
    model: ModelArg,
    split: Annotated[str, typer.Option("--split", help="Split point name (see `bnpp profile MODEL`).")],
    data: DataOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Run directory to create.")] = Path("runs/run"),
    channel: Annotated[str, typer.Option(help="none, awgn, awgn-power, rayleigh, bec, bsc.")] = "awgn",
    snr: Annotated[Optional[str], typer.Option(help="Analog: train from S dB PSNR to noiseless, or a range A:B.")] = None,
    erasure: Annotated[Optional[str], typer.Option(help="Digital: train for p in [0, P), or a range A:B.")] = None,
    bits: Annotated[int, typer.Option(help="Digital channels: bits per symbol.")] = 8,
    ratio: Annotated[Optional[float], typer.Option(help="Bandwidth reduction C*H*W/(C'*H'*W').")] = 64.0,
    code_channels: Annotated[Optional[int], typer.Option(help="C' directly (overrides --ratio).")] = None,
    preset: Annotated[str, typer.Option(help="Codec preset: bnpp (default), bottlenetpp (the paper's), entropy "
                                             "(an entropy-coded digital code, with --channel none), or variable "
                                             "(a variable-length code: its length per condition chosen on the "
                                             "validation images).")] = "bnpp",
    lmbda: Annotated[Optional[float], typer.Option(
        help="Entropy preset: rate weight, loss += lmbda x bits per image [preset's].")] = None,
    hidden_channels: Annotated[Optional[int], typer.Option(help="bnpp preset: width of its extra layers.")] = None,
    encoder_blocks: Annotated[Optional[int], typer.Option(
        help="bnpp preset: residual blocks in the encoder (device side) [1].")] = None,
    decoder_blocks: Annotated[int, typer.Option(
        help="bnpp preset: residual blocks in the decoder (edge side; device MACs unchanged).")] = 0,
    spatial_reduction: Annotated[Optional[bool], typer.Option(
        "--spatial-reduction/--no-spatial-reduction",
        help="Halve H and W in the encoder (default: preset bnpp when C/ratio < 4 and H, W >= 4; "
             "else only if the ratio needs it).")] = None,
    val_data: Annotated[Optional[str], typer.Option(help="Validation images (default: a split of --data).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of --data held out when no --val-data.")] = 0.1,
    data_root: Annotated[Optional[str], typer.Option(help="Root for torchvision datasets.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Use only the first N training images.")] = None,
    codec_epochs: Annotated[int, typer.Option(help="Epochs with the backbone frozen.")] = 10,
    joint_epochs: Annotated[int, typer.Option(help="Epochs fine-tuning everything afterwards.")] = 0,
    lr: Annotated[Optional[float], typer.Option(
        help="Adam learning rate, phase codec [preset's: bnpp 1e-3, bottlenetpp 1e-4].")] = None,
    joint_lr: Annotated[float, typer.Option(help="Adam learning rate, phase joint.")] = 1e-5,
    lr_schedule: Annotated[Optional[str], typer.Option(
        help="cosine (to 0 over each phase) or constant [preset's: bnpp cosine, bottlenetpp constant].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Mini-batch size per process [preset's: 64 / 32].")] = None,
    distill: Annotated[Optional[float], typer.Option(
        help="Weight of distillation from the uncut model [preset's: 1 / 0].")] = None,
    distill_temperature: Annotated[Optional[float], typer.Option(
        help="Softmax temperature of the distillation [preset's: bnpp 4].")] = None,
    distill_features: Annotated[Optional[float], typer.Option(
        help="Weight of the tail's pre-logits features' relative squared error against the uncut model's "
             "(also distilled; not with --cache-features) [0].")] = None,
    distill_at: Annotated[Optional[str], typer.Option(
        help="Tail modules, comma-separated, whose inputs --distill-features matches (the mean over them), "
             "e.g. layer4.0.conv1 [the classifier].")] = None,
    augment: Annotated[bool, typer.Option(help="Random crop + flip.")] = True,
    cache_features: Annotated[bool, typer.Option(
        "--cache-features", help="Compute the frozen head's features and teacher logits once, not every "
                                 "epoch (needs --no-augment, no --joint-epochs).")] = False,
    cache_dir: Annotated[Optional[Path], typer.Option(
        help="Keep that cache as memory-mapped .npy files here, for later fits of the same backbone, "
             "split and images (implies --cache-features) [in memory].")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Start again in --out, deleting the bnpp run there (nothing else is deleted).")] = False,
    checkpoint_steps: Annotated[Optional[int], typer.Option(
        help="Also checkpoint every N optimizer steps (default: by time only).")] = None,
    checkpoint_minutes: Annotated[float, typer.Option(
        help="Checkpoint at least this often within an epoch, in minutes (0: only at epoch ends).")] = 10.0,
    log_interval: Annotated[int, typer.Option(
        help="Progress in a log (stderr not a terminal): one line every N batches (or minute).")] = 50,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    num_classes: NumClassesOpt = None,
    img_size: ImgSizeOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    seed: SeedOpt = 0,
):
    """Train the encoder/decoder pair at a split point under a simulated channel."""
    from ..errors import BnppError, DataError
    from ..link.config import ChannelConfig
    from ..run.fit import FitConfig, fit_codec
    from .render import render_fit

    if data is None:
        raise DataError("--data is required: an .npz, an ImageFolder directory or a dataset name")
    if log_interval < 1:
        raise BnppError(f"--log-interval {log_interval} must be at least 1 (batches)")
    link = ChannelConfig.from_flags(channel, {"--snr": parse_range(snr, "--snr"),
                                              "--erasure": parse_range(erasure, "--erasure")}, bits)
    config = FitConfig(
        backbone=backbone_config(model, pretrained, checkpoint, num_classes, img_size, model_kwargs, mean, std), split=split, data=data,
        out=str(out), channel=link, ratio=ratio, code_channels=code_channels, preset=preset,
        hidden_channels=hidden_channels, encoder_blocks=encoder_blocks, decoder_blocks=decoder_blocks,
        spatial_reduction=spatial_reduction,
        val_data=val_data, val_fraction=val_fraction, data_root=data_root, limit=limit, codec_epochs=codec_epochs,
        joint_epochs=joint_epochs, lr=lr, joint_lr=joint_lr, lr_schedule=lr_schedule, batch_size=batch_size,
        distill=distill, distill_temperature=distill_temperature,
        distill_features=distill_features,
        distill_at=[q.strip() for q in distill_at.split(",")] if distill_at is not None else None, lmbda=lmbda, augment=augment,
        feature_cache=str(cache_dir) if cache_dir is not None else cache_features, device=device, seed=seed,
        resume=resume, overwrite=overwrite, checkpoint_steps=checkpoint_steps,
        checkpoint_minutes=checkpoint_minutes or None,
    )
    render_fit(fit_codec(config, callback=FitProgress(log_interval)))


def register(app: typer.Typer) -> None:
    app.command()(fit)
