"""The `bnpp serve` request protocol: what a device sends the edge server, and what it answers.

Protocol version 1, all integers little-endian. A connection carries any number of requests
(keep-alive), each answered before the next is read.

Request::

    offset  size  field
    0       4     magic b"BNPQ"
    4       1     protocol version (1)
    5       1     flags: bit 0 = close the connection after this answer; other bits must be 0
    6       2     top-k, uint16 >= 1 (clipped to the number of classes)
    8       8     channel condition, float64: PSNR in dB (analog) or bit probability (digital),
                  in the units of `bnpp predict --snr / --erasure`; NaN = noiseless link
    16      8     seed, int64 (predict's --seed)
    24      4     first index, uint32: image i of the frame uses link.receiver.air_generator(seed, first_index + i)
    28      2     token length T, uint16, 0..256
    30      T     token bytes (checked with hmac.compare_digest when the server has a token)
    30+T    ...   one wire frame (wire.py, format version 1): N >= 1 codes of this export

Answer::

    0       4     body length L, uint32 (at most 16 MiB)
    4       L     UTF-8 JSON object:
                  {"ok": true, "predictions": [[[class, probability], ...] per image, best first],
                   "images": N, "batch": images in the tail call, "queue_ms": ..., "edge_ms": ...}
                  or {"ok": false, "error": "one line"}

Refused at once, from the first 4 bytes: anything that does not start with the magic (a plain
HTTP request gets a short ``HTTP/1.1 400`` answer that says what this port speaks, then the
connection closes). A frame whose symbols are not finite (NaN, Inf) is refused: answers are
strict JSON, never ``NaN``.

Limits: a frame larger than ``max_images`` codes of this export is refused from its header,
before its payload is read; a request must arrive whole within ``read_timeout_s`` of its first
byte; a keep-alive connection idle for ``idle_timeout_s`` is closed; at most ``max_connections``
at once. After an error in the request header or framing the server answers and closes the
connection (the stream is no longer in step); after an error in a whole frame (pair id, CRC,
shape, condition) it answers and keeps the connection.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Awaitable, Callable

from ..errors import ServeError
from ..link import wire

MAGIC = b"BNPQ"
VERSION = 1
FLAG_CLOSE = 1
_REQUEST = struct.Struct("<4sBBHdqIH")  # magic .. token length: 30 bytes
REQUEST_HEADER = _REQUEST.size
ANSWER_LENGTH = struct.Struct("<I")
MAX_TOKEN = 256  # bytes: room for any sensible shared secret
MAX_ANSWER = 16 * 2**20  # the client refuses longer answers (a top-k list is tiny)
LINGER_S, LINGER_BYTES = 0.25, 2**20  # after a refusal: how long / how much input is discarded

ReadExactly = Callable[[int], Awaitable[bytes]]


@dataclass(frozen=True)
class Request:
    """The request header fields (the token is checked and dropped by the server).

    Attributes:
        topk: classes to answer per image; default 5.
        condition: the link condition in the channel's units (dB PSNR, or a bit probability);
            default None (NaN on the wire): noiseless.
        seed: seed of the server's channel noise; default 0.
        first_index: index of the frame's first image, for the answer's order; default 0.
        close: close the connection after answering; default False (keep-alive).
    """

    topk: int = 5
    condition: float | None = None  # None (NaN on the wire) = noiseless
    seed: int = 0
    first_index: int = 0
    close: bool = False


def encode_request(frame: bytes, request: Request, token: str | bytes | None = None) -> bytes:
    """Request header + token + wire frame, ready to send."""
    tok = token.encode() if isinstance(token, str) else (token or b"")
    if len(tok) > MAX_TOKEN:
        raise ServeError(f"token of {len(tok)} bytes is too long (at most {MAX_TOKEN})")
    if not 1 <= request.topk <= 0xFFFF:
        raise ServeError(f"top-k {request.topk} is out of range: valid is 1 to 65535")
    if not 0 <= request.first_index <= 0xFFFFFFFF:
        raise ServeError(f"first index {request.first_index} is out of range: valid is 0 to 2^32 - 1")
    if not -(2**63) <= request.seed < 2**63:
        raise ServeError(f"seed {request.seed} does not fit in a signed 64-bit integer")
    cond = math.nan if request.condition is None else float(request.condition)
    flags = FLAG_CLOSE if request.close else 0
    return _REQUEST.pack(MAGIC, VERSION, flags, request.topk, cond, request.seed, request.first_index,
                         len(tok)) + tok + frame


HTTP_METHODS = (b"GET ", b"HEAD", b"POST", b"PUT ", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC")


def is_http(head: bytes) -> bool:
    """Do the first 4 bytes of a request look like an HTTP request line?"""
    return head[:4] in HTTP_METHODS


def check_magic(head: bytes) -> None:
    """The first 4 bytes of a request: anything but the magic is refused before more is read."""
    if head[:4] != MAGIC:
        raise ServeError(f"bad request magic {head[:4]!r} (expected {MAGIC!r}): not a bnpp request")


def http_refusal() -> bytes:
    """What a plain HTTP client gets: a 400 whose body says what this port speaks."""
    text = b"bnpp serve speaks its own binary protocol (bnpp infer), not HTTP\n"
    return (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(text)).encode() + b"\r\n\r\n" + text)


def parse_request_header(buf: bytes) -> tuple[Request, int]:
    """The fixed request header -> (Request, token length); ServeError names the bad field."""
    magic, version, flags, topk, cond, seed, first, tok_len = _REQUEST.unpack(buf)
    if magic != MAGIC:
        raise ServeError(f"bad request magic {magic!r} (expected {MAGIC!r})")
    if version != VERSION:
        raise ServeError(f"unsupported protocol version {version} (this server speaks {VERSION})")
    if flags & ~FLAG_CLOSE:
        raise ServeError(f"unknown request flags {flags:#04x} (only bit 0, close, is defined)")
    if topk < 1:
        raise ServeError("top-k 0 is out of range: valid is 1 to 65535")
    if tok_len > MAX_TOKEN:
        raise ServeError(f"token length {tok_len} is over the limit of {MAX_TOKEN} bytes")
    return Request(topk, None if math.isnan(cond) else cond, seed, first, bool(flags & FLAG_CLOSE)), tok_len


async def read_frame(readexactly: ReadExactly, max_bytes: int) -> bytes:
    """One wire frame from a stream; refused from its header when it is over ``max_bytes``."""
    head = await readexactly(wire.MIN_HEADER)
    header_len, _ = wire.peek_header(head)
    head += await readexactly(header_len - len(head))
    _, total = wire.peek_header(head)
    if total > max_bytes:
        raise ServeError(f"frame of {total} bytes is over this server's limit of {max_bytes} bytes")
    return head + await readexactly(total - header_len)
