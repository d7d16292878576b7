"""Analog codes over a real radio link: OFDM with pilots through a 3GPP TDL channel (Sionna PHY).

Data flow (tensor names as in :mod:`bnpp_cli.codec.model`)::

    z (N, ...) real, k per image --pair--> c = (z_0 + j z_1, z_2 + j z_3, ...) ceil(k/2) complex
      --power: c' = c sqrt(ceil(k/2)) / ||z|| (mean |c'|^2 = 1 over the code's symbols)-->
      --ResourceGridMapper: S = ceil(ceil(k/2) / D) slots, D data REs each, pilots on their symbols-->
      --TDL (TR 38.901: profile, delay spread, UE speed) or none (AWGN only), y = H x + n,
        n ~ CN(0, N0) per resource element-->
      --LS estimate at the pilots, linearly interpolated (or perfect CSI) --> LMMSE equaliser-->
      --unpair, undo the power scale--> z_hat (N, ...)

SNR = 10 log10(Es / N0) dB per resource element, Es = 1 (data and pilots alike, the channel's mean
gain E|h|^2 = 1): N0 = 10^(-SNR / 10). The native parameter is sigma = 10^(-SNR / 20) as on the
other analog channels, so N0 = sigma^2 (sigma^2 / 2 per real dimension). Like ``awgn-power``, the
receiver undoes the per-image power scale ||z|| / sqrt(ceil(k/2)) (one scalar of side information).

One channel use is one resource element (one subcarrier of one OFDM symbol, a complex symbol).
An image occupies S whole slots of ``subcarriers x ofdm_symbols`` resource elements: its pilots and
the unused tail of its last slot are counted, the cyclic prefix is not. Each slot of an image is an
independent TDL draw (Doppler acts within the slot). A zero parameter is a noise-free link; the
fading, the estimation and the equaliser still apply.

Sionna (``pip install 'bnpp[phy]'``) is imported when the channel is first built, never by
``import bnpp_cli``; every block used here is Sionna's own (``ResourceGrid``, ``ResourceGridMapper``,
``TDL``, ``GenerateOFDMChannel``, ``ApplyOFDMChannel``, ``LSChannelEstimator``, ``LMMSEEqualizer``),
except the noise, drawn from the caller's ``torch.Generator`` so that a seed fixes the whole link.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import ChannelError
from .channels import AnalogChannel, Condition, Param, _draw

INSTALL = "pip install 'bnpp[phy]'"
TDL_PROFILES = ("A", "B", "C", "D", "E", "A10", "A30", "B100", "C60", "C300", "D10", "D30")  # TR 38.901, TS 38.101-4
FIXED_DELAY_PROFILES = ("A10", "A30", "B100", "C60", "C300", "D10", "D30")  # the delay spread is the profile's
CSI_MODES = ("ls", "perfect")
PILOT_SEED = 0  # the pilots are fixed QPSK symbols, the same at every transmitter and receiver


def require_sionna(channel: str) -> Any:
    """sionna.phy, or a ChannelError in one line naming the install command."""
    try:
        import sionna.phy
    except ImportError:
        raise ChannelError(f"channel '{channel}' needs Sionna PHY, which is not installed: {INSTALL}") from None
    return sionna.phy


@dataclass
class PhyConfig:
    """The radio link of the Sionna channels (``ofdm``, and ``ldpc`` over ``link`` ofdm or awgn).

    Attributes:
        profile: TDL power delay profile: A to E (TR 38.901, scaled by ``delay_spread_ns``), A10 ...
            D30 (TS 38.101-4, fixed delays), or "none": no fading (AWGN on every resource element);
            default "C", an NLOS profile.
        delay_spread_ns: RMS delay spread of the scalable profiles, ns; default 300 (TR 38.901's
            "nominal" urban macro).
        speed_mps: UE speed, m/s (the Doppler spread through ``carrier_ghz``); default 3 (walking).
        carrier_ghz: carrier frequency, GHz; default 3.5 (5G NR band n78).
        subcarrier_spacing_khz: kHz; default 30 (NR numerology 1).
        subcarriers: subcarriers of a slot's grid; default 12 (one resource block).
        ofdm_symbols: OFDM symbols of a slot; default 14 (one NR slot).
        pilot_symbols: the OFDM symbols that carry pilots on every subcarrier (fixed QPSK, unit power);
            default [2, 11] (two DMRS-like symbols per slot).
        csi: "ls" (least-squares estimate at the pilots, linear interpolation) or "perfect" (the
            true channel); default "ls".
        link: ldpc only: "ofdm" (this grid and channel) or "awgn" (one complex symbol per use, no
            fading, no pilots); default "ofdm".
        modulation_bits: ldpc only: bits per QAM symbol (2 QPSK, 4 16-QAM, 6 64-QAM, 8 256-QAM);
            default 4.
        code_rate: ldpc only: information bits (CRC included) / coded bits; default 0.5.
        block_bits: ldpc only: at most this many information bits (CRC included) per LDPC block;
            default 1024 (5G NR allows 12 to 8448).
        crc: ldpc only: the CRC of each block (TS 38.212: CRC24A, CRC24B, CRC24C, CRC16, CRC11,
            CRC6); default "CRC16".
    """

    profile: str = "C"
    delay_spread_ns: float = 300.0
    speed_mps: float = 3.0
    carrier_ghz: float = 3.5
    subcarrier_spacing_khz: float = 30.0
    subcarriers: int = 12
    ofdm_symbols: int = 14
    pilot_symbols: list[int] = field(default_factory=lambda: [2, 11])
    csi: str = "ls"
    link: str = "ofdm"
    modulation_bits: int = 4
    code_rate: float = 0.5
    block_bits: int = 1024
    crc: str = "CRC16"

    def check(self) -> None:
        """ChannelError naming the first bad value and the valid ones."""
        if self.profile not in (*TDL_PROFILES, "none"):
            raise ChannelError(f"TDL profile {self.profile!r} is unknown; valid: none, {', '.join(TDL_PROFILES)}")
        for name, lo in (("delay_spread_ns", 0.0), ("speed_mps", 0.0)):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= lo):
                raise ChannelError(f"`{name}` {getattr(self, name)} must be a finite number >= {lo:g}")
        for name in ("carrier_ghz", "subcarrier_spacing_khz"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ChannelError(f"`{name}` {getattr(self, name)} must be a positive number")
        if not (1 <= self.subcarriers <= 3300 and 2 <= self.ofdm_symbols <= 14):
            raise ChannelError(f"a slot of {self.subcarriers} subcarriers x {self.ofdm_symbols} OFDM symbols is "
                               f"out of range: valid is 1 to 3300 subcarriers, 2 to 14 symbols")
        pilots = list(self.pilot_symbols)
        if not pilots or len(set(pilots)) != len(pilots) or not all(0 <= p < self.ofdm_symbols for p in pilots) \
                or len(pilots) >= self.ofdm_symbols:
            raise ChannelError(f"pilot symbols {pilots} are invalid: give distinct OFDM symbol indices from 0 to "
                               f"{self.ofdm_symbols - 1}, fewer than the slot's {self.ofdm_symbols} symbols")
        if self.csi not in CSI_MODES:
            raise ChannelError(f"csi {self.csi!r} is unknown; valid: {', '.join(CSI_MODES)}")
        if self.link not in ("ofdm", "awgn"):
            raise ChannelError(f"link {self.link!r} is unknown; valid: ofdm, awgn")
        if self.modulation_bits not in (2, 4, 6, 8):
            raise ChannelError(f"`modulation_bits` {self.modulation_bits} is invalid; valid: 2, 4, 6, 8 (QPSK to 256-QAM)")
        if not (0.05 <= self.code_rate <= 0.95):
            raise ChannelError(f"`code_rate` {self.code_rate} is out of range: valid is 0.05 to 0.95")
        if not (12 <= self.block_bits <= 8448):
            raise ChannelError(f"`block_bits` {self.block_bits} is out of range: valid is 12 to 8448 (5G NR LDPC)")
        if self.crc not in ("CRC24A", "CRC24B", "CRC24C", "CRC16", "CRC11", "CRC6"):
            raise ChannelError(f"crc {self.crc!r} is unknown; valid: CRC24A, CRC24B, CRC24C, CRC16, CRC11, CRC6")

    @property
    def pilot_res(self) -> int:
        """Resource elements of a slot that carry pilots."""
        return self.subcarriers * len(self.pilot_symbols)

    @property
    def data_res(self) -> int:
        """Resource elements of a slot that carry data."""
        return self.subcarriers * (self.ofdm_symbols - len(self.pilot_symbols))

    @property
    def slot_res(self) -> int:
        """Resource elements of a slot, pilots included: the channel uses one slot costs."""
        return self.subcarriers * self.ofdm_symbols

    def describe_link(self) -> str:
        """The OFDM link in words."""
        fading = "no fading (AWGN)" if self.profile == "none" else (
            f"3GPP TDL-{self.profile}" + ("" if self.profile in FIXED_DELAY_PROFILES else f", delay spread "
                                          f"{self.delay_spread_ns:g} ns") + f", UE speed {self.speed_mps:g} m/s at "
            f"{self.carrier_ghz:g} GHz")
        csi = "perfect CSI" if self.csi == "perfect" else "LS estimation at the pilots"
        return (f"OFDM slots of {self.subcarriers} subcarriers x {self.ofdm_symbols} symbols at "
                f"{self.subcarrier_spacing_khz:g} kHz, pilots on symbols {list(self.pilot_symbols)}, {fading}, "
                f"{csi}, LMMSE equalisation")


class _Seeded:
    """Mixin for a Sionna block that draws its randomness from ``self.generator`` when set."""

    generator: torch.Generator | None = None

    @property
    def torch_rng(self) -> torch.Generator:
        return self.generator if self.generator is not None else super().torch_rng  # type: ignore[misc]


def _local_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A generator on ``device`` seeded from one draw of ``generator`` (None stays None)."""
    if generator is None:
        return None
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


class OFDMLink:
    """Complex unit-power symbols (B, K) over slots of the OFDM grid -> equalised symbols and their
    effective noise variance, both (B, K). Sionna's blocks, built once per device."""

    def __init__(self, config: PhyConfig, device: torch.device | str = "cpu"):
        config.check()
        self.config, self.device = config, torch.device(device)
        require_sionna("ofdm")
        import numpy as np
        from sionna.phy.channel import ApplyOFDMChannel, GenerateOFDMChannel
        from sionna.phy.channel.tr38901 import TDL
        from sionna.phy.mimo import StreamManagement
        from sionna.phy.ofdm import LMMSEEqualizer, LSChannelEstimator, PilotPattern, ResourceGrid, ResourceGridMapper

        dev = str(self.device)
        c = config
        mask = np.zeros((1, 1, c.ofdm_symbols, c.subcarriers), bool)
        mask[..., list(c.pilot_symbols), :] = True
        qpsk = np.random.default_rng(PILOT_SEED).integers(0, 2, (2, c.pilot_res)) * 2 - 1
        pilots = ((qpsk[0] + 1j * qpsk[1]) / math.sqrt(2)).astype(np.complex64).reshape(1, 1, -1)
        self.grid = ResourceGrid(num_ofdm_symbols=c.ofdm_symbols, fft_size=c.subcarriers,
                                 subcarrier_spacing=c.subcarrier_spacing_khz * 1e3, num_tx=1, num_streams_per_tx=1,
                                 pilot_pattern=PilotPattern(mask, pilots, device=dev), device=dev)
        self.mapper = ResourceGridMapper(self.grid, device=dev)
        self.tdl = None
        if c.profile != "none":
            seeded = type("SeededTDL", (_Seeded, TDL), {})
            spread = None if c.profile in FIXED_DELAY_PROFILES else c.delay_spread_ns * 1e-9
            self.tdl = seeded(c.profile, delay_spread=spread, carrier_frequency=c.carrier_ghz * 1e9,
                              min_speed=c.speed_mps, max_speed=c.speed_mps, device=dev)
            self.generate = GenerateOFDMChannel(self.tdl, self.grid, device=dev)
        self.apply = ApplyOFDMChannel(device=dev)
        self.estimator = LSChannelEstimator(self.grid, interpolation_type="lin", device=dev)
        self.equalizer = LMMSEEqualizer(self.grid, StreamManagement(np.array([[1]]), 1), device=dev)

    def slots(self, symbols: int) -> int:
        """Slots that ``symbols`` complex data symbols occupy."""
        return max(1, math.ceil(symbols / self.config.data_res))

    def transmit(self, x: Tensor, n0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """x (B, K) complex64, n0 (B,) noise variance per complex symbol -> (x_hat, no_eff), (B, K)."""
        b, k = x.shape
        d, s = self.config.data_res, self.slots(k)
        x = torch.nn.functional.pad(x, (0, s * d - k)).reshape(b * s, 1, 1, d)
        n0 = n0.repeat_interleave(s)
        grid = self.mapper(x)  # (B S, 1, 1, T, F)
        shape = (b * s, 1, 1, 1, 1, self.config.ofdm_symbols, self.config.subcarriers)
        if self.tdl is None:
            h = torch.ones(shape, dtype=torch.complex64, device=self.device)
        else:
            self.tdl.generator = _local_generator(generator, self.device)
            try:
                h = self.generate(b * s)
            finally:
                self.tdl.generator = None
        y = self.apply(grid, h)
        y = y + complex_noise(y.shape, n0, generator, self.device)
        no = n0.clamp_min(1e-12).reshape(-1, 1, 1)
        if self.config.csi == "perfect":
            h_hat, err_var = h, torch.zeros(h.shape, device=self.device)
        else:
            h_hat, err_var = self.estimator(y, no)
        x_hat, no_eff = self.equalizer(y, h_hat, err_var, no)
        return x_hat.reshape(b, s * d)[:, :k], no_eff.reshape(b, s * d)[:, :k]


def complex_noise(shape, n0: Tensor, generator: torch.Generator | None, device) -> Tensor:
    """CN(0, n0) noise of ``shape`` (batch first), n0 (batch,): n0 / 2 per real dimension."""
    re = _draw("randn", shape, generator, device)
    im = _draw("randn", shape, generator, device)
    scale = (n0.to(device, torch.float32) / 2).sqrt().reshape(-1, *([1] * (len(shape) - 1)))
    return torch.complex(re * scale, im * scale)


class OFDMChannel(AnalogChannel):
    """An analog code's real symbols, paired into complex ones, over OFDM through a TDL channel."""

    name = "ofdm"
    per_symbol = False  # the power scale, the slots and the fading are the whole code's
    condition_axis = "SNR (dB, Es/N0 per resource element)"
    default_eval_conditions = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0)

    @classmethod
    def create(cls, train_condition: Condition = None, bits: int = 8, phy: PhyConfig | None = None) -> "OFDMChannel":
        return cls(train_condition, phy=phy)

    def __init__(self, train_condition: Condition = None, phy: PhyConfig | None = None):
        self.phy = phy or PhyConfig()
        self.phy.check()
        require_sionna(self.name)
        super().__init__(train_condition)
        self._links: dict[str, OFDMLink] = {}
        self.last_code_symbols: int | None = None

    def link(self, device: torch.device) -> OFDMLink:
        """The Sionna blocks on ``device`` (built on first use)."""
        key = str(device)
        if key not in self._links:
            self._links[key] = OFDMLink(self.phy, device)
        return self._links[key]

    def channel_uses(self, code_symbols: int) -> int:
        """Resource elements one image of ``code_symbols`` real symbols occupies, pilots counted."""
        return max(1, math.ceil(math.ceil(code_symbols / 2) / self.phy.data_res)) * self.phy.slot_res

    @staticmethod
    def to_symbols(z: Tensor) -> tuple[Tensor, Tensor]:
        """z (N, ...) -> (c (N, ceil(k/2)) complex64 of mean power 1 per image, scale (N, 1)): real
        symbols 2i and 2i + 1 are the real and imaginary parts of c_i (a zero pads an odd k)."""
        s = z.flatten(1).float()
        s = torch.nn.functional.pad(s, (0, s.shape[1] % 2))
        scale = (math.sqrt(s.shape[1] // 2) / s.norm(dim=1).clamp_min(1e-12)).unsqueeze(1)
        return torch.complex(s[:, 0::2], s[:, 1::2]) * scale, scale

    @staticmethod
    def from_symbols(c: Tensor, scale: Tensor, like: Tensor) -> Tensor:
        """Inverse of :meth:`to_symbols`: complex (N, K) and the scale -> a tensor shaped like ``like``."""
        s = torch.stack([c.real, c.imag], dim=2).flatten(1) / scale
        return s[:, :like[0].numel()].reshape(like.shape).to(like.dtype)

    def forward(self, z: Tensor, param: Param, generator: torch.Generator | None = None) -> Tensor:
        sigma = self._per_sample(param, z, torch.float32).reshape(-1)
        self.last_code_symbols = z[0].numel()
        with torch.autocast(z.device.type, enabled=False):
            c, scale = self.to_symbols(z)
            c_hat, _ = self.link(z.device).transmit(c, sigma.pow(2), generator)
            return self.from_symbols(c_hat, scale, z)

    def eval_row(self, param: float) -> dict[str, Any]:
        """What eval reports beside top-1 at a condition: the channel uses per image."""
        if self.last_code_symbols is None:
            return {}
        return {"channel_uses_per_image": self.channel_uses(self.last_code_symbols),
                "channel_use": "resource element (pilots and a last slot's unused tail counted)"}

    def describe(self) -> str:
        return ("analog code over " + self.phy.describe_link() + "; real symbols paired into complex ones, "
                "per-image mean power 1, SNR = 10 log10(Es/N0) dB per resource element")

    def format_condition(self, value: float) -> str:
        return "noiseless" if value == math.inf else f"SNR {value:g} dB"

    def format_train_condition(self) -> str:
        lo, hi = self.train_condition
        return f"SNR {lo:g} dB to {'noiseless' if hi == math.inf else f'{hi:g} dB'}"
