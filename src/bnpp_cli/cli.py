"""The `bnpp` command line: a thin Typer layer over the library.

Each command parses options, builds a config, calls ONE library function and renders the result.
Heavy imports (torch, timm) happen inside the command bodies, so `bnpp --help` is instant.
Library errors (BnppError) become one line on stderr and exit code 2; BNPP_DEBUG=1 shows tracebacks.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

app = typer.Typer(
    name="bnpp",
    help="Device-edge co-inference with learned feature compression (BottleNet++) for any timm model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.callback()
def _root() -> None:
    """Device-edge co-inference with learned feature compression (BottleNet++) for any timm model."""


# ---- shared options ---------------------------------------------------------------------------
ModelArg = Annotated[str, typer.Argument(help="timm model name, e.g. resnet50, vit_tiny_patch16_224.")]
PretrainedOpt = Annotated[bool, typer.Option("--pretrained", help="timm's pretrained weights (needs the network).")]
CheckpointOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="Local weights: .safetensors, or .pth/.pt (read with weights_only=True).")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="Classifier size (default: the model's).")]
ImgSizeOpt = Annotated[Optional[int], typer.Option("--img-size", help="Square input size (default: the model's).")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON to this file.")]
DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Images: .npz (x uint8 NxHxWx3, y), an ImageFolder directory, or cifar10/cifar100/...")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]


def _fail(message: str, hint: str | None = None, code: int = 2) -> None:
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"[bold red]Error:[/] {message}", markup=True)
    if hint:
        err.print(f"[dim]Hint: {hint}[/]", markup=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable) -> Callable:
    """Turn library errors into one-line messages and a non-zero exit, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import BnppError

        try:
            return fn(*args, **kwargs)
        except BnppError as e:
            if os.environ.get("BNPP_DEBUG"):
                raise
            _fail(str(e), e.hint)
        except KeyboardInterrupt:
            _fail("interrupted", code=130)

    return wrapper


def backbone_config(model, pretrained, checkpoint, num_classes, img_size):
    from .backbone import BackboneConfig

    return BackboneConfig(model=model, pretrained=pretrained, checkpoint=str(checkpoint) if checkpoint else None,
                          num_classes=num_classes, img_size=img_size)


def write_json_output(path: Path | None, obj) -> None:
    if path is not None:
        from .files import write_json

        write_json(path, obj)


# ---- commands ---------------------------------------------------------------------------------
@app.command()
@handle_errors
def profile(
    model: ModelArg,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    num_classes: NumClassesOpt = None,
    img_size: ImgSizeOpt = None,
    all_points: Annotated[bool, typer.Option("--all", help="Every valid split point, not only the named ones.")] = False,
    data: DataOpt = None,
    samples: Annotated[int, typer.Option(help="Images used for the sparsity figures.")] = 16,
    repeats: Annotated[int, typer.Option(help="Timed runs per head (median reported).")] = 5,
    verify: Annotated[bool, typer.Option("--verify", help="Check tail(head(x)) == model(x) at every point.")] = False,
    bandwidth_mbps: Annotated[float, typer.Option(help="Budget: uplink bandwidth in Mbit/s.")] = 10.0,
    device_gmacs: Annotated[float, typer.Option(help="Budget: device speed in GMAC/s.")] = 10.0,
    edge_gmacs: Annotated[float, typer.Option(help="Budget: edge speed in GMAC/s.")] = 1000.0,
    ratio: Annotated[float, typer.Option(help="Budget: expected bit compression of the codec vs float32.")] = 64.0,
    json_path: JsonOpt = None,
    seed: SeedOpt = 0,
):
    """List valid split points with compute, feature size and sparsity; recommend where to split."""
    from .profile import Budget, ProfileConfig, profile_model
    from .render import render_profile

    config = ProfileConfig(
        backbone=backbone_config(model, pretrained, checkpoint, num_classes, img_size), all_points=all_points,
        data=data, samples=samples, repeats=repeats, verify=verify, seed=seed,
        budget=Budget(bandwidth_mbps=bandwidth_mbps, device_gmacs=device_gmacs, edge_gmacs=edge_gmacs, ratio=ratio),
    )
    result = profile_model(config)
    write_json_output(json_path, result.to_dict())
    render_profile(result)


def _condition(value: str | None, flag: str):
    """'10' -> 10.0 (from 10 to the best condition); 'A:B' -> (A, B)."""
    from .errors import ChannelError

    if value is None:
        return None
    try:
        parts = [float(v) for v in value.split(":")]
    except ValueError:
        raise ChannelError(f"{flag} {value!r} is not a number or a range A:B") from None
    if len(parts) > 2:
        raise ChannelError(f"{flag} {value!r}: give one number or a range A:B")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _values(value: str | None, flag: str) -> list[float] | None:
    from .errors import ChannelError

    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ChannelError(f"{flag} {value!r} is not a comma-separated list of numbers") from None


def link_condition(snr: float | None, erasure: float | None) -> tuple[float | None, str]:
    """--snr / --erasure of predict and infer -> (condition, its name); at most one may be given."""
    from .errors import ChannelError

    if snr is not None and erasure is not None:
        raise ChannelError("give --snr (analog channels) or --erasure (digital channels), not both")
    return (snr, "snr_db") if snr is not None else (erasure, "erasure")


def _train_condition(channel: str, snr: str | None, erasure: str | None):
    from .channels import create_channel
    from .errors import ChannelError

    proto = create_channel(channel)  # validates the name, lists the valid ones
    if proto.condition_name is None:
        if snr or erasure:
            raise ChannelError(f"channel '{channel}' is noiseless: it takes no --snr/--erasure")
        return None
    analog = proto.condition_name == "snr_db"
    if analog and erasure is not None:
        raise ChannelError(f"--erasure applies to digital channels (bec, bsc); '{channel}' takes --snr")
    if not analog and snr is not None:
        raise ChannelError(f"--snr applies to analog channels (awgn, awgn-power, rayleigh); '{channel}' takes --erasure")
    cond = _condition(snr if analog else erasure, "--snr" if analog else "--erasure")
    create_channel(channel, train_condition=cond)  # validates the range
    return cond


class _FitProgress:
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


@app.command()
@handle_errors
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
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate, phase codec [preset's: bnpp 1e-3, bottlenetpp 1e-4].")] = None,
    joint_lr: Annotated[float, typer.Option(help="Adam learning rate, phase joint.")] = 1e-5,
    lr_schedule: Annotated[Optional[str], typer.Option(
        help="cosine (to 0 over each phase) or constant [preset's: bnpp cosine, bottlenetpp constant].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Mini-batch size per process [preset's: 64 / 32].")] = None,
    distill: Annotated[Optional[float], typer.Option(help="Weight of distillation from the uncut model [preset's: 1 / 0].")] = None,
    distill_temperature: Annotated[Optional[float], typer.Option(
        help="Softmax temperature of the distillation [preset's: bnpp 4].")] = None,
    augment: Annotated[bool, typer.Option(help="Random crop + flip.")] = True,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")] = False,
    pretrained: PretrainedOpt = False,
    checkpoint: CheckpointOpt = None,
    num_classes: NumClassesOpt = None,
    img_size: ImgSizeOpt = None,
    seed: SeedOpt = 0,
):
    """Train the encoder/decoder pair at a split point under a simulated channel."""
    from .errors import DataError
    from .pipeline import ChannelConfig
    from .render import render_fit
    from .train import FitConfig, fit_codec

    if data is None:
        raise DataError("--data is required: an .npz, an ImageFolder directory or a dataset name")
    cond = _train_condition(channel, snr, erasure)
    config = FitConfig(
        backbone=backbone_config(model, pretrained, checkpoint, num_classes, img_size), split=split, data=data,
        out=str(out), channel=ChannelConfig(channel, list(cond) if isinstance(cond, tuple) else cond, bits),
        ratio=ratio, code_channels=code_channels, preset=preset, hidden_channels=hidden_channels,
        encoder_blocks=encoder_blocks,
        spatial_reduction=spatial_reduction, val_data=val_data, val_fraction=val_fraction,
        data_root=data_root, limit=limit, codec_epochs=codec_epochs, joint_epochs=joint_epochs, lr=lr,
        joint_lr=joint_lr, lr_schedule=lr_schedule, batch_size=batch_size, distill=distill,
        distill_temperature=distill_temperature, augment=augment, device=device,
        seed=seed, resume=resume,
    )
    result = fit_codec(config, callback=_FitProgress())
    render_fit(result)


@app.command(name="eval")
@handle_errors
def eval_(
    run: Annotated[Path, typer.Argument(help="Run directory made by `bnpp fit`.")],
    data: DataOpt = None,
    snr: Annotated[Optional[str], typer.Option(help="PSNR values in dB, e.g. 0,5,10,20 (analog channels).")] = None,
    erasure: Annotated[Optional[str], typer.Option(help="Probabilities, e.g. 0,0.01,0.05 (digital).")] = None,
    draws: Annotated[int, typer.Option(help="Noise draws per condition.")] = 5,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N test images.")] = None,
    data_root: Annotated[Optional[str], typer.Option(help="Root for torchvision datasets.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    json_path: JsonOpt = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write accuracy vs condition as a PNG.")] = None,
    seed: SeedOpt = 0,
):
    """Top-1 against channel quality, and the compression actually achieved."""
    from .errors import ChannelError, DataError
    from .evaluate import EvalConfig, evaluate_run, plot_eval
    from .pipeline import load_run
    from .render import render_eval

    if data is None:
        raise DataError("--data is required: the test images (.npz, ImageFolder directory or dataset name)")
    loaded = load_run(run)
    analog = loaded.pipeline.channel.condition_name == "snr_db"
    if (snr is not None and not analog) or (erasure is not None and analog):
        raise ChannelError(f"this run's channel is '{loaded.pipeline.channel.name}': use "
                           f"{'--snr' if analog else '--erasure'}")
    conditions = _values(snr if analog else erasure, "--snr" if analog else "--erasure")
    config = EvalConfig(run=str(run), data=data, conditions=conditions, draws=draws, limit=limit,
                        data_root=data_root, device=device, seed=seed)
    result = evaluate_run(config, run=loaded)
    write_json_output(json_path, result.to_dict())
    if plot is not None:
        plot_eval(result, str(plot))
    render_eval(result)


@app.command()
@handle_errors
def export(
    run: Annotated[Path, typer.Argument(help="Run directory made by `bnpp fit`.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for device.safetensors and edge.safetensors.")],
    json_path: JsonOpt = None,
):
    """Write the device half (head + encoder) and the edge half (decoder + tail) as safetensors."""
    from .export import export_halves
    from .render import render_export

    result = export_halves(run, out)
    write_json_output(json_path, result.to_dict())
    render_export(result)


@app.command()
@handle_errors
def predict(
    deploy: Annotated[Path, typer.Argument(help="Directory with device.safetensors and edge.safetensors.")],
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...).")],
    snr: Annotated[Optional[float], typer.Option(help="Analog channels: PSNR in dB (default: noiseless).")] = None,
    erasure: Annotated[Optional[float], typer.Option(help="Digital channels: bit error probability.")] = None,
    top: Annotated[int, typer.Option(help="How many classes to show.")] = 5,
    json_path: JsonOpt = None,
    seed: SeedOpt = 0,
):
    """Run device -> wire -> channel -> edge on image files; top classes, payload size, time per side."""
    from .render import render_predictions
    from .runtime import predict as run_predict

    condition, name = link_condition(snr, erasure)
    results = run_predict(deploy, [str(p) for p in images], condition=condition, topk=top, seed=seed,
                          condition_name=name)
    write_json_output(json_path, [r.to_dict() for r in results])
    render_predictions(results)


def _register_runtime_commands() -> None:
    """`bnpp serve` / `bnpp infer` live in cli_serve.py (the network runtime)."""
    try:
        from . import cli_serve
    except ImportError:  # pragma: no cover - module not present
        return
    cli_serve.register(app)


_register_runtime_commands()


def main() -> None:
    app(prog_name="bnpp")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
