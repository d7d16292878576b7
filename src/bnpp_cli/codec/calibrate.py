"""The steps after a fit that a kind of code needs (codec.kinds), over head features the caller streams.

    calibrate_tables(codec, features)                      an entropy code's integer tables from its own code
    calibrate_lengths(codec, channel, tail, batches)       a variable-length code's length per condition

Both take an iterable of head features (``features``: f batches; ``batches``: (f, y) batches) so that
this package needs nothing of the data pipeline: `bnpp fit` (run.fit) streams them from the training
images (or its feature cache) and the validation images.

Tables. The learned density trains beside the codec and lags it: after a short fit its tables spent
3.5-4 bits per integer whatever the rate weight, while tables fitted to the same codes cost 1.2-5.2x
fewer measured bits (benchmarks/rate_frontier_digital_tables.py). So the final tables are the
histogram of the trained code on the training images (the encoder in eval mode, the same integers
the device will send), plus the density's probabilities as one pseudo-observation per symbol
position (a symbol the images never produced keeps the density's share; every count stays >= 1 of
2^16). The code, and so top-1, does not change; only what the coder spends on it.

Lengths. At each grid condition (``length_grid``: the training range in 1 dB steps for analog
channels, halvings of the worst probability for digital ones) the code is sent once through the
channel (one seeded draw per condition, the same noise for every length: the comparison between
lengths is paired), and top-1 is measured for every allowed prefix length. The table keeps, per
condition, the smallest length within ``tolerance`` of the full code's top-1 there, made monotone (a
worse condition never gets fewer symbols than a better one).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import Tensor, nn

from ..errors import CodecError
from .entropy import PRECISION, find_prior, update_tables
from .variable import LENGTH_TOLERANCE, TABLE_ENTRIES, allowed_lengths, prefix_mask

TABLE_IMAGES = 10000  # training images whose code makes the histogram (all of them when fewer)
GRID_SPAN_DB = 30.0  # an analog range open to noiseless is calibrated up to 30 dB above its worst condition


@torch.no_grad()
def calibrate_tables(codec: nn.Module, features: Iterable[Tensor]) -> dict[str, Any]:
    """Set an entropy code's tables from its code on the head features ``features`` (batches of f;
    the caller stops at TABLE_IMAGES); the record of what was done. The caller's mode is restored."""
    prior = find_prior(codec)
    update_tables(codec)  # the density's tables first: they stand if no image comes
    was_training = codec.training
    codec.eval()
    hist = torch.zeros(prior.channels, 2 * prior.support + 1, dtype=torch.float64)
    n = 0
    try:
        for f in features:
            hist += prior.histogram(codec.encoder(f, 0.0))
            n += f.shape[0]
    finally:  # the caller's mode back, also when a batch fails
        codec.train(was_training)
    if n == 0:
        return {}
    positions = hist.sum(1, keepdim=True) / n  # symbols per image per channel
    density = prior.pmf().cpu()
    update_tables(codec, hist + positions * density)
    counts = prior.counts.double().cpu() / 2.0**PRECISION
    bits = float(-(hist * counts.log2()).sum() / n)  # what the tables spend on these images' code
    return {"source": "histogram of the trained code on the training images", "images": n,
            "bits_per_image_estimate": bits,
            "density_bits_per_image_estimate": float(-(hist * density.clamp_min(1e-300).log2()).sum() / n)}


def length_grid(channel) -> list[float]:
    """Channel parameters to calibrate at, worst first: at most TABLE_ENTRIES of them."""
    lo, hi = channel.param_range  # native: lo the best (smallest sigma or p), hi the worst
    if hi == 0:
        return [0.0]
    if channel.digital:
        return [hi / 2**j for j in range(TABLE_ENTRIES - 1) if hi / 2**j >= max(lo, hi / 1024)] + ([0.0] if lo == 0 else [])
    worst = channel.condition_from_param(hi)
    best = channel.condition_from_param(lo)
    best = min(best, worst + GRID_SPAN_DB)
    step = max(1.0, math.ceil((best - worst) / (TABLE_ENTRIES - 1)))
    count = int(math.floor((best - worst) / step + 1e-9)) + 1
    return [channel.param_from_condition(worst + i * step) for i in range(count)]


def choose_lengths(top1: dict[float, dict[int, float]], tolerance: float = LENGTH_TOLERANCE) -> dict[float, int]:
    """{param: {length: top-1}} -> {param: the smallest length within ``tolerance`` of the longest's
    top-1 at that param}, monotone: a larger (worse) param never gets a shorter length."""
    chosen: dict[float, int] = {}
    floor = 0
    for param in sorted(top1):  # best condition first
        accs = top1[param]
        full = accs[max(accs)]
        k = min(k for k, a in accs.items() if a >= full - tolerance - 1e-12)
        floor = max(floor, k)
        chosen[param] = floor
    return chosen


@torch.no_grad()
def calibrate_lengths(codec: nn.Module, channel, tail: nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                      tolerance: float = LENGTH_TOLERANCE, seed: int = 12345) -> dict[str, Any]:
    """Measure top-1 per (grid condition, allowed length) on the validation batches (f, y), set the
    encoder's length table, and return the record (conditions in user units). No images: an empty
    record and the table untouched (it sends the whole code). The caller's mode is restored."""
    if not 0 <= tolerance < 1:
        raise CodecError(f"length tolerance {tolerance} must be in [0, 1) (a top-1 fraction)")
    was_training = codec.training, tail.training
    codec.eval(), tail.eval()
    try:
        data = list(batches)
        n = sum(len(y) for _, y in data)
        if n == 0:
            return {}
        top1 = _prefix_top1(codec, channel, tail, data, seed)
    finally:
        codec.train(was_training[0]), tail.train(was_training[1])
    chosen = choose_lengths({p: {k: h / n for k, h in row.items()} for p, row in top1.items()}, tolerance)
    codec.encoder.lengths.set(list(chosen.items()))
    label = channel.condition_name or "param"
    total = codec.config.code_symbols
    return {"tolerance": tolerance, "images": n, "symbols": total, "lengths": allowed_lengths(total),
            "rows": [{label: channel.condition_from_param(p) if channel.condition_name else p,
                      "symbols_per_image": chosen[p], "top1": {str(k): h / n for k, h in top1[p].items()}}
                     for p in length_grid(channel)]}


def _prefix_top1(codec, channel, tail, data: list[tuple[Tensor, Tensor]], seed: int) -> dict[float, dict[int, int]]:
    """{grid param: {allowed length: correct answers}}, one seeded channel draw per grid condition."""
    lengths = allowed_lengths(codec.config.code_symbols)
    hits: dict[float, dict[int, int]] = {}
    for i, param in enumerate(length_grid(channel)):
        gen = torch.Generator(device=data[0][0].device).manual_seed(seed + i)
        hits[param] = dict.fromkeys(lengths, 0)
        for f, y in data:
            z_hat = channel(codec.encoder(f, param), param, generator=gen)
            for k in lengths:
                kept = prefix_mask(z_hat, torch.full((len(y),), k, dtype=torch.int64))
                hits[param][k] += int((tail(codec.decoder(kept, param)).argmax(1) == y).sum())
    return hits
