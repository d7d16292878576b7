"""Code <-> wire frame for a channel: what the device sends for a code z, and what the edge reads back.

    analog channel:  z float32 (N, C', H', W') --wire.encode_analog--> frame
    digital channel: z --quantize(bits)--> integer levels --wire.encode_digital--> frame

A variable-length code sends a prefix of its code, an (N, k) tensor (codec.variable): the frame's
shape says k, and ``decode_code(..., prefix=True)`` accepts it.

``decode_code`` checks that a frame holds what this channel sends (kind, bits) at the code's shape
and returns z as float32 symbols in [0, 1] (digital levels are dequantised by the channel's own
``dequantize``), ready for the receiver's channel simulation.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from . import wire
from .channels import Channel, dequantize, quantize


def encode_code(z: torch.Tensor, channel: Channel, pair_id: str) -> bytes:
    """One wire frame for a code batch: float32 symbols (analog) or packed n-bit levels (digital)."""
    if channel.digital:
        return wire.encode_digital(quantize(z, channel.bits), channel.bits, pair_id)
    return wire.encode_analog(z, pair_id)


def decode_code(buf: bytes, channel: Channel, pair_id: str, code_shape: Sequence[int],
                prefix: bool = False) -> torch.Tensor:
    """Wire frame -> symbols (N, C', H', W'); WireError for another export, kind or shape.

    ``prefix`` (a variable-length code, codec.variable): a frame of shape (N, k), the first
    1 <= k <= C' H' W' symbols of each code in C order, is accepted too and returned as (N, k)."""
    frame, t = wire.decode(buf, expected_pair_id=pair_id)
    if (frame.kind == "digital") != channel.digital or (channel.digital and frame.bits != channel.bits):
        want = f"digital {channel.bits}-bit levels" if channel.digital else "analog symbols"
        raise wire.WireError(f"frame holds {frame.kind} data ({frame.bits or frame.dtype}); this edge expects {want}")
    total = math.prod(code_shape)
    is_prefix = prefix and len(frame.shape) == 2 and 1 <= frame.shape[1] <= total
    if not is_prefix and (len(frame.shape) != 1 + len(code_shape) or tuple(frame.shape[1:]) != tuple(code_shape)):
        also = f", or a prefix (N, k) with k from 1 to {total}" if prefix else ""
        raise wire.WireError(f"frame shape {frame.shape} does not match this edge's code (N, "
                             f"{', '.join(map(str, code_shape))}){also}")
    return dequantize(t, channel.bits) if channel.digital else t


def payload_bytes(code_shape: Sequence[int], channel: Channel, images: int = 1) -> int:
    """Payload bytes of a frame of `images` codes (the header excluded)."""
    return wire.payload_size((images, *code_shape), bits=channel.bits if channel.digital else None)


def header_bytes(code_shape: Sequence[int]) -> int:
    """Header bytes of a frame of codes of this shape (N, *code_shape)."""
    return wire.header_length(1 + len(code_shape))


def frame_bytes(code_shape: Sequence[int], channel: Channel, images: int = 1) -> int:
    """Whole frame bytes, header included, of `images` codes."""
    return header_bytes(code_shape) + payload_bytes(code_shape, channel, images)
