"""Simulated communication channels: non-trainable layers between the encoder and the decoder.

Data flow (tensor names as in :mod:`bnpp_cli.codec.model`)::

    z (N, ...) in [0, 1]  --channel(param)-->  z_hat (N, ...)

``param`` is the channel's *native* parameter: the noise standard deviation ``sigma`` for the
analog channels, the bit error probability ``p`` for the digital ones. Users speak in *conditions*,
named by the channel (``condition_name``: ``snr_db`` in dB for the analog channels, ``erasure`` for
bec and ``flip`` for bsc, probabilities); ``param_from_condition`` converts and validates. A float ``param`` applies to the whole batch, an ``(N,)`` tensor applies per sample.

Channels (BottleNet++, Shao & Zhang 2020, plus the common Deep JSCC conventions):

- ``none``: z_hat = z.
- ``awgn``: y = z + sigma n, n ~ N(0, 1) per real symbol; PSNR = 10 log10(1 / sigma^2) dB
  (peak amplitude 1: the encoder's sigmoid bounds z to (0, 1)). 20 dB <-> sigma = 0.1.
- ``awgn-power``: Deep JSCC average-power normalisation z' = z sqrt(k) / ||z|| (mean power 1),
  y = z' + sigma n, SNR = 10 log10(1 / sigma^2) dB; the receiver multiplies by ||z|| / sqrt(k)
  (one scalar of side information per sample, assumed known at the receiver).
- ``rayleigh``: slow (block) fading, one amplitude h = |CN(0, 1)| per sample (E[h^2] = 1),
  y = h z + sigma n with the ``awgn`` PSNR convention; the receiver knows h and equalises by
  zero-forcing, z_hat = y / h.
- ``bec``: n-bit quantisation q = round((2^n - 1) clamp(z, 0, 1)), each bit erased independently
  with probability p, an erased bit decoded as its expected value (half its weight),
  z_hat = value / (2^n - 1).
- ``bsc``: the same quantisation, each bit flipped independently with probability p.
- ``ofdm`` (link.phy) and ``ldpc`` (link.ldpc; all of them registered in link.registry): real radio links through Sionna PHY, an optional
  extra: OFDM with pilots over 3GPP TDL fading for analog codes; 5G NR LDPC + CRC + QAM for
  digital ones, a failed block an erasure. Their condition is the SNR Es/N0 in dB.

Digital channels pass gradients straight through (identity backward). Every channel counts
*real* channel symbols: one real symbol per encoded element (``symbols_per_element`` = 1.0), which
carries ``bits`` bits on the digital channels. Randomness comes from an optional
``torch.Generator`` so evaluation is reproducible; train and eval mode behave the same.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import ChannelError
from .quantize import bit_planes, dequantize, expected_levels, quantize, straight_through  # noqa: F401 (re-exported)

Condition = Union[tuple[float, float], float, None]
Param = Union[float, Tensor]

PSNR_RANGE_DB = (-10.0, 60.0)  # beyond 60 dB the noise is below float32 resolution of z
PROB_RANGE = (0.0, 0.5)  # p > 0.5 carries as much information as 1 - p: never meaningful
BITS_RANGE = (1, 16)  # 16-bit levels are still exact in float32


def _draw(kind: str, shape: Sequence[int], generator: torch.Generator | None,
          device: torch.device | str | None, dtype: torch.dtype = torch.float32) -> Tensor:
    """torch.rand / torch.randn on the generator's device, then moved to ``device``."""
    fn = torch.rand if kind == "rand" else torch.randn
    source = generator.device if generator is not None else device
    return fn(tuple(shape), generator=generator, device=source, dtype=dtype).to(device)


class Channel(nn.Module):
    """Common interface: a parameter-free layer ``forward(z, param, generator) -> z_hat``."""

    name: str = ""
    condition_name: str | None = None  # the condition's name (link.config, results): "snr_db" | "erasure" | "flip" | None
    condition_unit: str = ""  # "dB" for analog channels; probabilities have no unit
    condition_axis: str = ""  # the condition's axis label in plots
    default_eval_conditions: tuple[float, ...] = ()  # what `bnpp eval` reports when given none
    digital: bool = False
    bits: int | None = None  # bits per symbol on digital channels, None on analog ones
    default_train_condition: Condition = None  # used when the constructor gets None
    per_symbol: bool = True  # a symbol's noise does not depend on the others (a code's prefix may be sent alone)

    @classmethod
    def create(cls, train_condition: Condition = None, bits: int = 8, phy=None) -> "Channel":
        """The registry's one way to build any channel (link.registry): each kind takes what it uses."""
        return cls(train_condition)

    def __init__(self, train_condition: Condition = None):
        super().__init__()
        if train_condition is None:
            train_condition = self.default_train_condition
        self.train_condition = self._normalise_condition(train_condition)
        a, b = (self.param_from_condition(c) for c in self.train_condition)
        self.param_range = (min(a, b), max(a, b))  # native units, sample_param draws U[lo, hi)

    # -- conditions (user units) <-> native parameters -------------------------------------
    def _normalise_condition(self, cond: Condition) -> tuple[float, float]:
        return (0.0, 0.0)

    def param_from_condition(self, value: float) -> float:
        """User units -> native parameter (validated)."""
        return 0.0

    def condition_from_param(self, param: float) -> float:
        """Native parameter -> user units."""
        return math.inf

    def _check_param(self, param: float) -> None:
        """Validate a native parameter given as a Python number."""

    # -- sampling ----------------------------------------------------------------------------
    def sample_param(self, batch_size: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, per_sample: bool = False) -> Tensor:
        """Draw native parameters U[lo, hi) from the training range, shape (N,), float32.

        One value per mini-batch repeated N times (BottleNet++), or one per sample."""
        if batch_size < 1:
            raise ChannelError(f"batch_size must be >= 1, got {batch_size}")
        lo, hi = self.param_range
        u = _draw("rand", (batch_size if per_sample else 1,), generator, device)
        return (lo + (hi - lo) * u).expand(batch_size).contiguous()

    def _per_sample(self, param: Param, z: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """float or (N,) parameter -> (N, 1, ..., 1) tensor on z's device."""
        if not isinstance(param, Tensor):
            self._check_param(float(param))
        p = torch.as_tensor(param, dtype=dtype or z.dtype, device=z.device)
        if p.dim() == 0:
            p = p.expand(z.shape[0])
        elif tuple(p.shape) != (z.shape[0],):
            raise ChannelError(f"channel parameter of shape {tuple(p.shape)} does not match the "
                               f"batch of {z.shape[0]}: pass a float or an (N,) tensor")
        return p.reshape(-1, *([1] * (z.dim() - 1)))

    # -- accounting --------------------------------------------------------------------------
    @property
    def symbols_per_element(self) -> float:
        """Real channel symbols per encoded element: 1.0 on every channel (real, not complex)."""
        return 1.0

    @property
    def bits_per_element(self) -> int | None:
        """Bits per encoded element on digital channels, None on analog ones."""
        return self.bits if self.digital else None

    def describe(self) -> str:
        """One-line human definition of the channel and its condition."""
        raise NotImplementedError

    def format_condition(self, value: float) -> str:
        """A condition in words with its unit: "PSNR 20 dB", "p = 0.01"."""
        return "noiseless"

    def format_train_condition(self) -> str:
        """The training range in words, e.g. "PSNR 10 dB to noiseless", "p 0 to 0.01"."""
        return "noiseless"

    def eval_row(self, param: float) -> dict:
        """What `bnpp eval` reports beside top-1 at a condition (the radio links: channel uses, block
        error rate); nothing here."""
        return {}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, train_condition={self.train_condition}"


class NoiselessChannel(Channel):
    """Identity: z_hat = z (the parameter is ignored)."""

    name = "none"

    def forward(self, z: Tensor, param: Param = 0.0,
                generator: torch.Generator | None = None) -> Tensor:
        return z

    def describe(self) -> str:
        return "noiseless: z_hat = z"


class AnalogChannel(Channel):
    """Shared PSNR / SNR handling: condition in dB, native parameter sigma = 10^(-dB / 20)."""

    condition_name = "snr_db"
    condition_unit = "dB"
    condition_axis = "PSNR (dB, peak amplitude 1)"
    default_eval_conditions = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)  # dB: BottleNet++'s Fig. 3 range
    default_train_condition: Condition = 20.0  # BottleNet++ headline: sigma < 0.1, PSNR >= 20 dB

    def _normalise_condition(self, cond: Condition) -> tuple[float, float]:
        if isinstance(cond, (int, float)):
            return (float(cond), math.inf)  # "from cond dB to noiseless"
        if isinstance(cond, Sequence) and not isinstance(cond, str) and len(cond) == 2:
            return tuple(sorted(float(c) for c in cond))  # type: ignore[return-value]
        raise ChannelError(f"train condition {cond!r} for {self.name} must be a dB value or a "
                           f"(low_db, high_db) pair")

    def param_from_condition(self, value: float) -> float:
        value = float(value)
        if value == math.inf:
            return 0.0
        lo, hi = PSNR_RANGE_DB
        if not (math.isfinite(value) and lo <= value <= hi):
            raise ChannelError(f"SNR {value} dB is out of range for {self.name}: valid is "
                               f"{lo:g} to {hi:g} dB, or inf (noiseless)")
        return 10.0 ** (-value / 20.0)

    def condition_from_param(self, param: float) -> float:
        sigma = float(param)
        return math.inf if sigma == 0.0 else -20.0 * math.log10(sigma)

    def format_condition(self, value: float) -> str:
        return "noiseless" if value == math.inf else f"PSNR {value:g} dB"

    def format_train_condition(self) -> str:
        lo, hi = self.train_condition
        return f"PSNR {lo:g} dB to {'noiseless' if hi == math.inf else f'{hi:g} dB'}"

    def _check_param(self, param: float) -> None:
        if not (math.isfinite(param) and param >= 0.0):
            raise ChannelError(f"noise std sigma {param} is invalid for {self.name}: "
                               f"valid is a finite sigma >= 0")


class AWGNChannel(AnalogChannel):
    """y = z + sigma n, n ~ N(0, 1); PSNR = 10 log10(1 / sigma^2) with peak amplitude 1."""

    name = "awgn"

    def forward(self, z: Tensor, param: Param, generator: torch.Generator | None = None) -> Tensor:
        sigma = self._per_sample(param, z)
        return z + sigma * _draw("randn", z.shape, generator, z.device, z.dtype)

    def describe(self) -> str:
        return ("AWGN, PSNR = 10 log10(1/sigma^2) dB with peak amplitude 1 "
                "(y = z + sigma n, one real symbol per element)")


class PowerAWGNChannel(AnalogChannel):
    """Deep JSCC AWGN: per-sample power normalisation, SNR = 10 log10(1 / sigma^2).

    z' = z sqrt(k) / ||z|| (k elements per sample, mean power P = 1), y = z' + sigma n, and the
    receiver undoes the scale, z_hat = y ||z|| / sqrt(k), so the decoder sees the input's scale.
    ||z|| is one scalar of side information per sample, assumed known at the receiver."""

    name = "awgn-power"
    per_symbol = False  # the power scale is the whole code's

    def normalize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Returns (z', scale) with z' = z * scale of mean power 1; scale is (N, 1, ..., 1)."""
        k = z[0].numel()
        norm = z.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (math.sqrt(k) / norm).reshape(-1, *([1] * (z.dim() - 1)))
        return z * scale, scale

    def forward(self, z: Tensor, param: Param, generator: torch.Generator | None = None) -> Tensor:
        sigma = self._per_sample(param, z)
        z_norm, scale = self.normalize(z)
        y = z_norm + sigma * _draw("randn", z.shape, generator, z.device, z.dtype)
        return y / scale

    def describe(self) -> str:
        return ("AWGN with per-sample average-power normalisation (Deep JSCC), "
                "SNR = 10 log10(P/sigma^2) dB with P = 1; the power scale is side information")


class RayleighChannel(AnalogChannel):
    """Block fading: one h = |CN(0, 1)| per sample (E[h^2] = 1), y = h z + sigma n, PSNR as awgn;
    the receiver knows h and equalises by zero-forcing, z_hat = y / h."""

    name = "rayleigh"

    def sample_gain(self, batch_size: int, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> Tensor:
        """Amplitudes h = |a + jb| with a, b ~ N(0, 1/2): shape (N,), E[h^2] = 1."""
        ab = _draw("randn", (batch_size, 2), generator, device)
        return (ab.pow(2).sum(1) / 2.0).sqrt()

    def forward(self, z: Tensor, param: Param, generator: torch.Generator | None = None) -> Tensor:
        sigma = self._per_sample(param, z)
        h = self.sample_gain(z.shape[0], generator, z.device).to(z.dtype)
        h = h.clamp_min(1e-6).reshape(-1, *([1] * (z.dim() - 1)))  # avoids 0-division only
        y = h * z + sigma * _draw("randn", z.shape, generator, z.device, z.dtype)
        return y / h

    def describe(self) -> str:
        return ("block Rayleigh fading, h = |CN(0,1)| per sample (E[h^2] = 1), y = h z + sigma n, "
                "PSNR = 10 log10(1/sigma^2) dB, zero-forcing z_hat = y/h with h known at the "
                "receiver")


class DigitalChannel(Channel):
    """Shared n-bit quantisation, probability condition and straight-through gradient."""

    digital = True
    condition_axis = "bit error probability p"
    default_eval_conditions = (0.0, 0.001, 0.01, 0.05, 0.1)  # around BottleNet++'s p = 0.01
    default_train_condition: Condition = 0.01  # BottleNet++ headline: p < 0.01

    @classmethod
    def create(cls, train_condition: Condition = None, bits: int = 8, phy=None) -> "Channel":
        return cls(train_condition, bits=bits)

    def __init__(self, train_condition: Condition = None, bits: int = 8):
        lo, hi = BITS_RANGE
        if not (isinstance(bits, int) and lo <= bits <= hi):
            raise ChannelError(f"bits {bits!r} is out of range for {self.name}: "
                               f"valid is {lo} to {hi}")
        self.bits = bits
        super().__init__(train_condition)

    def _normalise_condition(self, cond: Condition) -> tuple[float, float]:
        if isinstance(cond, (int, float)):
            return (0.0, float(cond))  # p ~ U[0, p_max)
        if isinstance(cond, Sequence) and not isinstance(cond, str) and len(cond) == 2:
            return tuple(sorted(float(c) for c in cond))  # type: ignore[return-value]
        raise ChannelError(f"train condition {cond!r} for {self.name} must be a probability or "
                           f"a (low, high) pair")

    def param_from_condition(self, value: float) -> float:
        value = float(value)
        lo, hi = PROB_RANGE
        if not (lo <= value <= hi):
            raise ChannelError(f"{self.condition_name} probability {value} is out of range for "
                               f"{self.name}: valid is {lo:g} to {hi:g}")
        return value

    def condition_from_param(self, param: float) -> float:
        return float(param)

    def format_condition(self, value: float) -> str:
        return f"p = {value:g}"

    def format_train_condition(self) -> str:
        lo, hi = self.train_condition
        return f"p {lo:g} to {hi:g}"

    def _check_param(self, param: float) -> None:
        if not (0.0 <= param <= 1.0):
            raise ChannelError(f"bit probability {param} is invalid for {self.name}: "
                               f"valid is 0 to 1")

    def _bit_mask(self, levels: Tensor, p: Param, generator: torch.Generator | None) -> Tensor:
        """Independent Bernoulli(p) events per bit, shape (..., bits); p per sample."""
        p = self._per_sample(p, levels, torch.float32).unsqueeze(-1)
        return _draw("rand", (*levels.shape, self.bits), generator, levels.device) < p

    def _corrupt(self, levels: Tensor, param: Param, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def forward(self, z: Tensor, param: Param, generator: torch.Generator | None = None) -> Tensor:
        levels = quantize(z, self.bits)
        x_hat = dequantize(self._corrupt(levels, param, generator), self.bits, z.dtype)
        return straight_through(z, x_hat)


class BinaryErasureChannel(DigitalChannel):
    """BEC on n-bit symbols; an erased bit is decoded as its expected value (half its weight)."""

    name = "bec"
    condition_name = "erasure"

    def erase_bits(self, levels: Tensor, p: Param, generator: torch.Generator | None = None
                   ) -> tuple[Tensor, Tensor]:
        """Returns (expected levels, float32; erased mask, bool (..., bits))."""
        erased = self._bit_mask(levels, p, generator)
        return expected_levels(levels, erased, self.bits), erased

    def _corrupt(self, levels: Tensor, param: Param, generator: torch.Generator | None) -> Tensor:
        return self.erase_bits(levels, param, generator)[0]

    def describe(self) -> str:
        n = self.bits
        return (f"binary erasure channel on {n}-bit symbols (q = round({2**n - 1} z)), each bit "
                f"erased with probability p, an erased bit decoded as its expected value")


class BinarySymmetricChannel(DigitalChannel):
    """BSC on n-bit symbols: each bit flipped independently with probability p."""

    name = "bsc"
    condition_name = "flip"

    def flip_bits(self, levels: Tensor, p: Param, generator: torch.Generator | None = None
                  ) -> tuple[Tensor, Tensor]:
        """Returns (received levels, int64; flipped mask, bool (..., bits))."""
        flipped = self._bit_mask(levels, p, generator)
        planes = bit_planes(levels, self.bits) ^ flipped.to(torch.int64)
        shifts = torch.arange(self.bits, device=levels.device, dtype=torch.int64)
        return (planes << shifts).sum(-1), flipped

    def _corrupt(self, levels: Tensor, param: Param, generator: torch.Generator | None) -> Tensor:
        return self.flip_bits(levels, param, generator)[0]

    def describe(self) -> str:
        n = self.bits
        return (f"binary symmetric channel on {n}-bit symbols (q = round({2**n - 1} z)), each bit "
                f"flipped with probability p")
