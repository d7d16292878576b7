"""Wire format: the bytes that carry the code ``z`` from the device half to the edge half.

Device and edge may run in different processes on different machines, so each transmitted code
is one self-describing *frame*. Format version 1 (analog and digital frames; version 2 is the same
header for entropy-coded frames), all integers little-endian::

    offset      size     field
    0           4        magic b"BNPP"
    4           1        format version (1; 2 for kind 2)
    5           1        kind: 0 = analog symbols, 1 = digital levels, 2 = entropy-coded streams
    6           1        analog: dtype code (0 = float32, 1 = float16);
                         digital: bits per level n (1..16); entropy: coder id (1 = range coder,
                         16-bit integer tables, codec.entropy)
    7           1        ndim (1..8)
    8           16       pair id: 16 raw bytes (the export's 32-char lowercase hex id)
    24          4*ndim   shape, uint32 each, at most 2^28 elements in all
    24+4*ndim   4        payload length in bytes (uint32)
    28+4*ndim   4        CRC-32 of the payload (zlib.crc32)
    32+4*ndim   ...      payload

Header length is ``header_length(ndim) = 32 + 4 ndim`` bytes (36 to 64). Payload:

- analog (kind 0): the values of ``z`` in C order, little-endian IEEE float32 or float16;
  ``numel * itemsize`` bytes. The reader returns float32.
- digital (kind 1): the levels q = round((2^n - 1) z) in C order, each written as n bits, most
  significant bit first, concatenated into one bitstream and zero-padded to a whole byte;
  ``ceil(numel * n / 8)`` bytes. Readers ignore the padding bits. The reader returns int64.
- entropy (kind 2, version 2): one bitstream per image (shape[0] of them), each preceded by its
  length in bytes as an unsigned LEB128 varint (1 byte below 128); the streams are the coder's
  (codec.entropy), which this module does not interpret: ``decode_streams`` returns them. A
  version-1 reader refuses these frames by version; this reader reads both versions.

A variable-length code (codec.variable) needs no other version: its frame's shape is (N, k), the first
k symbols of each image's code in C order, so the header already says how many were sent; the edge,
which knows its code's full shape, reads k from it and pads (link.transmit.decode_code ``prefix``).

The payload length is redundant with shape and dtype / bits; a reader rejects a frame where they
disagree (entropy frames: a length outside [N, N (2 numel / N + 13)], the most a 16-bit-table stream
can take), before it reads the payload. Readers reject anything else too: a frame is exactly
header + payload bytes, the CRC must match, and a reader that knows its pair id (the edge half of
an export) rejects frames from another export.

Streams (e.g. TCP) need no extra framing: read ``MIN_HEADER`` bytes, call :func:`peek_header`
(``total_len`` is None while the header is incomplete), read up to ``header_len`` bytes, call it
again, then read up to ``total_len`` bytes and :func:`decode`. ``peek_header`` validates the
header, so a reader never waits for, nor allocates, a payload larger than 2^28 * 4 bytes.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from dataclasses import dataclass, replace
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import WireError

Buffer = Union[bytes, bytearray, memoryview]

MAGIC = b"BNPP"
VERSION = 1  # written for analog and digital frames, so version-1 readers still read them
ENTROPY_VERSION = 2  # written for entropy-coded frames
CODERS = {1: "range16"}  # entropy coder ids: constriction's range coder with 2^16 integer tables
MIN_HEADER = 24  # the fixed prefix: magic .. pair id; ndim in it gives the full header length
MAX_NDIM = 8  # (N, C', H', W') needs 4; room for video or token layouts
MAX_ELEMENTS = 2**28  # 1 GiB of float32: bounds what a reader allocates for a hostile header
BITS_RANGE = (1, 16)  # as in channels.BITS_RANGE: 16-bit levels are still exact in float32

KINDS = ("analog", "digital", "entropy")  # index = kind code
DTYPES = {"float32": "<f4", "float16": "<f2"}  # insertion order = dtype code
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_PREFIX = struct.Struct("<4sBBBB16s")
_TAIL = struct.Struct("<II")  # payload length, CRC-32
_PAIR_ID = re.compile(r"[0-9a-f]{32}")
_CHUNK = 2**20  # levels per pack / unpack step (a multiple of 8: chunks end on whole bytes)


def header_length(ndim: int) -> int:
    """Bytes of the header of a frame with ``ndim`` dimensions."""
    return MIN_HEADER + 4 * ndim + _TAIL.size


@dataclass(frozen=True)
class Frame:
    """One decoded frame: header fields plus the raw payload bytes."""

    kind: str  # "analog" | "digital"
    shape: tuple[int, ...]
    pair_id: str  # 32 lowercase hex chars
    dtype: str | None  # "float32" | "float16" on analog frames, None on the others
    bits: int | None  # bits per level on digital frames, None on the others
    payload: bytes

    @property
    def header_bytes(self) -> int:
        return header_length(len(self.shape))

    @property
    def payload_bytes(self) -> int:
        return len(self.payload)

    @property
    def nbytes(self) -> int:
        return self.header_bytes + self.payload_bytes


def _check_pair_id(pair_id: str) -> str:
    if not (isinstance(pair_id, str) and _PAIR_ID.fullmatch(pair_id)):
        raise WireError(f"pair id {pair_id!r} is not 32 lowercase hex characters")
    return pair_id


def _check_bits(bits: int) -> int:
    lo, hi = BITS_RANGE
    if not (isinstance(bits, int) and not isinstance(bits, bool) and lo <= bits <= hi):
        raise WireError(f"bits {bits!r} is out of range: valid is {lo} to {hi}")
    return bits


def _check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise WireError(f"unknown dtype {dtype!r}: valid is {', '.join(DTYPES)}")
    return dtype


def _check_shape(shape: Sequence[int]) -> int:
    """Validates ndim and element count; returns the element count."""
    shape = tuple(shape)
    if not 1 <= len(shape) <= MAX_NDIM:
        raise WireError(f"bad ndim {len(shape)} for shape {shape} (expected 1 to {MAX_NDIM})")
    if any(not isinstance(s, int) or s < 0 for s in shape):
        raise WireError(f"shape {shape} must hold non-negative integers")
    numel = math.prod(shape)
    if numel > MAX_ELEMENTS:
        raise WireError(f"shape {shape} has {numel} elements, more than the limit {MAX_ELEMENTS}")
    return numel


def payload_size(shape: Sequence[int], *, bits: int | None = None, dtype: str = "float32") -> int:
    """Payload bytes (the code size) of a frame: digital when ``bits`` is given, else analog."""
    numel = _check_shape(shape)
    if bits is not None:
        return (numel * _check_bits(bits) + 7) // 8
    return numel * np.dtype(DTYPES[_check_dtype(dtype)]).itemsize


def pack_bits(levels: Tensor | np.ndarray, bits: int) -> bytes:
    """Integer levels in [0, 2^bits - 1] -> MSB-first bitstream, zero-padded to a whole byte."""
    _check_bits(bits)
    if isinstance(levels, Tensor):
        levels = levels.detach().cpu().numpy()
    levels = np.asarray(levels).reshape(-1)
    if levels.dtype.kind not in "iu":
        raise WireError(f"levels must be integers, got dtype {levels.dtype}")
    top = 2**bits - 1
    if levels.size and (levels.min() < 0 or levels.max() > top):
        raise WireError(f"levels out of range for {bits} bits: min {levels.min()}, "
                        f"max {levels.max()} (valid 0 to {top})")
    parts = []
    for start in range(0, levels.size, _CHUNK):
        two = levels[start:start + _CHUNK].astype(">u2").view(np.uint8).reshape(-1, 2)
        matrix = np.unpackbits(two, axis=1)[:, 16 - bits:]  # (count, bits), MSB first
        parts.append(np.packbits(matrix.reshape(-1)).tobytes())
    return b"".join(parts)


def unpack_bits(data: Buffer, bits: int, count: int) -> Tensor:
    """Inverse of :func:`pack_bits`: ``count`` levels as a 1-d int64 tensor."""
    _check_bits(bits)
    raw = np.frombuffer(data, dtype=np.uint8)
    need = (count * bits + 7) // 8
    if count < 0 or raw.size != need:
        raise WireError(f"{raw.size} bytes do not hold {count} levels at {bits} bits "
                        f"(need {need} bytes)")
    out = np.empty(count, dtype=np.int64)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        chunk = raw[start * bits // 8:(start * bits + n * bits + 7) // 8]
        matrix = np.zeros((n, 16), dtype=np.uint8)
        matrix[:, 16 - bits:] = np.unpackbits(chunk, count=n * bits).reshape(n, bits)
        out[start:start + n] = np.packbits(matrix, axis=1).view(">u2").reshape(-1)
    return torch.from_numpy(out)


def _frame_bytes(frame: Frame) -> bytes:
    ndim = len(frame.shape)
    code = {"analog": lambda: list(DTYPES).index(frame.dtype), "digital": lambda: frame.bits,
            "entropy": lambda: 1}[frame.kind]()
    version = ENTROPY_VERSION if frame.kind == "entropy" else VERSION
    return b"".join((
        _PREFIX.pack(MAGIC, version, KINDS.index(frame.kind), code, ndim,
                     bytes.fromhex(frame.pair_id)),
        struct.pack(f"<{ndim}I", *frame.shape),
        _TAIL.pack(len(frame.payload), zlib.crc32(frame.payload)),
        frame.payload,
    ))


def encode_analog(z: Tensor, pair_id: str, dtype: str = "float32") -> bytes:
    """One frame carrying the analog symbols ``z`` as float32 or float16."""
    _check_pair_id(pair_id)
    _check_dtype(dtype)
    if not z.is_floating_point():
        raise WireError(f"analog symbols must be a floating-point tensor, got {z.dtype} "
                        f"(use encode_digital for integer levels)")
    shape = tuple(z.shape)
    _check_shape(shape)
    payload = z.detach().cpu().to(_TORCH_DTYPES[dtype]).numpy().astype(DTYPES[dtype]).tobytes()
    return _frame_bytes(Frame("analog", shape, pair_id, dtype, None, payload))


def encode_digital(levels: Tensor, bits: int, pair_id: str) -> bytes:
    """One frame carrying integer ``levels`` in [0, 2^bits - 1], ``bits`` bits each."""
    _check_pair_id(pair_id)
    shape = tuple(levels.shape)
    _check_shape(shape)
    payload = pack_bits(levels, bits)
    return _frame_bytes(Frame("digital", shape, pair_id, None, bits, payload))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _entropy_bound(shape: Sequence[int]) -> tuple[int, int]:
    """(fewest, most) payload bytes of an entropy frame of this shape."""
    n = shape[0]
    per_image = math.prod(shape[1:])
    return n, n * (2 * per_image + 13)  # <= 16 bits a symbol, 8 bytes of coder flush, a 5-byte varint


def encode_streams(streams: Sequence[bytes], shape: Sequence[int], pair_id: str) -> bytes:
    """One version-2 frame carrying one entropy-coded stream per image of a code of ``shape``."""
    _check_pair_id(pair_id)
    shape = tuple(shape)
    _check_shape(shape)
    if len(streams) != shape[0]:
        raise WireError(f"{len(streams)} streams for a frame of {shape[0]} codes")
    payload = b"".join(_varint(len(s)) + bytes(s) for s in streams)
    lo, hi = _entropy_bound(shape)
    if not lo <= len(payload) <= hi:
        raise WireError(f"entropy payload of {len(payload)} bytes is outside [{lo}, {hi}] for shape {shape}")
    return _frame_bytes(Frame("entropy", shape, pair_id, None, None, payload))


def _split_streams(payload: bytes, n: int) -> list[bytes]:
    streams, pos = [], 0
    for i in range(n):
        length, shift = 0, 0
        while True:
            if pos >= len(payload) or shift > 28:
                raise WireError(f"entropy payload ends inside the length of stream {i} of {n}")
            byte = payload[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if pos + length > len(payload):
            raise WireError(f"stream {i} of {n} needs {length} bytes, {len(payload) - pos} are left")
        streams.append(payload[pos:pos + length])
        pos += length
    if pos != len(payload):
        raise WireError(f"{len(payload) - pos} bytes after the last of {n} streams")
    return streams


def _parse_header(mv: memoryview) -> tuple[Frame, int, int | None, int | None]:
    """Validates the header in ``mv``: (frame without payload, header_len, total_len, crc).

    ``total_len`` and ``crc`` are None when ``mv`` holds the fixed prefix but not the whole header.
    """
    if len(mv) < MIN_HEADER:
        raise WireError(f"buffer of {len(mv)} bytes is too short for a frame header "
                        f"(at least {MIN_HEADER} bytes)")
    magic, version, kind, code, ndim, pair = _PREFIX.unpack_from(mv)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r} (expected {MAGIC!r})")
    if version not in (VERSION, ENTROPY_VERSION):
        raise WireError(f"unsupported format version {version} (this reader knows {VERSION} and {ENTROPY_VERSION})")
    if kind >= len(KINDS):
        raise WireError(f"bad kind {kind} (expected 0 = analog, 1 = digital or 2 = entropy)")
    if (KINDS[kind] == "entropy") != (version == ENTROPY_VERSION):
        raise WireError(f"kind {KINDS[kind]} in a version-{version} frame (entropy frames are version "
                        f"{ENTROPY_VERSION}, the others {VERSION})")
    dtype = bits = None
    if KINDS[kind] == "entropy":
        if code not in CODERS:
            raise WireError(f"unknown entropy coder id {code} (this reader knows {', '.join(map(str, CODERS))})")
    elif KINDS[kind] == "analog":
        if code >= len(DTYPES):
            raise WireError(f"bad dtype code {code} (expected 0 = float32 or 1 = float16)")
        dtype = list(DTYPES)[code]
    else:
        lo, hi = BITS_RANGE
        if not lo <= code <= hi:
            raise WireError(f"bad bits per level {code} (expected {lo} to {hi})")
        bits = code
    if not 1 <= ndim <= MAX_NDIM:
        raise WireError(f"bad ndim {ndim} (expected 1 to {MAX_NDIM})")
    header_len = header_length(ndim)
    if len(mv) < header_len:
        return Frame(KINDS[kind], (), pair.hex(), dtype, bits, b""), header_len, None, None
    shape = struct.unpack_from(f"<{ndim}I", mv, MIN_HEADER)
    _check_shape(shape)
    length, crc = _TAIL.unpack_from(mv, MIN_HEADER + 4 * ndim)
    if KINDS[kind] == "entropy":
        lo, hi = _entropy_bound(shape)
        if not lo <= length <= hi:
            raise WireError(f"entropy payload length {length} is outside [{lo}, {hi}] for shape {shape}")
        frame = Frame("entropy", shape, pair.hex(), None, None, b"")
        return frame, header_len, header_len + length, crc
    expected = payload_size(shape, bits=bits, dtype=dtype or "float32")  # dtype unused if bits
    if length != expected:
        where = f"{bits} bits" if bits is not None else dtype
        raise WireError(f"payload length {length} does not match shape {shape} at {where} "
                        f"({expected} bytes)")
    frame = Frame(KINDS[kind], shape, pair.hex(), dtype, bits, b"")
    return frame, header_len, header_len + length, crc


def peek_header(buf: Buffer) -> tuple[int, int | None]:
    """(header_len, total_len) of the frame starting ``buf``, from its validated header.

    ``buf`` needs at least ``MIN_HEADER`` bytes; ``total_len`` is None until it holds
    ``header_len`` bytes. Trailing payload bytes are allowed and ignored.
    """
    _, header_len, total_len, _ = _parse_header(memoryview(buf).cast("B"))
    return header_len, total_len


def leading_dim(buf: Buffer) -> int:
    """shape[0] (the number of codes, N) of a frame whose header ``buf`` holds, validated."""
    frame, _, total_len, _ = _parse_header(memoryview(buf).cast("B"))
    if total_len is None:
        raise WireError(f"buffer of {len(buf)} bytes does not hold the whole frame header")
    return frame.shape[0]


def _checked_frame(buf: Buffer, expected_pair_id: str | None) -> Frame:
    """One whole frame, header, length, CRC and pair id checked, with its payload."""
    if expected_pair_id is not None:
        _check_pair_id(expected_pair_id)
    mv = memoryview(buf).cast("B")
    head, header_len, total_len, expected_crc = _parse_header(mv)
    if total_len is None:
        raise WireError(f"buffer of {len(mv)} bytes is too short for the {header_len}-byte "
                        f"header of a {(header_len - header_length(0)) // 4}-d frame")
    if len(mv) < total_len:
        raise WireError(f"frame truncated: {len(mv)} bytes, header + payload need {total_len}")
    if len(mv) > total_len:
        raise WireError(f"{len(mv) - total_len} trailing bytes after the {total_len}-byte frame")
    payload = bytes(mv[header_len:total_len])
    crc = zlib.crc32(payload)
    if crc != expected_crc:
        raise WireError(f"payload CRC-32 {crc:#010x} does not match the header's "
                        f"{expected_crc:#010x}: payload corrupted")
    if expected_pair_id is not None and head.pair_id != expected_pair_id:
        raise WireError(f"pair id {head.pair_id} does not match this edge half "
                        f"({expected_pair_id})")
    return replace(head, payload=payload)


def decode_streams(buf: Buffer, expected_pair_id: str | None = None) -> tuple[Frame, list[bytes]]:
    """One whole entropy frame -> (Frame, one stream per image); WireError for any other kind."""
    frame = _checked_frame(buf, expected_pair_id)
    if frame.kind != "entropy":
        raise WireError(f"frame holds {frame.kind} data, not entropy-coded streams")
    return frame, _split_streams(frame.payload, frame.shape[0])


def decode(buf: Buffer, expected_pair_id: str | None = None) -> tuple[Frame, Tensor]:
    """One whole frame -> (Frame, tensor): float32 symbols (analog) or int64 levels (digital)."""
    frame = _checked_frame(buf, expected_pair_id)
    if frame.kind == "entropy":
        raise WireError("frame holds entropy-coded streams: this edge expects a fixed-length code "
                        "(an entropy code's edge decodes them with its tables)")
    if frame.kind == "digital":
        return frame, unpack_bits(frame.payload, frame.bits, math.prod(frame.shape)).reshape(frame.shape)
    values = np.frombuffer(frame.payload, dtype=DTYPES[frame.dtype]).astype(np.float32)
    return frame, torch.from_numpy(values).reshape(frame.shape)
