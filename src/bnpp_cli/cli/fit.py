"""`bnpp fit`: train the encoder/decoder pair at a split point under a simulated channel."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import (CheckpointOpt, DataOpt, ImgSizeOpt, ModelKwargsOpt, ModelArg, NumClassesOpt, PretrainedOpt, SeedOpt,
                      backbone_config, parse_range)


class FitProgress:
    """Rich progress bar for the training callback (stderr), one line per finished epoch."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(stderr=True, highlight=False)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.console)
        self.task = None

    def __call__(self, event: str, info: dict) -> None:
        if event == "epoch_start":
            self.progress.start()
            desc = f"{info['phase']} epoch {info['epoch'] + 1}"
            self.task = self.progress.add_task(desc, total=info["batches"], stats="")
        elif event == "batch" and self.task is not None:
            stats = f"loss {info['loss']:.3f} acc {info['acc']:.1%} {info['images_per_s']:.0f} img/s"
            self.progress.update(self.task, completed=info["step"], stats=stats)
        elif event == "epoch":
            if self.task is not None:
                self.progress.remove_task(self.task)
                self.task = None
            self.progress.stop()
            val = ""
            if "val_top1_noiseless" in info:
                worst = info.get("val_worst_condition")
                val = f", val top-1 {info['val_top1_noiseless']:.2%} noiseless"
                if worst is not None:
                    val += f", {info['val_top1_worst']:.2%} at {worst:g}"
            self.console.print(f"{info['phase']} epoch {info['epoch'] + 1}: loss {info['train_loss']:.4f}, "
                               f"train top-1 {info['train_top1']:.2%}{val} ({info['seconds']:.0f} s)")


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
    preset: Annotated[str, typer.Option(help="Codec preset: bnpp (default) or bottlenetpp (the paper's).")] = "bnpp",
    hidden_channels: Annotated[Optional[int], typer.Option(help="bnpp preset: width of its extra layers.")] = None,
    encoder_blocks: Annotated[Optional[int], typer.Option(
        help="bnpp preset: residual blocks in the encoder (device side) [1].")] = None,
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
    augment: Annotated[bool, typer.Option(help="Random crop + flip.")] = True,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")] = False,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    num_classes: NumClassesOpt = None,
    img_size: ImgSizeOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    seed: SeedOpt = 0,
):
    """Train the encoder/decoder pair at a split point under a simulated channel."""
    from ..errors import DataError
    from ..link.config import ChannelConfig
    from ..run.fit import FitConfig, fit_codec
    from .render import render_fit

    if data is None:
        raise DataError("--data is required: an .npz, an ImageFolder directory or a dataset name")
    link = ChannelConfig.from_flags(channel, {"--snr": parse_range(snr, "--snr"),
                                              "--erasure": parse_range(erasure, "--erasure")}, bits)
    config = FitConfig(
        backbone=backbone_config(model, pretrained, checkpoint, num_classes, img_size, model_kwargs), split=split, data=data,
        out=str(out), channel=link, ratio=ratio, code_channels=code_channels, preset=preset,
        hidden_channels=hidden_channels, encoder_blocks=encoder_blocks, spatial_reduction=spatial_reduction,
        val_data=val_data, val_fraction=val_fraction, data_root=data_root, limit=limit, codec_epochs=codec_epochs,
        joint_epochs=joint_epochs, lr=lr, joint_lr=joint_lr, lr_schedule=lr_schedule, batch_size=batch_size,
        distill=distill, distill_temperature=distill_temperature, augment=augment, device=device, seed=seed,
        resume=resume,
    )
    render_fit(fit_codec(config, callback=FitProgress()))


def register(app: typer.Typer) -> None:
    app.command()(fit)
