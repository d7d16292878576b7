"""`bnpp eval`: accuracy against channel quality, and the compression actually achieved.

Reported, on the test images given (no augmentation, no rescaling of images already at size):
- backbone_top1: the uncut model as the user brought it (computed as tail(head(x)), which equals
  model(x) exactly; after phase joint, the original backbone is run separately);
- noiseless_top1: the cut model with the codec and a noiseless link (for digital channels the code
  is still quantised to `bits`: "noiseless" means no erasures / flips);
- results: top-1 at each FIXED channel condition, over several independent noise draws (mean and
  standard deviation), each draw seeded so that the figures are reproducible;
- bandwidth_ratio = C H W / (C' H' W') and, for digital channels, bit_ratio = 32 C H W / (bits C' H' W'),
  with the feature and code shapes they come from;
- for every digital code (fixed-length levels, or the entropy preset's streams): bits_per_image and
  bytes_per_image, means of the payload MEASURED from the real wire frame of each image coded alone
  (batch 1), frame_bytes_per_image with the header, -log2 of the integer tables beside it (entropy code),
  and the coder's time per image on each side (the network excluded);
- symbols_per_image at each condition: the whole code, or for a variable-length code (preset
  variable) the length its table sends there (chosen on validation images at the fit), with the
  table itself and the mean over the conditions evaluated; top-1 is measured with that prefix. Its
  rows also carry payload_bytes and frame_bytes (and payload_bits, digital), means MEASURED from
  each image's own (1, k) prefix frame at that condition (``measure_prefix_frames``).

The head runs once over the test set; each condition re-runs only encoder, channel, decoder, tail.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from ..data.batching import BatchTransform, make_loader
from ..data.datasets import check_labels, load_dataset
from ..errors import BnppError, ChannelError, DataError
from ..codec.presets import get_preset
from ..link.config import eval_conditions, select_condition
from .checks import input_checks, learned_check
from .pipeline import Run, load_run
from .rundir import RunDir


@dataclass
class EvalConfig:
    """What `evaluate_run` measures: a fitted run's top-1 over channel conditions on test images.

    Attributes:
        run: the run directory made by `fit_codec`.
        data: the test images (.npz, ImageFolder directory or dataset name).
        conditions: the conditions to evaluate, dB PSNR for analog channels, probabilities for
            digital ones; default None: the channel's default conditions.
        condition_name: which condition the values are ("snr_db", "erasure" or "flip"), checked
            against the run's channel; default None (no check: the channel's own condition).
        draws: independent noise draws per condition; default 5 (a mean and a spread).
        batch_size: images per forward pass; default 256.
        limit: only the first N test images; default None (all).
        data_root: where torchvision datasets live; default None.
        device: torch device, "cpu" or "cuda"; default "cpu".
        seed: seed of the noise draws; default 0.
        link: the radio link changed for this evaluation, {PhyConfig field: value} (the Sionna
            channels only), e.g. {"speed_mps": 120} to measure a code away from the UE speed it was
            trained at; default None: the run's own link.
    """

    run: str
    data: str
    conditions: Sequence[float] | None = None  # dB for analog channels, probabilities for digital ones
    condition_name: str | None = None  # which condition they are ("snr_db" | "erasure" | "flip"), checked against the channel
    draws: int = 5  # independent noise draws per condition
    batch_size: int = 256
    limit: int | None = None  # only the first N test images
    data_root: str | None = None
    device: str = "cpu"
    seed: int = 0
    link: dict[str, Any] | None = None  # the radio link changed for this evaluation (PhyConfig fields)


@dataclass
class EvalResult:
    """`evaluate_run`'s result: top-1 per condition and the compression actually achieved.

    Attributes:
        run: the run directory.
        model: the timm model name.
        split: the split point's name.
        channel: the channel's name.
        channel_definition: the channel in words (its formula).
        condition_axis: what the conditions are, with their unit.
        train_condition: the range the codec was trained for, in words.
        train_range: the same range in the condition's units, [low, high]; None: noiseless.
        feature_shape: the feature at the split, without the batch axis.
        code_shape: the code z, without the batch axis.
        bandwidth_ratio: feature elements / code symbols.
        bit_ratio: float32 feature bits / code bits (digital codes), else None.
        bits: bits per symbol on digital channels, else None.
        code_symbols: real channel symbols per image.
        payload_bytes: digital: packed bits per image (the wire payload), else None.
        images: test images evaluated.
        backbone_top1: the uncut model's top-1, in [0, 1].
        noiseless_top1: the pipeline's top-1 over a noiseless link, in [0, 1].
        results: one dict per condition: condition, top1_mean, its spread and the draws.
        bits_per_image: digital codes: 8 x the measured payload bytes, mean, batch 1.
        bytes_per_image: the same in bytes (the coded streams / packed levels).
        frame_bytes_per_image: the whole batch-1 frame, header included, bytes.
        estimated_bits_per_image: entropy code: -log2 of its integer tables (an ideal coder), mean.
        encode_ms_per_image: coder time on the device side (quantised code -> frame), ms.
        decode_ms_per_image: coder time on the edge side (frame -> code), ms.
        variable_length: the symbols sent follow the condition (codec.variable); default False.
        symbols_per_image_mean: mean over the conditions evaluated of the symbols sent.
        length_table: variable-length code: [{condition, symbols_per_image}], else None.
        normalisation: the input normalisation the figures were measured with: {mean, std, source}
            (source: where the run took them from: given, the checkpoint's metadata, timm's config).
        warnings: what the figures say went wrong, in words: the fit did not learn (its
            metrics.json), the cut model near chance or far below the uncut one on these images, a
            cut model above the uncut one by more than noise, or an uncut model far below the top-1
            its checkpoint records (run.checks); empty when nothing is odd.
    """

    run: str
    model: str
    split: str
    channel: str
    channel_definition: str
    condition_axis: str  # what the conditions are, with their unit
    train_condition: str  # the range the codec was trained for, in words
    train_range: list[float | None]  # the same range in the condition's units [low, high]; None: noiseless
    feature_shape: list[int]
    code_shape: list[int]
    bandwidth_ratio: float
    bit_ratio: float | None
    bits: int | None
    code_symbols: int  # real channel symbols per image
    payload_bytes: int | None  # digital: packed bits per image (the wire payload)
    images: int
    backbone_top1: float
    noiseless_top1: float
    results: list[dict[str, Any]] = field(default_factory=list)
    bits_per_image: float | None = None  # digital codes: 8 x the measured payload bytes, mean, batch 1
    bytes_per_image: float | None = None  # the same in bytes (the coded streams / packed levels)
    frame_bytes_per_image: float | None = None  # the whole batch-1 frame, header included
    estimated_bits_per_image: float | None = None  # entropy code: -log2 of its integer tables (an ideal coder), mean
    encode_ms_per_image: float | None = None  # coder time, device side (quantised code -> frame)
    decode_ms_per_image: float | None = None  # coder time, edge side (frame -> code)
    variable_length: bool = False  # the symbols sent follow the condition (codec.variable)
    symbols_per_image_mean: float | None = None  # mean over the conditions evaluated of what was sent
    length_table: list[dict[str, Any]] | None = None  # variable-length code: [{condition, symbols_per_image}]
    normalisation: dict[str, Any] | None = None  # {mean, std, source}: what the inputs were normalised with
    warnings: list[str] = field(default_factory=list)  # what the figures say went wrong (run.checks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_run(config: EvalConfig, run: Run | None = None) -> EvalResult:
    """Evaluate a fitted run directory on test images at fixed channel conditions.

    Options, conditions and the test data are checked from the run's config.json before the model
    is rebuilt: a bad value costs no model build. The test set streams through in batches: memory is
    bounded by the batch, not by the test set."""
    if config.draws < 1:
        raise ChannelError(f"`draws` {config.draws} must be at least 1")
    if config.limit is not None and config.limit < 1:
        raise DataError(f"`limit` {config.limit} must be at least 1 (images)")
    run_config = run.config if run is not None else _checked_run_config(config.run)
    channel = _eval_channel(run_config.channel, config.link)
    requested = config.conditions
    if config.condition_name is not None:
        requested = select_condition(channel, {config.condition_name: requested}, "this run's")
    conditions = eval_conditions(channel, requested)
    dataset = _test_set(config, run_config)
    run = run or load_run(config.run)
    device = torch.device(config.device)
    if config.link:
        run.pipeline.channel = channel  # the link changed for this evaluation
    pipeline = run.pipeline.eval().to(device)
    params = [pipeline.channel.param_from_condition(c) for c in conditions]
    tally = _Tally(pipeline, params, config.draws, config.seed, device)
    meter = get_preset(run.codec_config.preset).code.meter(pipeline.codec, pipeline.channel, params)
    source = run.source_model().to(device) if run.finetuned else None
    dc = run_config.data_config
    transform = BatchTransform(dc["mean"], dc["std"], augment=False)
    with torch.no_grad():
        for x, y in make_loader(dataset, config.batch_size, shuffle=False, seed=0):
            x, y = transform(x).to(device), y.to(device)
            f = pipeline.head(x)
            tally.add(f, y, source(x) if source is not None else pipeline.tail(f))
            meter.add(f)
    return _result(run, pipeline.channel, conditions, tally, meter)


def _eval_channel(saved, link: dict[str, Any] | None):
    """The run's channel, with its radio link changed by ``link`` (PhyConfig fields) where given."""
    if not link:
        return saved.build()
    if saved.phy is None:
        raise ChannelError(f"`link` applies to the radio links (ofdm, ldpc), not this run's channel '{saved.name}'")
    import dataclasses

    known = {f.name for f in dataclasses.fields(saved.phy)}
    bad = sorted(set(link) - known)
    if bad:
        raise ChannelError(f"`link` key {bad[0]!r} is not a radio link setting", hint="valid: " + ", ".join(sorted(known)))
    return dataclasses.replace(saved, phy=dataclasses.replace(saved.phy, **link)).build()


def _checked_run_config(path: str):
    run_dir = RunDir(path)
    run_config = run_dir.read_config()
    run_dir.check_complete()
    return run_config


def _test_set(config: EvalConfig, run_config):
    dc = run_config.data_config
    dataset = load_dataset(config.data, input_size=tuple(dc["input_size"][1:]), train=False, root=config.data_root)
    check_labels(dataset, run_config.num_classes)
    if config.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(config.limit, len(dataset))))
    return dataset


class _Tally:
    """Correct answers of the uncut model, of the noiseless cut model and at each (condition, draw),
    one test batch at a time. Draw d at every condition has its own generator, seeded
    seed x 1000 + d, which the batches consume in order: the figures do not depend on the batching."""

    def __init__(self, pipeline, params: list[float], draws: int, seed: int, device: torch.device):
        self.pipeline, self.params = pipeline, params
        self.generators = [[torch.Generator(device=device).manual_seed(seed * 1000 + d)
                            for d in range(1 if p == 0 else draws)] for p in params]
        self.hits = [[0] * len(g) for g in self.generators]
        self.backbone = self.noiseless = self.n = 0

    def add(self, f: torch.Tensor, y: torch.Tensor, backbone_logits: torch.Tensor) -> None:
        correct = lambda logits: int((logits.argmax(1) == y).sum())  # noqa: E731
        self.backbone += correct(backbone_logits)
        self.noiseless += correct(self.pipeline.from_features(f, 0.0, None))
        for i, param in enumerate(self.params):
            for d, gen in enumerate(self.generators[i]):
                self.hits[i][d] += correct(self.pipeline.from_features(f, param, gen))
        self.n += len(y)

    def top1(self, i: int) -> list[float]:
        """Top-1 of each draw at the i-th condition."""
        return [h / self.n for h in self.hits[i]]


def _result(run: Run, channel, conditions: list[float], tally: _Tally, meter) -> EvalResult:
    """The EvalResult of a finished tally and meter."""
    results = []
    for i, cond in enumerate(conditions):
        accs = tally.top1(i)
        results.append({"condition": {channel.condition_name: cond}, "label": channel.format_condition(cond),
                        "top1_mean": statistics.fmean(accs), "top1_std": statistics.pstdev(accs) if len(accs) > 1 else 0.0,
                        "draws": len(accs), "top1": accs, **meter.row(tally.params[i]),
                        **channel.eval_row(tally.params[i])})  # radio links: channel uses, block error rate
    codec, dc = run.codec_config, run.config.data_config
    return EvalResult(
        run=str(run.path), model=run.config.model, split=run.config.split, channel=channel.name,
        channel_definition=channel.describe(), condition_axis=channel.condition_axis,
        train_condition=channel.format_train_condition(),
        train_range=[None if math.isinf(v) else float(v) for v in channel.train_condition],
        feature_shape=list(codec.feature_shape), code_shape=list(codec.code_shape),
        bandwidth_ratio=codec.bandwidth_ratio, code_symbols=codec.code_symbols, images=tally.n,
        backbone_top1=tally.backbone / tally.n, noiseless_top1=tally.noiseless / tally.n, results=results,
        symbols_per_image_mean=statistics.fmean(r["symbols_per_image"] for r in results) if results else None,
        normalisation={"mean": dc["mean"], "std": dc["std"], "source": dc.get("normalisation", "not recorded")},
        warnings=_warnings(run, tally),
        **{"bits": None, "bit_ratio": None, "payload_bytes": None, **meter.fields()},
    )


def _warnings(run: Run, tally: _Tally) -> list[str]:
    """What the figures say went wrong (run.checks), in words."""
    out = []
    at_fit = ((run.metrics or {}).get("validation") or {}).get("learned")
    noiseless, backbone = tally.noiseless / tally.n, tally.backbone / tally.n
    if at_fit and not at_fit["learned"]:
        out.append(f"the codec did not learn at the fit: {at_fit['reason']}")
    else:
        here = learned_check(noiseless, backbone, run.config.num_classes)
        if not here["learned"]:
            out.append(f"on these test images {here['reason']}")
    dc = run.config.data_config
    return out + input_checks(noiseless, backbone, tally.n, run.config.num_classes, dc.get("recorded_top1"),
                              dc.get("normalisation"))


def check_plotting() -> None:
    """`plot` needs matplotlib: say so before an evaluation that may take minutes, not after it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BnppError("`plot` needs matplotlib, which is not installed", hint="pip install 'bnpp[plot]'") from None


def plot_eval(result: EvalResult, path: str) -> None:
    """Top-1 vs channel condition, with the backbone and noiseless figures as references and the
    codec's training range shaded (PNG)."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_write

    xs = [next(iter(r["condition"].values())) for r in result.results]
    ys = [100 * r["top1_mean"] for r in result.results]
    es = [100 * r["top1_std"] for r in result.results]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{result.channel} (mean ± std)")
    ax.axhline(100 * result.backbone_top1, color="k", ls="--", lw=1, label="uncut backbone")
    ax.axhline(100 * result.noiseless_top1, color="g", ls=":", lw=1, label="cut, noiseless link")
    lo, hi = result.train_range
    if xs and lo is not None and lo != hi:  # the codec's training range, clipped to the plotted conditions
        top = max(xs + [lo]) if hi is None else hi
        ax.axvspan(lo, top, color="tab:blue", alpha=0.08, label=f"trained for {result.train_condition}")
    ax.set_xlabel(result.condition_axis)
    ax.set_ylabel("top-1 (%)")
    bits = f", {result.bit_ratio:.0f}x bits" if result.bit_ratio else ""
    ax.set_title(f"{result.model} @ {result.split}: {result.bandwidth_ratio:.0f}x bandwidth{bits}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
