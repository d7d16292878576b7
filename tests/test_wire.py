"""Wire format: exact round trips, sizes, and a WireError with a telling message for every defect."""

from __future__ import annotations

import random
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import torch

from bnpp_cli.errors import WireError
from bnpp_cli.link.wire import MAX_ELEMENTS, MIN_HEADER, Frame, decode, encode_analog, encode_digital, header_length, pack_bits, payload_size, peek_header, unpack_bits

PAIR = "0123456789abcdef0123456789abcdef"
OTHER = "fedcba9876543210fedcba9876543210"


def _z(shape=(2, 3, 5, 7), seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _levels(shape, bits, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 2**bits, shape, generator=g, dtype=torch.int64)
    flat = q.view(-1)
    flat[0], flat[-1] = 0, 2**bits - 1  # the extremes always appear
    return q


def _header(kind=0, code=0, shape=(1, 4, 2, 2), length=None, crc=0, magic=b"BNPP", version=1):
    if length is None:
        length = payload_size(shape, bits=code) if kind == 1 else payload_size(shape)
    return (struct.pack("<4sBBBB16s", magic, version, kind, code, len(shape), bytes.fromhex(PAIR))
            + struct.pack(f"<{len(shape)}I", *shape) + struct.pack("<II", length, crc))


# --- round trips -----------------------------------------------------------------------------

def test_analog_float32_round_trip_is_exact():
    z = _z()
    buf = encode_analog(z, PAIR)
    frame, z_hat = decode(buf, expected_pair_id=PAIR)
    assert z_hat.dtype == torch.float32 and torch.equal(z_hat, z)
    assert (frame.kind, frame.shape, frame.pair_id, frame.dtype, frame.bits) == (
        "analog", (2, 3, 5, 7), PAIR, "float32", None)


def test_analog_float16_round_trip_equals_half_precision():
    z = _z()
    frame, z_hat = decode(encode_analog(z, PAIR, dtype="float16"))
    assert frame.dtype == "float16" and z_hat.dtype == torch.float32
    assert torch.equal(z_hat, z.half().float())
    assert frame.payload_bytes == z.numel() * 2


@pytest.mark.parametrize("bits", [1, 2, 4, 7, 8, 12, 16])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 3), (13,)])  # odd counts: padding
def test_digital_round_trip_is_exact(bits, shape):
    q = _levels(shape, bits, seed=bits)
    buf = encode_digital(q, bits, PAIR)
    frame, q_hat = decode(buf, expected_pair_id=PAIR)
    assert q_hat.dtype == torch.int64 and torch.equal(q_hat, q)
    assert (frame.kind, frame.bits, frame.dtype, frame.shape) == ("digital", bits, None, shape)
    assert frame.payload_bytes == payload_size(shape, bits=bits) == -(-q.numel() * bits // 8)
    assert frame.nbytes == len(buf) == header_length(len(shape)) + frame.payload_bytes


def test_decode_accepts_bytearray_and_memoryview():
    buf = encode_digital(_levels((3, 5), 4), 4, PAIR)
    for view in (bytearray(buf), memoryview(buf)):
        assert torch.equal(decode(view)[1], decode(buf)[1])


def test_empty_tensor_round_trips():
    frame, q = decode(encode_digital(torch.zeros(0, 4, dtype=torch.int64), 3, PAIR))
    assert q.shape == (0, 4) and frame.payload == b""


def test_encode_takes_tensors_that_require_grad():
    z = _z().requires_grad_()
    assert torch.equal(decode(encode_analog(z, PAIR))[1], z.detach())


def test_readers_ignore_the_padding_bits():
    q = torch.tensor([5, 2, 7])  # 9 bits at 3 bits each: 7 padding bits
    buf = bytearray(encode_digital(q, 3, PAIR))
    buf[-1] |= 0x7F
    struct.pack_into("<I", buf, 32, zlib.crc32(bytes(buf[36:])))
    assert torch.equal(decode(buf)[1], q)


# --- sizes and layout ------------------------------------------------------------------------

def test_sizes_of_a_small_code():
    shape = (1, 4, 2, 2)
    assert payload_size(shape, bits=8) == 16
    assert payload_size(shape) == 64
    assert payload_size(shape, dtype="float16") == 32
    assert payload_size(shape, bits=3) == 6  # 48 bits
    assert payload_size(shape, bits=5) == 10  # 80 bits
    assert header_length(4) == 48 and MIN_HEADER == 24
    buf = encode_digital(torch.full(shape, 255), 8, PAIR)
    assert len(buf) == header_length(4) + 16
    assert len(encode_analog(torch.zeros(shape), PAIR)) == header_length(4) + 64


def test_byte_layout_matches_the_spec():
    q = torch.tensor([[1, 2, 3]])
    buf = encode_digital(q, 4, PAIR)
    assert buf[:4] == b"BNPP" and buf[4:8] == bytes([1, 1, 4, 2])
    assert buf[8:24] == bytes.fromhex(PAIR)
    assert struct.unpack_from("<2I", buf, 24) == (1, 3)
    payload = bytes([0x12, 0x30])  # MSB first: 0001 0010 | 0011 + 4 zero bits of padding
    assert struct.unpack_from("<2I", buf, 32) == (2, zlib.crc32(payload))
    assert buf[40:] == payload
    z = torch.tensor([0.5])
    assert encode_analog(z, PAIR)[-4:] == struct.pack("<f", 0.5)
    assert encode_analog(z, PAIR)[4:8] == bytes([1, 0, 0, 1])


def test_pack_bits_is_msb_first():
    assert pack_bits(np.array([1, 0, 1]), 1) == bytes([0b10100000])
    assert pack_bits(torch.tensor([0xABC, 0x123]), 12) == bytes([0xAB, 0xC1, 0x23])
    assert unpack_bits(bytes([0xAB, 0xC1, 0x23]), 12, 2).tolist() == [0xABC, 0x123]


def test_peek_header_reads_a_stream_in_three_steps():
    buf = encode_analog(_z((1, 2, 3)), PAIR)
    assert peek_header(buf[:MIN_HEADER]) == (header_length(3), None)
    assert peek_header(buf[:header_length(3)]) == (header_length(3), len(buf))
    assert peek_header(buf) == (header_length(3), len(buf))
    with pytest.raises(WireError, match="too short"):
        peek_header(buf[:MIN_HEADER - 1])
    with pytest.raises(WireError, match="bad magic"):
        peek_header(b"XXXX" + buf[4:MIN_HEADER])


def test_pack_unpack_one_million_levels_under_a_second():
    q = torch.randint(0, 256, (1_000_000,), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    data = pack_bits(q, 8)
    back = unpack_bits(data, 8, q.numel())
    assert time.perf_counter() - start < 1.0
    assert len(data) == 1_000_000 and torch.equal(back, q)


def test_unpack_crosses_chunk_boundaries():
    q = _levels((2**20 + 13,), 7, seed=3)
    assert torch.equal(unpack_bits(pack_bits(q, 7), 7, q.numel()), q)


# --- corruption and bad input ----------------------------------------------------------------

def _frame():
    return bytearray(encode_digital(_levels((1, 4, 2, 2), 8), 8, PAIR))


def test_wrong_magic():
    buf = _frame()
    buf[:4] = b"XXXX"
    with pytest.raises(WireError, match=r"bad magic b'XXXX' \(expected b'BNPP'\)"):
        decode(buf)


def test_unsupported_version():
    buf = _frame()
    buf[4] = 3
    with pytest.raises(WireError, match="unsupported format version 3"):
        decode(buf)
    buf[4] = 2  # version 2 is for entropy frames only
    with pytest.raises(WireError, match="kind digital in a version-2 frame"):
        decode(buf)


@pytest.mark.parametrize("offset, value, message", [
    (5, 3, "bad kind 3"),
    (5, 2, "kind entropy in a version-1 frame"),
    (6, 0, "bad bits per level 0"),
    (6, 17, "bad bits per level 17"),
    (7, 0, "bad ndim 0"),
    (7, 9, "bad ndim 9"),
])
def test_bad_header_fields(offset, value, message):
    buf = _frame()
    buf[offset] = value
    with pytest.raises(WireError, match=message):
        decode(buf)


def test_bad_analog_dtype_code():
    buf = bytearray(encode_analog(_z(), PAIR))
    buf[6] = 2
    with pytest.raises(WireError, match="bad dtype code 2"):
        decode(buf)


def test_truncated_by_one_byte():
    with pytest.raises(WireError, match="truncated: 63 bytes, header \\+ payload need 64"):
        decode(_frame()[:-1])


def test_header_cut_short():
    with pytest.raises(WireError, match="too short for the 48-byte header of a 4-d frame"):
        decode(_frame()[:40])


def test_one_extra_byte():
    with pytest.raises(WireError, match="1 trailing bytes after the 64-byte frame"):
        decode(_frame() + b"\0")


def test_payload_bit_flip_fails_the_crc():
    buf = _frame()
    buf[-3] ^= 0x10
    with pytest.raises(WireError, match="CRC-32 .* payload corrupted"):
        decode(buf)


def test_wrong_pair_id():
    with pytest.raises(WireError, match=f"pair id {PAIR} does not match this edge half \\({OTHER}\\)"):
        decode(_frame(), expected_pair_id=OTHER)


def test_payload_length_must_match_the_shape():
    buf = _header(kind=1, code=8, length=10) + bytes(10)
    with pytest.raises(WireError, match=r"payload length 10 does not match shape \(1, 4, 2, 2\) "
                                        r"at 8 bits \(16 bytes\)"):
        decode(buf)
    with pytest.raises(WireError, match=r"at float32 \(64 bytes\)"):
        decode(_header(length=10) + bytes(10))


@pytest.mark.parametrize("shape", [(2**32 - 1,) * 8, (2**14, 2**14, 2)])
def test_huge_shape_is_refused_without_allocating(shape):
    tracemalloc.start()
    with pytest.raises(WireError, match=f"more than the limit {MAX_ELEMENTS}"):
        decode(_header(shape=shape, length=0))
    assert tracemalloc.get_traced_memory()[1] < 1 << 20
    tracemalloc.stop()


def test_largest_shape_with_a_short_buffer_is_refused_without_allocating():
    shape = (2**14, 2**14)  # exactly MAX_ELEMENTS: valid header, 1 GiB payload claimed
    tracemalloc.start()
    with pytest.raises(WireError, match="truncated"):
        decode(_header(shape=shape) + bytes(100))
    assert tracemalloc.get_traced_memory()[1] < 1 << 20
    tracemalloc.stop()


def test_random_bytes_always_give_wire_error():
    rng = random.Random(0)
    for _ in range(200):
        buf = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        with pytest.raises(WireError):
            decode(buf)


def test_random_bytes_behind_a_valid_prefix_always_give_wire_error():
    rng = random.Random(1)
    for _ in range(200):
        head = b"BNPP\x01" + bytes([rng.randrange(2), rng.randint(0, 17), rng.randint(0, 9)])
        buf = head + bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
        with pytest.raises(WireError):
            decode(buf)


def test_mutated_frames_decode_or_give_wire_error():
    rng = random.Random(2)
    good = encode_digital(_levels((2, 3, 5), 5), 5, PAIR)
    for _ in range(300):
        buf = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        try:
            decode(buf[:rng.randint(len(buf) - 2, len(buf))])
        except WireError:
            pass


def test_levels_out_of_range_on_encode():
    with pytest.raises(WireError, match=r"levels out of range for 4 bits: min 0, max 16 "
                                        r"\(valid 0 to 15\)"):
        encode_digital(torch.tensor([0, 16]), 4, PAIR)
    with pytest.raises(WireError, match="min -1"):
        encode_digital(torch.tensor([-1, 3]), 4, PAIR)


@pytest.mark.parametrize("call, message", [
    (lambda: encode_digital(torch.tensor([0.5]), 8, PAIR), "levels must be integers"),
    (lambda: encode_digital(torch.tensor([1]), 0, PAIR), "bits 0 is out of range"),
    (lambda: encode_digital(torch.tensor([1]), 17, PAIR), "bits 17 is out of range"),
    (lambda: encode_digital(torch.tensor(1), 8, PAIR), "bad ndim 0"),
    (lambda: encode_analog(torch.tensor([1]), PAIR), "must be a floating-point tensor"),
    (lambda: encode_analog(torch.zeros(1), PAIR, dtype="int8"), "unknown dtype 'int8'"),
    (lambda: encode_analog(torch.zeros((1,) * 9), PAIR), "bad ndim 9"),
    (lambda: encode_analog(torch.zeros(1), PAIR.upper()), "not 32 lowercase hex"),
    (lambda: encode_analog(torch.zeros(1), PAIR[:-1]), "not 32 lowercase hex"),
    (lambda: decode(_frame(), expected_pair_id="xyz"), "not 32 lowercase hex"),
    (lambda: unpack_bits(b"\0", 8, 2), "1 bytes do not hold 2 levels at 8 bits"),
    (lambda: payload_size((-1, 2)), "non-negative"),
])
def test_bad_arguments(call, message):
    with pytest.raises(WireError, match=message):
        call()


def test_frame_sizes():
    frame = Frame("digital", (1, 4, 2, 2), PAIR, None, 8, bytes(16))
    assert (frame.header_bytes, frame.payload_bytes, frame.nbytes) == (48, 16, 64)
