"""How a code crosses the wire: one framing object per kind of code, shared by every side that sends.

    device:  z (N, *code_shape) --payload(z, param)--> one wire frame (bytes)
    edge:    frame --receive--> z (as sent) --air(z, param, seed, first_index)--> z_hat --pad--> decoder input

Three kinds, chosen by the codec preset (``CodecPreset.code``, codec.kinds):

- ``Framing``: a fixed-length code. The link's own framing (link.transmit): float32 symbols on an
  analog channel, packed n-bit levels on a digital one; the receiver-side channel simulation
  (link.receiver) corrupts image i with its own seeded generator.
- ``PrefixFraming``: a variable-length code (codec.variable): the device sends the prefix of k
  symbols its length table gives for the condition, an (N, k) frame; the edge runs the air interface
  with the noise drawn for the whole code and pads zeros back to the code shape.
- ``EntropyFraming``: an entropy code (codec.entropy): one range-coded stream per image, coded with
  the integer tables of the module given (the device's encoder, or the edge's decoder: both hold a
  copy); an error-free link, so the air interface passes the code through.

The codec's ``compress`` / ``decompress``, the PyTorch deploy halves and the ONNX Runtime halves all
hold one of these, so the bytes on the wire are made by one piece of code whatever runs the layers.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from torch import Tensor, nn

from ..link import wire
from ..link.channels import Channel, Param
from ..link.receiver import simulate
from ..link.transmit import decode_code, encode_code, header_bytes, payload_bytes
from .entropy import decode_entropy_frame, encode_entropy_frame
from .variable import LengthTable, air_prefix, pad_prefix, take_prefix


class Framing:
    """A fixed-length code over ``channel``: every image sends its whole code (``code_shape``)."""

    def __init__(self, code_shape: Sequence[int], channel: Channel, pair_id: str):
        self.code_shape = tuple(int(d) for d in code_shape)
        self.channel, self.pair_id = channel, pair_id

    @property
    def code_symbols(self) -> int:
        """K, real symbols of one image's whole code."""
        return math.prod(self.code_shape)

    def symbols(self, param: float) -> int:
        """Symbols per image sent at channel parameter ``param``."""
        return self.code_symbols

    def payload(self, z: Tensor, param: float | None = None) -> bytes:
        """One wire frame for a code batch z (N, *code_shape)."""
        return encode_code(z, self.channel, self.pair_id)

    def receive(self, buf: bytes) -> Tensor:
        """Wire frame -> the code as sent (N, *code_shape); WireError for another export, kind or shape."""
        return decode_code(buf, self.channel, self.pair_id, self.code_shape)

    def air(self, z: Tensor, param: Param, seed: int = 0, first_index: int = 0) -> Tensor:
        """The simulated air interface: image i corrupted with air_generator(seed, first_index + i)."""
        return simulate(self.channel, z, param, seed, first_index)

    def pad(self, z_hat: Tensor) -> Tensor:
        """What the decoder takes from what was received: the code itself here."""
        return z_hat

    def payload_size(self, buf: bytes) -> int:
        """The payload bytes a frame of this code holds (its header excluded)."""
        return wire.decode(buf)[0].payload_bytes

    def frame_sizes(self) -> dict[str, int] | None:
        """{payload_bytes, header_bytes, frame_bytes} of a batch-1 frame, or None where they vary per image."""
        payload, header = payload_bytes(self.code_shape, self.channel), header_bytes(self.code_shape)
        return {"payload_bytes": payload, "header_bytes": header, "frame_bytes": payload + header}

    def frames_per_condition(self) -> list[dict[str, Any]] | None:
        """Batch-1 frame sizes per condition where they follow the condition (None: they do not)."""
        return None


class PrefixFraming(Framing):
    """A variable-length code: the prefix that ``lengths`` gives for the condition, an (N, k) frame."""

    def __init__(self, code_shape: Sequence[int], channel: Channel, pair_id: str, lengths: LengthTable):
        super().__init__(code_shape, channel, pair_id)
        self.lengths = lengths

    def symbols(self, param: float) -> int:
        return self.lengths.length(param)

    def payload(self, z: Tensor, param: float | None = None) -> bytes:
        """The prefix for ``param`` (None: the whole code, which the edge reads too)."""
        if param is not None:
            z = take_prefix(z, self.lengths.length(param))
        return encode_code(z, self.channel, self.pair_id)

    def receive(self, buf: bytes) -> Tensor:
        """A frame of the whole code, or of a prefix (N, k) with 1 <= k <= K (returned as (N, k))."""
        return decode_code(buf, self.channel, self.pair_id, self.code_shape, prefix=True)

    def air(self, z: Tensor, param: Param, seed: int = 0, first_index: int = 0) -> Tensor:
        """A received prefix with the noise of the whole code's draw (codec.variable.air_prefix)."""
        return air_prefix(self.channel, z, self.code_shape, param, seed, first_index)

    def pad(self, z_hat: Tensor) -> Tensor:
        """A received prefix (N, k) -> the code shape, zeros past k (nothing was sent there)."""
        return pad_prefix(z_hat, self.code_shape)

    def frame_sizes(self) -> dict[str, int]:
        """The longest frame: the whole code as a (1, K) prefix (sent beyond the table's worst condition)."""
        return _prefix_sizes(self.code_symbols, self.channel)

    def frames_per_condition(self) -> list[dict[str, Any]]:
        """One row per length-table entry: the entry (param p, k) serves parameters above the previous
        entry's, up to p; [{condition, param, label, symbols_per_image, payload/header/frame bytes}]."""
        ch = self.channel
        rows = []
        for param, k in self.lengths.entries():
            cond = ch.condition_from_param(param) if ch.condition_name else None
            rows.append({"condition": {ch.condition_name: cond} if ch.condition_name else {}, "param": param,
                         "label": ch.format_condition(cond) if ch.condition_name else "noiseless",
                         "symbols_per_image": k, **_prefix_sizes(k, ch)})
        return rows


def _prefix_sizes(k: int, channel: Channel) -> dict[str, int]:
    payload, header = payload_bytes((k,), channel), header_bytes((k,))
    return {"payload_bytes": payload, "header_bytes": header, "frame_bytes": payload + header}


class EntropyFraming(Framing):
    """An entropy code: one range-coded stream per image with the integer tables ``tables`` holds."""

    def __init__(self, code_shape: Sequence[int], channel: Channel, pair_id: str, tables: nn.Module):
        super().__init__(code_shape, channel, pair_id)
        self.tables = tables  # the encoder (device side) or the decoder (edge side)

    def payload(self, z: Tensor, param: float | None = None) -> bytes:
        return encode_entropy_frame(z, self.tables, self.pair_id)

    def receive(self, buf: bytes) -> Tensor:
        return decode_entropy_frame(buf, self.tables, self.pair_id, self.code_shape)

    def air(self, z: Tensor, param: Param, seed: int = 0, first_index: int = 0) -> Tensor:
        """An error-free link: the decoded integers are what was sent."""
        return z

    def payload_size(self, buf: bytes) -> int:
        """The streams' bytes (the frame's header and its table of stream lengths excluded)."""
        return sum(len(s) for s in wire.decode_streams(buf)[1])

    def frame_sizes(self) -> None:
        """The streams' sizes vary per image: `bnpp eval` measures them."""
        return None

