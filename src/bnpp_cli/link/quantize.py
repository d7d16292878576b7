"""n-bit quantisation of the code and its bit planes, shared by the digital channels and the wire."""

from __future__ import annotations

import torch
from torch import Tensor


def quantize(z: Tensor, bits: int = 8) -> Tensor:
    """Levels q = round((2^bits - 1) clamp(z, 0, 1)) as an int64 tensor (no 256-wrap)."""
    return torch.round(z.detach().clamp(0.0, 1.0) * (2**bits - 1)).to(torch.int64)


def dequantize(levels: Tensor, bits: int = 8, dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`quantize`: levels / (2^bits - 1), levels may be fractional."""
    return levels.to(dtype) / (2**bits - 1)


def bit_planes(levels: Tensor, bits: int) -> Tensor:
    """(...,) integer levels -> (..., bits) bits in {0, 1}, least significant bit first."""
    shifts = torch.arange(bits, device=levels.device, dtype=torch.int64)
    return (levels.to(torch.int64).unsqueeze(-1) >> shifts) & 1


def expected_levels(levels: Tensor, erased: Tensor, bits: int) -> Tensor:
    """Decode levels whose bits marked in ``erased`` (..., bits) are lost: an erased bit counts
    as its expected value, half its weight. Returns float32 levels (may be x.5)."""
    weights = 2.0 ** torch.arange(bits, device=levels.device, dtype=torch.float32)
    planes = bit_planes(levels, bits).to(torch.float32)
    return (torch.where(erased, torch.full_like(planes, 0.5), planes) * weights).sum(-1)


def straight_through(z: Tensor, x_hat: Tensor) -> Tensor:
    """Forward value exactly x_hat, gradient identity w.r.t. z (z + (x_hat - z).detach())."""
    return x_hat.detach() + (z - z.detach())
