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
from ..codec.entropy import decode_entropy_frame, encode_entropy_frame, find_prior, find_tables
from ..codec.variable import take_prefix
from ..link import wire
from ..link.config import select_condition
from ..link.transmit import decode_code, encode_code
from .pipeline import Run, load_run
from .rundir import RunDir


@dataclass
class EvalConfig:
    run: str
    data: str
    conditions: Sequence[float] | None = None  # dB for analog channels, probabilities for digital ones
    condition_flag: str | None = None  # the flag that gave them ("--snr" | "--erasure"), checked against the channel
    draws: int = 5  # independent noise draws per condition
    batch_size: int = 256
    limit: int | None = None  # only the first N test images
    data_root: str | None = None
    device: str = "cpu"
    seed: int = 0


@dataclass
class EvalResult:
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_run(config: EvalConfig, run: Run | None = None) -> EvalResult:
    """Evaluate a fitted run directory on test images at fixed channel conditions.

    Options, conditions and the test data are checked from the run's config.json before the model
    is rebuilt: a bad value costs no model build."""
    if config.draws < 1:
        raise ChannelError(f"--draws {config.draws} must be at least 1")
    if config.limit is not None and config.limit < 1:
        raise DataError(f"--limit {config.limit} must be at least 1 (images)")
    if run is None:
        run_dir = RunDir(config.run)
        run_config = run_dir.read_config()
        run_dir.check_complete()
    else:
        run_config = run.config
    channel = run_config.channel.build()
    requested = config.conditions
    if config.condition_flag is not None:
        requested = select_condition(channel, {config.condition_flag: requested}, "this run's")
    conditions = _conditions(channel, requested)
    dc = run_config.data_config
    dataset = load_dataset(config.data, input_size=tuple(dc["input_size"][1:]), train=False, root=config.data_root)
    check_labels(dataset, run_config.num_classes)
    if config.limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(config.limit, len(dataset))))
    run = run or load_run(config.run)
    pipeline = run.pipeline.eval()
    channel = pipeline.channel
    device = torch.device(config.device)
    pipeline.to(device)
    transform = BatchTransform(dc["mean"], dc["std"], augment=False)

    source = run.source_model().to(device) if run.finetuned else None
    features, labels, backbone_hits = [], [], 0
    with torch.no_grad():
        for x, y in make_loader(dataset, config.batch_size, shuffle=False, seed=0):
            x, y = transform(x).to(device), y.to(device)
            f = pipeline.head(x)
            features.append(f)
            labels.append(y)
            logits = source(x) if source is not None else pipeline.tail(f)
            backbone_hits += int((logits.argmax(1) == y).sum())
    y_all = torch.cat(labels)

    def top1(param: float, generator: torch.Generator | None) -> float:
        hits = 0
        with torch.no_grad():
            for f, y in zip(features, labels):
                hits += int((pipeline.from_features(f, param, generator).argmax(1) == y).sum())
        return hits / len(y_all)

    results = []
    codec = run.codec_config
    bits = channel.bits if channel.digital else None
    for cond in conditions:
        param = channel.param_from_condition(cond)
        draws = 1 if param == 0 else config.draws
        accs = [top1(param, torch.Generator(device=device).manual_seed(config.seed * 1000 + d)) for d in range(draws)]
        symbols = pipeline.codec.symbols(param)
        results.append({"condition": {channel.condition_name: cond}, "label": channel.format_condition(cond),
                        "top1_mean": statistics.fmean(accs),
                        "top1_std": statistics.pstdev(accs) if draws > 1 else 0.0, "draws": draws, "top1": accs,
                        "symbols_per_image": symbols, "payload_bits": 8 * ((symbols * bits + 7) // 8) if bits else None})
    variable = codec.variable_length  # its frames' sizes follow the condition: the rows say them
    if variable:
        for row, cond in zip(results, conditions):
            param = channel.param_from_condition(cond)
            sizes = measure_prefix_frames(pipeline, features, param, row["symbols_per_image"])
            row.update(sizes, payload_bits=8 * sizes["payload_bytes"] if bits else None)
    digital = channel.digital and not variable
    stream = measure_bitstream(pipeline, features) if digital or find_tables(pipeline.codec) else {}
    table = None
    if variable:
        table = [{"condition": {channel.condition_name: channel.condition_from_param(p)} if channel.condition_name
                  else {}, "symbols_per_image": k} for p, k in pipeline.codec.encoder.lengths.entries()]
    code_symbols = int(torch.Size(codec.code_shape).numel())
    return EvalResult(
        run=str(run.path), model=run.config.model, split=run.config.split, channel=channel.name,
        channel_definition=channel.describe(), condition_axis=channel.condition_axis,
        train_condition=channel.format_train_condition(), train_range=[None if math.isinf(v) else float(v) for v in channel.train_condition],
        feature_shape=list(codec.feature_shape),
        code_shape=list(codec.code_shape), bandwidth_ratio=codec.bandwidth_ratio,
        bit_ratio=codec.bit_ratio(bits) if bits else None, bits=bits, code_symbols=code_symbols,
        payload_bytes=(code_symbols * bits + 7) // 8 if bits else None, images=len(y_all),
        backbone_top1=backbone_hits / len(y_all), noiseless_top1=top1(0.0, None), results=results, **stream,
        variable_length=variable, length_table=table,
        symbols_per_image_mean=statistics.fmean(r["symbols_per_image"] for r in results) if results else None,
    )


MEASURE_PAIR_ID = "0" * 32  # the frame's size does not depend on the pair id


@torch.no_grad()
def measure_bitstream(pipeline, features: list[torch.Tensor]) -> dict[str, float | None]:
    """Each image's code as its own wire frame (batch 1), decoded back: sizes, estimate and coder time.

    The encoder runs batched (eval mode: the same code); coding and decoding run one image at a time."""
    import time

    codec, channel = pipeline.codec, pipeline.channel
    prior = find_prior(codec)
    payload = frame_bytes = estimate = enc_s = dec_s = 0.0
    n = 0
    for f in features:
        z = codec.encoder(f, 0.0).cpu()
        if prior is not None:
            estimate += float(prior.bits().sum())
        for i in range(z.shape[0]):
            t0 = time.perf_counter()
            if prior is not None:
                buf = encode_entropy_frame(z[i:i + 1], codec.encoder, MEASURE_PAIR_ID)
            else:
                buf = encode_code(z[i:i + 1], channel, MEASURE_PAIR_ID)
            t1 = time.perf_counter()
            if prior is not None:
                back = decode_entropy_frame(buf, codec.decoder, MEASURE_PAIR_ID, codec.config.code_shape)
                payload += sum(len(s) for s in wire.decode_streams(buf)[1])
            else:
                back = decode_code(buf, channel, MEASURE_PAIR_ID, codec.config.code_shape)
                payload += wire.decode(buf)[0].payload_bytes
            dec_s += time.perf_counter() - t1
            enc_s += t1 - t0
            if prior is not None and not torch.equal(back, z[i:i + 1]):
                raise BnppError(f"image {n}: the entropy code does not decode to what was coded")
            frame_bytes += len(buf)
            n += 1
    return {"bits_per_image": 8 * payload / n, "bytes_per_image": payload / n, "frame_bytes_per_image": frame_bytes / n,
            "estimated_bits_per_image": estimate / n if prior is not None else None,
            "encode_ms_per_image": 1e3 * enc_s / n, "decode_ms_per_image": 1e3 * dec_s / n}


@torch.no_grad()
def measure_prefix_frames(pipeline, features: list[torch.Tensor], param: float, symbols: int) -> dict[str, float]:
    """A variable-length code at channel parameter ``param``: each image's prefix of ``symbols`` as its
    own wire frame (batch 1), read back; the means of the payload and frame bytes the frames hold."""
    codec, channel = pipeline.codec, pipeline.channel
    payload = frame_bytes = n = 0
    for f in features:
        z = take_prefix(codec.encoder(f, param), symbols).cpu()
        for i in range(z.shape[0]):
            buf = encode_code(z[i:i + 1], channel, MEASURE_PAIR_ID)
            frame = wire.decode(buf)[0]
            back = decode_code(buf, channel, MEASURE_PAIR_ID, codec.config.code_shape, prefix=True)
            if tuple(back.shape) != (1, symbols):
                raise BnppError(f"image {n}: a {symbols}-symbol prefix came back as {tuple(back.shape)}")
            payload, frame_bytes, n = payload + frame.payload_bytes, frame_bytes + len(buf), n + 1
    return {"payload_bytes": payload / n, "frame_bytes": frame_bytes / n}


def _conditions(channel, requested: Sequence[float] | None) -> list[float]:
    if channel.condition_name is None:
        if requested:
            raise ChannelError(f"channel '{channel.name}' is noiseless: it takes no --snr/--erasure conditions")
        return []
    if requested is None:
        requested = channel.default_eval_conditions
    for value in requested:
        channel.param_from_condition(value)  # validates the range, with a message naming the value
    return [float(v) for v in requested]


def check_plotting() -> None:
    """--plot needs matplotlib: say so before an evaluation that may take minutes, not after it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BnppError("--plot needs matplotlib, which is not installed", hint="pip install 'bnpp[plot]'") from None


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
