"""An entropy code's integer tables from its own code, at the end of a fit (codec.entropy).

    calibrate_tables(pipeline, images, transform, device) -> record, and both halves' tables set

The learned density trains beside the codec and lags it: after a short fit (the digital frontier's
468 steps) its tables spent 3.5-4 bits per integer whatever the rate weight, while tables fitted to
the same codes cost 1.2-5.2x fewer measured bits (benchmarks/rate_frontier_digital_tables.py). So the
final tables are the histogram of the trained code on the training images (the encoder in eval mode,
the same integers the device will send), plus the density's probabilities as one pseudo-observation
per symbol position (a symbol the images never produced keeps the density's share; every count stays
>= 1 of 2^16). The code, and so top-1, does not change; only what the coder spends on it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..codec.entropy import PRECISION, find_prior, update_tables
from ..data.batching import BatchTransform, make_loader
from .features import FeatureCache

TABLE_IMAGES = 10000  # training images whose code makes the histogram (all of them when fewer)


@torch.no_grad()
def calibrate_tables(pipeline, images, transform: BatchTransform, device: torch.device,
                     limit: int = TABLE_IMAGES) -> dict[str, Any]:
    """Set an entropy code's tables from its code on the first ``limit`` of ``images`` (a dataset,
    or a run.features.FeatureCache of head features); an empty record for any other codec."""
    prior = find_prior(pipeline.codec)
    if prior is None or images is None or len(images) == 0:
        return {}
    was_training = pipeline.training
    pipeline.eval()
    n = min(limit, len(images))
    hist = torch.zeros(prior.channels, 2 * prior.support + 1, dtype=torch.float64)
    try:
        if isinstance(images, FeatureCache):  # a feature cache: the head's features are already computed
            for start in range(0, n, 256):
                f, _ = images.batch(torch.arange(start, min(start + 256, n)), device)
                hist += prior.histogram(pipeline.codec.encoder(f, 0.0))
        else:
            subset = torch.utils.data.Subset(images, range(n))
            for x, _ in make_loader(subset, 256, shuffle=False, seed=0):
                hist += prior.histogram(pipeline.codec.encoder(pipeline.head(transform(x).to(device)), 0.0))
    finally:  # the caller's mode back, also when a batch fails
        pipeline.train(was_training)
    positions = hist.sum(1, keepdim=True) / n  # symbols per image per channel
    density = prior.pmf().cpu()
    update_tables(pipeline.codec, hist + positions * density)
    counts = prior.counts.double().cpu() / 2.0**PRECISION
    bits = float(-(hist * counts.log2()).sum() / n)  # what the tables spend on these images' code
    return {"source": "histogram of the trained code on the training images", "images": n,
            "bits_per_image_estimate": bits,
            "density_bits_per_image_estimate": float(-(hist * density.clamp_min(1e-300).log2()).sum() / n)}
