"""Separate source and channel coding at its ideal: a channel code at capacity for a digital code.

The digital code's bits (an entropy-coded stream, or a fixed-length code) cross the channel under
an ideal channel code, designed for one channel quality and used at another:

- capacity C in bits per real channel symbol: AWGN ``0.5 log2(1 + SNR)`` (SNR = P / sigma^2 as a
  ratio; with sigma from the analog code's PSNR convention, ``10^(-dB / 20)``, and average power
  P = 1, so the digital code is allowed at least the analog code's power, whose peak amplitude is 1);
  BEC ``1 - p``; BSC ``1 - h2(p)`` with the binary entropy h2;
- channel uses per image = bits / C(design): the real symbols the code occupies;
- outage: the code is decodable exactly when the true quality is at least the design's (the rate
  R = C(design) is then below C(true)); below it the image's bits are lost (the cliff). The edge
  then has nothing to decode: its best guess is a prior class, scored as chance, 1 / classes;
- Rayleigh block fading (one gain per image, |h|^2 ~ Exp(1), mean SNR S): outage probability
  P[S |h|^2 < SNR_design] = 1 - exp(-SNR_design / S).

The expected top-1 at a condition is (1 - P_out) top1_error_free + P_out / classes.
"""

from __future__ import annotations

import math

from ..errors import ChannelError


def _ratio(snr_db: float) -> float:
    if not math.isfinite(snr_db) and snr_db != math.inf:
        raise ChannelError(f"SNR {snr_db} dB must be a number or inf")
    return math.inf if snr_db == math.inf else 10.0 ** (snr_db / 10.0)


def _prob(p: float) -> float:
    if not 0.0 <= p <= 0.5:
        raise ChannelError(f"bit probability {p} is out of range: valid is 0 to 0.5")
    return float(p)


def h2(p: float) -> float:
    """Binary entropy in bits."""
    return 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def capacity_awgn(snr_db: float) -> float:
    """Bits per real symbol: 0.5 log2(1 + SNR)."""
    return 0.5 * math.log2(1.0 + _ratio(snr_db)) if snr_db != math.inf else math.inf


def capacity_bec(p: float) -> float:
    """Bits per binary channel use of a BEC with erasure probability p: 1 - p."""
    return 1.0 - _prob(p)


def capacity_bsc(p: float) -> float:
    """Bits per binary channel use of a BSC with flip probability p: 1 - h2(p)."""
    return 1.0 - h2(_prob(p))


CAPACITIES = {"awgn": capacity_awgn, "bec": capacity_bec, "bsc": capacity_bsc}


def capacity(channel: str, condition: float) -> float:
    """C of ``channel`` ("awgn": condition in dB; "bec", "bsc": a probability)."""
    fn = CAPACITIES.get(channel)
    if fn is None:
        raise ChannelError(f"no capacity for channel {channel!r}; valid: {', '.join(CAPACITIES)}")
    return fn(condition)


def channel_uses(bits: float, channel: str, design: float) -> float:
    """Channel uses per image of ``bits`` under an ideal code designed for ``design``: bits / C."""
    c = capacity(channel, design)
    if c <= 0:
        raise ChannelError(f"capacity at {design} is 0: no code is designed for it")
    return bits / c


def outage(channel: str, design: float, true: float) -> bool:
    """The ideal code designed for ``design`` fails at ``true`` (a worse channel: C(true) < C(design))."""
    return capacity(channel, true) < capacity(channel, design)


def rayleigh_outage(design_snr_db: float, mean_snr_db: float) -> float:
    """P[outage] under Rayleigh block fading of mean SNR S: 1 - exp(-SNR_design / S)."""
    design, mean = _ratio(design_snr_db), _ratio(mean_snr_db)
    if mean == math.inf:
        return 0.0
    return -math.expm1(-design / mean)


def expected_top1(top1: float, classes: int, p_outage: float) -> float:
    """Top-1 when a fraction ``p_outage`` of the images is lost and guessed at chance."""
    if not 0.0 <= p_outage <= 1.0:
        raise ChannelError(f"outage probability {p_outage} must be in [0, 1]")
    return (1.0 - p_outage) * top1 + p_outage / classes
