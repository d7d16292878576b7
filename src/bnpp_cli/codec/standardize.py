"""Per-channel standardisation of a signed feature around the codec, measured on training images.

A transformer's residual stream is signed and some of its channels sit far from zero: on the shared
CIFAR-10 ViT (blocks.2) the patch tokens' per-channel means reach 18.8 and the class token's 21.6,
against a median per-channel std of 2.1. The codec's decoder must output those offsets through a
conv trained from zero with Adam, which moves a weight by about lr per step: a quick fit never gets
there. So the encoder sees (f - mean) / std per channel and the decoder returns y * std + mean,
with mean and std of each channel (patch grid positions and prefix tokens apart) measured on the
first training batch the codec sees and kept as buffers of both halves (they travel in the run's
codec weights and in each deploy half; benchmarks/README.md, rate_accuracy_tokens.py, has the measurements).

    Standardize(c)    first layer of the encoder body: (N, c + extra, H, W) -> the first c channels
                      standardised, the extra ones (the condition plane) passed through
    Destandardize(c)  last layer of the decoder body: (N, c, H, W) -> y * std + mean

Before calibration both are the identity; ``Standardize`` calibrates itself and its partner on its
first training forward, and never again (a ``calibrated`` buffer says so, so a loaded or resumed
codec keeps its statistics).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MIN_STD = 1e-3  # relative to the mean std of the feature: a constant channel is not blown up


class Destandardize(nn.Module):
    """y (N, c, H, W) -> y * std + mean per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def forward(self, y: Tensor) -> Tensor:
        return y * self.std.view(1, -1, 1, 1) + self.mean.view(1, -1, 1, 1)


class Standardize(nn.Module):
    """(N, c + extra, H, W) -> the first c channels as (x - mean) / std; calibrated on its first
    training batch, when it also sets its partner ``Destandardize``."""

    def __init__(self, channels: int, partner: Destandardize):
        super().__init__()
        self.channels = channels
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))
        object.__setattr__(self, "_partner", partner)  # not a submodule: the decoder owns it

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> None:
        """Per-channel mean and std of x (N, c, H, W) over N, H and W, into both modules."""
        flat = x.detach().float().transpose(0, 1).reshape(self.channels, -1)
        mean = flat.mean(1)
        std = flat.std(1, unbiased=False) if flat.shape[1] > 1 else torch.ones_like(mean)
        std = std.clamp_min(MIN_STD * float(std.mean().clamp_min(1e-12)))
        for module in (self, self._partner):
            module.mean.copy_(mean)
            module.std.copy_(std)
        self.calibrated.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        f, extra = x[:, :self.channels], x[:, self.channels:]
        if self.training and not bool(self.calibrated):
            self.calibrate(f)
        f = (f - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
        return torch.cat([f, extra], dim=1) if extra.shape[1] else f


def standardizer_pair(channels: int) -> tuple[Standardize, Destandardize]:
    """(encoder's first layer, decoder's last layer) sharing one calibration."""
    out = Destandardize(channels)
    return Standardize(channels, out), out
