"""Variable-length code: one codec whose number of transmitted symbols follows the channel condition.

The code z (N, *code_shape) is read as an ordered vector of K = prod(code_shape) real symbols, in C
order (for a (C', H', W') map: code channel 0's H' W' symbols first). Every prefix of k of them is
a usable code ("ordered representations" / nested dropout, Rippel et al., ICML 2014; the
tail-dropping of variable-length feature coding, Shao, Mao & Zhang):

    training:  each image keeps a random prefix k from ``allowed_lengths(K)`` (uniform), the rest
               zeroed after the channel, before the decoder (nothing was sent there)
    eval:      k = the length table's entry for the condition (``LengthTable.lookup``); the same
               masking, so `bnpp eval` measures what the deployed halves do
    deploy:    the device sends z.flatten(1)[:, :k], a frame of shape (N, k) (link.wire: the shape is
               in the frame); the edge runs the air interface over those k symbols and pads zeros
               back to K (``pad_prefix``) before the decoder; frames of different k batch together

The noise of the per-symbol channels (awgn, rayleigh, bec, bsc) on a kept symbol does not depend on
the others, so masking after the channel equals sending only the prefix. ``awgn-power`` normalises
the power over the whole code (its scale would differ with k): refused (``check_channel``).

The table (``LengthTable``, buffers of the encoder: it travels in codec.safetensors and the device
half) maps channel parameters to lengths: for a parameter p the entry of the smallest grid
parameter >= p (the nearest grid condition at least as bad), K beyond the worst grid point. It is
chosen on validation images after the fit (codec.calibrate.calibrate_lengths): at each grid condition
the smallest allowed k whose top-1 is within ``LENGTH_TOLERANCE`` of the full code's at that
condition, made monotone (a worse condition never gets fewer symbols). An uncalibrated table sends K.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CodecError
from ..link.receiver import simulate

LENGTH_LEVELS = 16  # at most this many allowed lengths: fine enough to follow the channel, few enough to
# train every prefix often (each is kept by 1 / 16 of the images)
LENGTH_TOLERANCE = 0.005  # a prefix may lose up to 0.5 points of validation top-1 against the full code
TABLE_ENTRIES = 32  # fixed size of the stored table (state dicts load strictly); unused entries are +inf


def allowed_lengths(symbols: int) -> list[int]:
    """The prefix lengths a code of K symbols trains and sends: multiples of ceil(K / 16), and K."""
    if symbols < 1:
        raise CodecError(f"a code of {symbols} symbols has no prefix")
    step = math.ceil(symbols / LENGTH_LEVELS)
    return sorted({min(symbols, step * i) for i in range(1, math.ceil(symbols / step) + 1)})


def prefix_mask(z: Tensor, lengths: Tensor) -> Tensor:
    """z (N, ...) with every symbol past each image's length (N,) set to 0 (C order)."""
    n, k = z.shape[0], math.prod(z.shape[1:])
    keep = torch.arange(k, device=z.device) < lengths.to(z.device).reshape(n, 1)
    return z * keep.reshape(z.shape).to(z.dtype)


def take_prefix(z: Tensor, length: int) -> Tensor:
    """The first ``length`` symbols of each image's code: (N, length), what the device sends."""
    k = math.prod(z.shape[1:])
    if not 1 <= length <= k:
        raise CodecError(f"prefix length {length} is out of range for a code of {k} symbols (valid 1 to {k})")
    return z.flatten(1)[:, :length]


def pad_prefix(z: Tensor, code_shape: Sequence[int]) -> Tensor:
    """A received prefix (N, k) -> the full code (N, *code_shape), zeros past k; a full code passes."""
    code_shape = tuple(code_shape)
    if tuple(z.shape[1:]) == code_shape:
        return z
    total = math.prod(code_shape)
    if z.dim() != 2 or not 1 <= z.shape[1] <= total:
        raise CodecError(f"code of shape {tuple(z.shape)} is neither a prefix (N, k <= {total}) nor the "
                         f"full code (N, {', '.join(map(str, code_shape))})")
    return F.pad(z, (0, total - z.shape[1])).reshape(z.shape[0], *code_shape)


def air_prefix(channel, z: Tensor, code_shape: Sequence[int], param, seed: int = 0, first_index: int = 0) -> Tensor:
    """A received prefix (N, k) over the simulated air interface (link.receiver.simulate), with the
    noise drawn for the whole code shape and the k sent symbols kept: the same draws as the pipeline
    (channel over z, then ``prefix_mask``), so the deployed halves equal it exactly."""
    k = z.shape[1] if z.dim() == 2 else math.prod(z.shape[1:])
    return simulate(channel, pad_prefix(z, code_shape), param, seed, first_index).flatten(1)[:, :k].reshape(
        z.shape)


def sample_lengths(n: int, symbols: int, device: torch.device | str | None = None) -> Tensor:
    """One random allowed prefix length per image (N,), uniform over ``allowed_lengths`` (torch's
    global generator: fit seeds it per epoch and checkpoints its state)."""
    allowed = torch.tensor(allowed_lengths(symbols), dtype=torch.int64)
    return allowed[torch.randint(len(allowed), (n,))].to(device)


def check_channel(channel) -> None:
    """CodecError for a channel whose noise on a symbol depends on the whole code (awgn-power)."""
    if not getattr(channel, "per_symbol", True):
        raise CodecError(f"a variable-length code needs a channel whose noise on each symbol does not depend "
                         f"on the others; '{channel.name}' normalises the power over the whole code",
                         hint="use --channel awgn, rayleigh, bec or bsc")


class LengthTable(nn.Module):
    """Channel parameter -> prefix length, as buffers (``params`` ascending, +inf unused; ``symbols``)."""

    def __init__(self, symbols: int):
        super().__init__()
        self.total = symbols
        self.register_buffer("params", torch.full((TABLE_ENTRIES,), math.inf, dtype=torch.float32))
        self.register_buffer("symbols", torch.full((TABLE_ENTRIES,), symbols, dtype=torch.int64))

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.params).any())

    def entries(self) -> list[tuple[float, int]]:
        """[(param, length)] of the used entries, best condition (smallest param) first."""
        used = torch.isfinite(self.params)
        return [(float(p), int(k)) for p, k in zip(self.params[used].tolist(), self.symbols[used].tolist())]

    def set(self, entries: Sequence[tuple[float, int]]) -> None:
        """Replace the table by [(param, length)]; lengths in 1..K, at most TABLE_ENTRIES entries."""
        entries = sorted((float(p), int(k)) for p, k in entries)
        if len(entries) > TABLE_ENTRIES:
            raise CodecError(f"{len(entries)} length-table entries; the table holds at most {TABLE_ENTRIES}")
        bad = [k for _, k in entries if not 1 <= k <= self.total]
        if bad or any(not math.isfinite(p) or p < 0 for p, _ in entries):
            raise CodecError(f"length-table entries {entries} must have finite params >= 0 and lengths "
                             f"1 to {self.total}")
        self.params.fill_(math.inf)
        self.symbols.fill_(self.total)
        for i, (p, k) in enumerate(entries):
            self.params[i], self.symbols[i] = p, k

    def lookup(self, param, n: int | None = None) -> Tensor:
        """Lengths (N,) for a float or (N,) parameter: the entry of the smallest grid param >= it."""
        p = torch.as_tensor(param, dtype=torch.float32, device=self.params.device).reshape(-1)
        if n is not None and p.numel() == 1:
            p = p.expand(n)
        idx = torch.searchsorted(self.params, p.contiguous(), side="left")
        padded = torch.cat([self.symbols, self.symbols.new_tensor([self.total])])
        return padded[idx]

    def length(self, param: float) -> int:
        """The prefix length for one condition's parameter."""
        return int(self.lookup(float(param))[0])
