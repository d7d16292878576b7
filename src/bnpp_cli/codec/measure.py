"""What a code costs on the wire, measured from real frames, one test batch at a time (`bnpp eval`).

    meter = code_meter(codec, channel, params)      # codec.kinds picks the meter for the preset's kind
    for f in head features of the test set: meter.add(f)
    meter.fields()        extra EvalResult fields (bits / bytes per image, bit ratio, coder time, ...)
    meter.row(param)      extra fields of the row at channel parameter ``param``

Every image is coded alone as a batch-1 frame (what a device sends one image at a time) by the code's
own framing (codec.framing) and read back: the sizes are those of the real bytes, never a formula.

- ``SymbolMeter``: an analog fixed-length code. Nothing to measure: its symbols per image are the
  code's size; bits have no meaning on an analog link.
- ``FrameMeter``: a digital code (fixed-length n-bit levels, or an entropy code's streams): payload
  and frame bytes per image, the bit ratio from the measured bits, the coder's time per image on
  each side, and for an entropy code -log2 of its integer tables beside the measured bits.
- ``PrefixMeter``: a variable-length code: at each condition, each image's prefix frame of the
  length its table gives there; the rows carry those sizes, the result the table itself.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import BnppError
from .entropy import find_prior
from .framing import Framing

MEASURE_PAIR_ID = "0" * 32  # the frame's size does not depend on the pair id


class SymbolMeter:
    """An analog fixed-length code: the rows say the symbols sent; no bits to measure."""

    def __init__(self, codec, channel, params: Sequence[float], framing: Framing):
        self.codec, self.channel, self.params, self.framing = codec, channel, list(params), framing

    def add(self, f: Tensor) -> None:
        """Nothing to measure for a code whose size is its shape."""

    def row(self, param: float) -> dict[str, Any]:
        """Extra fields of the row at channel parameter ``param``."""
        return {"symbols_per_image": self.framing.symbols(param), "payload_bits": None}

    def fields(self) -> dict[str, Any]:
        """Extra EvalResult fields: a fixed-length code's bits, bit ratio and payload from its shape
        (None on an analog link)."""
        bits = self.channel.bits_per_element
        symbols = self.codec.config.code_symbols
        return {"bits": bits, "bit_ratio": self.codec.config.bit_ratio(bits) if bits else None,
                "payload_bytes": (symbols * bits + 7) // 8 if bits else None}


class FrameMeter(SymbolMeter):
    """A digital code: each image's batch-1 frame at a noiseless link, decoded back and checked."""

    def __init__(self, codec, channel, params: Sequence[float], framing: Framing):
        super().__init__(codec, channel, params, framing)
        self.prior = find_prior(codec)
        self.payload = self.frame_bytes = self.estimate = self.enc_s = self.dec_s = 0.0
        self.n = 0

    @torch.no_grad()
    def add(self, f: Tensor) -> None:
        z = self.codec.encoder(f, 0.0).cpu()  # batched (eval mode: the same code); coded one image at a time
        if self.prior is not None:
            self.estimate += float(self.prior.bits().sum())
        for i in range(z.shape[0]):
            t0 = time.perf_counter()
            buf = self.framing.payload(z[i:i + 1], 0.0)
            t1 = time.perf_counter()
            back = self.framing.receive(buf)
            self.dec_s += time.perf_counter() - t1
            self.enc_s += t1 - t0
            if self.prior is not None and not torch.equal(back, z[i:i + 1]):
                raise BnppError(f"image {self.n}: the entropy code does not decode to what was coded")
            self.payload += self.framing.payload_size(buf)
            self.frame_bytes += len(buf)
            self.n += 1

    def row(self, param: float) -> dict[str, Any]:
        bits = self.channel.bits_per_element
        symbols = self.framing.symbols(param)
        fixed = 8 * ((symbols * bits + 7) // 8) if bits else None  # packed levels: whole bytes
        return {"symbols_per_image": symbols, "payload_bits": fixed if self.prior is None else self.bits_per_image}

    @property
    def bits_per_image(self) -> float:
        return 8 * self.payload / max(self.n, 1)

    def fields(self) -> dict[str, Any]:
        n = max(self.n, 1)
        return {"bits_per_image": self.bits_per_image, "bytes_per_image": self.payload / n,
                "frame_bytes_per_image": self.frame_bytes / n,
                "estimated_bits_per_image": self.estimate / n if self.prior is not None else None,
                "encode_ms_per_image": 1e3 * self.enc_s / n, "decode_ms_per_image": 1e3 * self.dec_s / n,
                **(super().fields() if self.prior is None else self._stream_fields())}

    def _stream_fields(self) -> dict[str, Any]:
        """An entropy code: the bit ratio from the measured streams; no fixed bits per symbol or payload."""
        elements = math.prod(self.codec.config.feature_shape)
        return {"bits": None, "bit_ratio": 32 * elements / self.bits_per_image if self.payload else None,
                "payload_bytes": None}


class PrefixMeter(SymbolMeter):
    """A variable-length code: each image's (1, k) prefix frame at each condition, read back."""

    def __init__(self, codec, channel, params: Sequence[float], framing: Framing):
        super().__init__(codec, channel, params, framing)
        self.sizes = {p: [0, 0] for p in self.params}  # param -> [payload bytes, frame bytes]
        self.n = 0

    @torch.no_grad()
    def add(self, f: Tensor) -> None:
        for param in self.params:
            z = self.codec.encoder(f, param).cpu()
            k = self.framing.symbols(param)
            for i in range(z.shape[0]):
                buf = self.framing.payload(z[i:i + 1], param)
                back = self.framing.receive(buf)
                if tuple(back.shape) != (1, k):
                    raise BnppError(f"image {self.n + i}: a {k}-symbol prefix came back as {tuple(back.shape)}")
                self.sizes[param][0] += self.framing.payload_size(buf)
                self.sizes[param][1] += len(buf)
        self.n += f.shape[0]

    def row(self, param: float) -> dict[str, Any]:
        n = max(self.n, 1)
        payload, frame = self.sizes.get(param, (0, 0))
        digital = self.channel.bits_per_element is not None
        return {"symbols_per_image": self.framing.symbols(param), "payload_bytes": payload / n,
                "frame_bytes": frame / n, "payload_bits": 8 * payload / n if digital else None}

    def fields(self) -> dict[str, Any]:
        ch = self.channel
        table = [{"condition": {ch.condition_name: ch.condition_from_param(p)} if ch.condition_name else {},
                  "symbols_per_image": k} for p, k in self.framing.lengths.entries()]
        return {**super().fields(), "variable_length": True, "length_table": table}
