"""The length table of a variable-length code, chosen on validation images (codec.variable).

    calibrate_lengths(pipeline, val_set, transform, device) -> record, and the encoder's table set

The head runs once over the validation images. At each grid condition (``length_grid``: the
training range in 1 dB steps for analog channels, halvings of the worst probability for digital
ones) the code is sent once through the channel (one seeded draw per condition, the same noise for
every length: the comparison between lengths is paired), and top-1 is measured for every allowed
prefix length. The table keeps, per condition, the smallest length within ``tolerance`` of the full
code's top-1 there, made monotone (a worse condition never gets fewer symbols than a better one).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..codec.variable import LENGTH_TOLERANCE, TABLE_ENTRIES, allowed_lengths, prefix_mask
from ..data.batching import BatchTransform, make_loader
from ..errors import CodecError

GRID_SPAN_DB = 30.0  # an analog range open to noiseless is calibrated up to 30 dB above its worst condition


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
def calibrate_lengths(pipeline, val_set, transform: BatchTransform, device: torch.device,
                      tolerance: float = LENGTH_TOLERANCE, seed: int = 12345) -> dict[str, Any]:
    """Measure top-1 per (grid condition, allowed length) on ``val_set``, set the encoder's length
    table, and return the record (conditions in user units). A code that is not variable-length, or
    no validation images: an empty record and the table untouched (it sends the whole code)."""
    codec, channel = pipeline.codec, pipeline.channel
    if not codec.config.variable_length or val_set is None or len(val_set) == 0:
        return {}
    if not 0 <= tolerance < 1:
        raise CodecError(f"length tolerance {tolerance} must be in [0, 1) (a top-1 fraction)")
    was_training = codec.training
    pipeline.eval()
    total = codec.config.code_symbols
    lengths = allowed_lengths(total)
    grid = length_grid(channel)
    features, labels = [], []
    for x, y in make_loader(val_set, 256, shuffle=False, seed=0):
        features.append(pipeline.head(transform(x).to(device)))
        labels.append(y.to(device))
    n = sum(len(y) for y in labels)
    hits = {p: dict.fromkeys(lengths, 0) for p in grid}
    for i, param in enumerate(grid):
        gen = torch.Generator(device=device).manual_seed(seed + i)
        for f, y in zip(features, labels):
            z_hat = channel(codec.encoder(f, param), param, generator=gen)
            for k in lengths:
                kept = prefix_mask(z_hat, torch.full((len(y),), k, dtype=torch.int64))
                logits = pipeline.tail(codec.decoder(kept, param))
                hits[param][k] += int((logits.argmax(1) == y).sum())
    top1 = {p: {k: h / n for k, h in row.items()} for p, row in hits.items()}
    chosen = choose_lengths(top1, tolerance)
    codec.encoder.lengths.set(list(chosen.items()))
    if was_training:
        codec.train()
    label = channel.condition_name or "param"
    return {"tolerance": tolerance, "images": n, "symbols": total, "lengths": lengths,
            "rows": [{label: channel.condition_from_param(p) if channel.condition_name else p,
                      "symbols_per_image": chosen[p], "top1": {str(k): a for k, a in top1[p].items()}}
                     for p in grid]}
