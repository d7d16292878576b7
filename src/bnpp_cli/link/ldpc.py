"""Digital codes through a real channel code: 5G NR LDPC with CRC, QAM, over AWGN or OFDM (Sionna PHY).

Data flow for one image's L bits (its n-bit levels, least significant bit first, in C order)::

    bits (L,) --segment: B = ceil(L / (block_bits - crc)) blocks of p = ceil(L / B) bits (zero-padded)-->
      --CRCEncoder (TS 38.212 5.1): k = p + crc bits--> --LDPC5GEncoder(k, n) with rate matching,
        n = m ceil(k / (code_rate m))--> --Mapper: QAM, 2^m points, mean power 1-->
      --link: AWGN (y = x + n, n ~ CN(0, N0)) or the OFDM grid and TDL channel of link.phy-->
      --Demapper (APP, LLRs with the equaliser's effective noise)--> --LDPC5GDecoder (BP, hard out)-->
      --CRCDecoder--> a block that fails its CRC is erased: its bits decode as their expected value,
        half their weight (the ``bec`` rule, link.quantize.expected_levels)

The condition is the SNR Es/N0 in dB per complex channel symbol, Es = 1 (``snr_db``, native
sigma = 10^(-SNR / 20), N0 = sigma^2 as on the other analog channels); Eb/N0 = Es/N0 - 10 log10(m r)
with r = k / n. One channel use is one complex symbol on AWGN, one resource element over OFDM
(pilots and a last slot's unused tail counted).

Training, eval, predict and serve run the same link (the mode changes nothing): every block is
encoded, sent, demapped and decoded, so the edge decoder is trained on the blocks that really fail
at the training SNRs and absorbs them as erasures, as it does on ``bec``. The gradient is the
identity (straight-through).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import ChannelError
from .channels import BITS_RANGE, AnalogChannel, Condition, Param
from .phy import OFDMLink, PhyConfig, complex_noise, require_sionna
from .quantize import bit_planes, dequantize, expected_levels, quantize, straight_through

CRC_BITS = {"CRC24A": 24, "CRC24B": 24, "CRC24C": 24, "CRC16": 16, "CRC11": 11, "CRC6": 6}


class BlockPlan:
    """How L bits are cut into LDPC blocks: ``blocks`` of ``payload`` bits, ``k`` with the CRC,
    ``n`` coded bits, ``n // m`` QAM symbols each."""

    def __init__(self, bits: int, phy: PhyConfig):
        crc = CRC_BITS[phy.crc]
        self.bits, self.m = bits, phy.modulation_bits
        self.blocks = max(1, math.ceil(bits / (phy.block_bits - crc)))
        self.payload = math.ceil(bits / self.blocks)
        self.k = max(12, self.payload + crc)  # 5G NR LDPC takes k >= 12
        self.n = self.m * math.ceil(self.k / (phy.code_rate * self.m))
        self.symbols = self.blocks * self.n // self.m  # complex symbols per image

    @property
    def rate(self) -> float:
        return self.k / self.n


class LDPCLink:
    """Sionna's CRC, LDPC and QAM blocks for one block plan, on one device, over AWGN or OFDM."""

    def __init__(self, plan: BlockPlan, phy: PhyConfig, device: torch.device | str = "cpu"):
        require_sionna("ldpc")
        from sionna.phy.fec.crc import CRCDecoder, CRCEncoder
        from sionna.phy.fec.ldpc import LDPC5GDecoder, LDPC5GEncoder
        from sionna.phy.mapping import Demapper, Mapper

        self.plan, self.phy, self.device = plan, phy, torch.device(device)
        dev = str(self.device)
        self.crc_encoder = CRCEncoder(phy.crc, device=dev)
        self.crc_decoder = CRCDecoder(self.crc_encoder, device=dev)
        self.encoder = LDPC5GEncoder(plan.k, plan.n, num_bits_per_symbol=plan.m, device=dev)
        self.decoder = LDPC5GDecoder(self.encoder, hard_out=True, device=dev)
        self.mapper = Mapper("qam", plan.m, device=dev)
        self.demapper = Demapper("app", "qam", plan.m, device=dev)
        self.ofdm = OFDMLink(phy, dev) if phy.link == "ofdm" else None

    def channel_uses(self) -> int:
        """Channel uses per image: complex symbols (AWGN) or resource elements of whole slots (OFDM)."""
        if self.ofdm is None:
            return self.plan.symbols
        return self.ofdm.slots(self.plan.symbols) * self.phy.slot_res

    def transmit(self, bits: Tensor, n0: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """bits (N, L) in {0, 1}, n0 (N,) noise variance per complex symbol -> (received bits (N, L),
        block CRC passed (N, blocks) bool). The received bits of a failed block are the decoder's."""
        plan, n = self.plan, bits.shape[0]
        u = torch.nn.functional.pad(bits.float(), (0, plan.blocks * plan.payload - plan.bits))
        u = u.reshape(n * plan.blocks, plan.payload)
        x = self.mapper(self.encoder(self.crc_encoder(u)))  # (N B, n / m)
        x = x.reshape(n, plan.symbols)
        if self.ofdm is None:
            y, no_eff = x + complex_noise(x.shape, n0, generator, self.device), n0.clamp_min(1e-12)[:, None].expand_as(x.real)
        else:
            y, no_eff = self.ofdm.transmit(x, n0, generator)
        llr = self.demapper(y.reshape(n * plan.blocks, -1), no_eff.reshape(n * plan.blocks, -1))
        decoded, ok = self.crc_decoder(self.decoder(llr))
        received = decoded.reshape(n, plan.blocks * plan.payload)[:, :plan.bits]
        return received.round().to(torch.int64), ok.reshape(n, plan.blocks).bool()


class LDPCChannel(AnalogChannel):
    """A digital code's n-bit levels through 5G NR LDPC + CRC + QAM over AWGN or OFDM; a block that
    fails its CRC is an erasure."""

    name = "ldpc"
    digital = True
    per_symbol = False  # a symbol's fate is its block's
    condition_axis = "SNR (dB, Es/N0 per complex channel symbol)"
    default_eval_conditions = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0)  # dense around 16-QAM rate 1/2's cliff

    @classmethod
    def create(cls, train_condition: Condition = None, bits: int = 8, phy: PhyConfig | None = None) -> "LDPCChannel":
        return cls(train_condition, bits=bits, phy=phy)

    def __init__(self, train_condition: Condition = None, bits: int = 8, phy: PhyConfig | None = None):
        lo, hi = BITS_RANGE
        if not (isinstance(bits, int) and lo <= bits <= hi):
            raise ChannelError(f"bits {bits!r} is out of range for {self.name}: valid is {lo} to {hi}")
        self.bits = bits
        self.phy = phy or PhyConfig()
        self.phy.check()
        require_sionna(self.name)
        super().__init__(train_condition)
        self._links: dict[tuple[int, str], LDPCLink] = {}
        self.reset_stats()

    def reset_stats(self) -> None:
        """Forget the blocks counted so far ({param: [blocks, failed]})."""
        self.stats: dict[float, list[int]] = {}
        self.last_plan: BlockPlan | None = None

    def link(self, bits: int, device: torch.device) -> LDPCLink:
        """The link for images of ``bits`` bits on ``device`` (built on first use)."""
        key = (bits, str(device))
        if key not in self._links:
            self._links[key] = LDPCLink(BlockPlan(bits, self.phy), self.phy, device)
        return self._links[key]

    def forward(self, z: Tensor, param: Param, generator: torch.Generator | None = None) -> Tensor:
        sigma = self._per_sample(param, z, torch.float32).reshape(-1)
        levels = quantize(z, self.bits)
        planes = bit_planes(levels, self.bits).flatten(1)  # (N, L)
        n, length = planes.shape
        plan = BlockPlan(length, self.phy)
        self.last_plan = plan
        if bool((sigma == 0).all()):
            failed = torch.zeros(n, plan.blocks, dtype=torch.bool, device=z.device)
        else:
            with torch.no_grad():
                _, ok = self.link(length, z.device).transmit(planes, sigma.pow(2), generator)
            failed = ~ok
            if not isinstance(param, Tensor):
                count = self.stats.setdefault(float(param), [0, 0])
                count[0] += failed.numel()
                count[1] += int(failed.sum())
        erased = failed.repeat_interleave(plan.payload, dim=1)[:, :length].reshape(*levels.shape, self.bits)
        x_hat = dequantize(expected_levels(levels, erased, self.bits), self.bits, z.dtype)
        return straight_through(z, x_hat)

    def channel_uses(self, code_symbols: int) -> int:
        """Channel uses per image of a code of ``code_symbols`` levels (see the module docstring)."""
        plan = BlockPlan(code_symbols * self.bits, self.phy)
        if self.phy.link == "awgn":
            return plan.symbols
        return max(1, math.ceil(plan.symbols / self.phy.data_res)) * self.phy.slot_res

    def eval_row(self, param: float) -> dict[str, Any]:
        """Block error rate, blocks, code and channel uses at a condition evaluated in eval mode."""
        plan = self.last_plan
        if plan is None:
            return {}
        row: dict[str, Any] = {"blocks_per_image": plan.blocks, "ldpc_k": plan.k, "ldpc_n": plan.n,
                               "code_rate": plan.rate, "channel_uses_per_image": self.channel_uses(plan.bits // self.bits),
                               "channel_use": "complex symbol" if self.phy.link == "awgn" else
                               "resource element (pilots and a last slot's unused tail counted)"}
        if float(param) in self.stats:
            blocks, failed = self.stats[float(param)]
            row.update(blocks=blocks, block_errors=failed, block_error_rate=failed / blocks if blocks else None)
        return row

    @property
    def bits_per_element(self) -> int | None:
        return self.bits

    def describe(self) -> str:
        link = "AWGN" if self.phy.link == "awgn" else self.phy.describe_link()
        return (f"{self.bits}-bit levels in 5G NR LDPC blocks (at most {self.phy.block_bits} bits with "
                f"{self.phy.crc}, rate {self.phy.code_rate:g}), {2 ** self.phy.modulation_bits}-QAM over {link}; "
                f"a block failing its CRC is erased, SNR = 10 log10(Es/N0) dB per complex symbol")

    def format_condition(self, value: float) -> str:
        return "noiseless" if value == math.inf else f"SNR {value:g} dB"

    def format_train_condition(self) -> str:
        lo, hi = self.train_condition
        return f"SNR {lo:g} dB to {'noiseless' if hi == math.inf else f'{hi:g} dB'}"
