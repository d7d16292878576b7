"""`bnpp infer`: the device half as a client of `bnpp serve` (protocol.py)."""


from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import timing
from ..errors import ServeError
from ..link.receiver import check_seed
from ..link.transmit import header_bytes
from .halves import load_device_dir
from .predict import check_condition, prepare_images
from .protocol import ANSWER_LENGTH, MAX_ANSWER, Request, encode_request

# ---- the device side ---------------------------------------------------------------------------
@dataclass
class Answer:
    """One answer from the server, with what the client measured.

    Attributes:
        predictions: per image of the request, (class name, probability) pairs, best first.
        batch: how many requests the server batched this one with (itself included).
        queue_ms: time the request waited in the server's queue, ms.
        edge_ms: the server's edge time for it (receive, channel, decoder + tail), ms.
        rtt_ms: the round trip the client measured, send to answer, ms.
        bytes_sent: what the client sent, bytes (request header, token and wire frame).
    """

    predictions: list[list[tuple[str, float]]]
    batch: int
    queue_ms: float
    edge_ms: float
    rtt_ms: float
    bytes_sent: int

    @property
    def network_ms(self) -> float:
        """Round trip minus the time the request spent in the server."""
        return max(0.0, self.rtt_ms - self.queue_ms - self.edge_ms)


def parse_address(address: str) -> tuple[str, int]:
    """'HOST:PORT' -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServeError(f"server address {address!r} is not HOST:PORT (e.g. 127.0.0.1:8470)")
    return host.strip("[]"), int(port)


class EdgeClient:
    """A blocking keep-alive connection to `bnpp serve` (one request at a time)."""

    def __init__(self, host: str, port: int, token: str | None = None, timeout_s: float = 30.0):
        self.host, self.port, self.token, self.timeout_s = host, port, token, timeout_s
        self._sock: socket.socket | None = None

    def _where(self) -> str:
        return f"the edge server at {self.host}:{self.port}"

    def connect(self) -> "EdgeClient":
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except socket.timeout:
            raise ServeError(f"cannot reach {self._where()}: no answer within {self.timeout_s:g} s") from None
        except OSError as e:
            raise ServeError(f"cannot reach {self._where()}: {e.strerror or e}",
                             hint="is `bnpp serve` running there?") from None
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "EdgeClient":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    def _recv(self, n: int) -> bytes:
        parts, got = [], 0
        while got < n:
            chunk = self._sock.recv(min(n - got, 2**20))
            if not chunk:
                raise ServeError(f"{self._where()} closed the connection without an answer")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def send(self, frame: bytes, request: Request) -> Answer:
        """One request (a wire frame of N codes) -> its Answer; ServeError if refused."""
        if self._sock is None:
            self.connect()
        data = encode_request(frame, request, self.token)
        t0 = time.perf_counter()
        try:
            self._sock.sendall(data)
            (length,) = ANSWER_LENGTH.unpack(self._recv(ANSWER_LENGTH.size))
            if length > MAX_ANSWER:
                raise ServeError(f"{self._where()} announced a {length}-byte answer (limit {MAX_ANSWER})")
            body = self._recv(length)
        except socket.timeout:
            self.close()
            raise ServeError(f"no answer from {self._where()} within {self.timeout_s:g} s") from None
        except OSError as e:
            self.close()
            raise ServeError(f"connection to {self._where()} failed: {e.strerror or e}") from None
        rtt_ms = 1e3 * (time.perf_counter() - t0)
        try:
            answer = json.loads(body)
        except ValueError:
            raise ServeError(f"{self._where()} sent an answer that is not JSON") from None
        if not answer.get("ok"):
            self.close()
            raise ServeError(f"{self._where()} refused the request: {answer.get('error')}")
        preds = [[(str(c), float(p)) for c, p in image] for image in answer["predictions"]]
        return Answer(preds, answer["batch"], answer["queue_ms"], answer["edge_ms"], rtt_ms, len(data))


@dataclass
class RemotePrediction:
    """One image's answer from `infer_images` (device here, edge on a server).

    Attributes:
        image: the image's path.
        top: (class name, probability) pairs, best first.
        request_bytes: what was sent, bytes: the request header (+ token) + the wire frame.
        frame_bytes: the wire frame, bytes: payload + wire header (predict's frame_bytes).
        payload_bytes: the code itself, bytes (predict's payload_bytes).
        device_ms: the device half's time for this image, ms.
        network_ms: the round trip minus the server's queue and edge time, ms.
        edge_ms: the server's edge time, ms.
        device_threads: torch threads the device half ran on (bnpp_cli.timing); default 1.
    """

    image: str
    top: list[tuple[str, float]]
    request_bytes: int
    frame_bytes: int
    payload_bytes: int
    device_ms: float
    network_ms: float
    edge_ms: float
    device_threads: int = timing.DEFAULT_THREADS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def infer_images(deploy_dir: str | Path, images: Sequence[str | Path], server: str,
                 condition: float | None = None, seed: int = 0, topk: int = 5,
                 token: str | None = None, timeout_s: float = 30.0,
                 condition_name: str | None = None, threads: int = timing.DEFAULT_THREADS) -> list[RemotePrediction]:
    """Device side of co-inference: head + encoder here, one request per image to `bnpp serve`.

    ``condition`` is in the channel's own unit (None: noiseless); a ``condition_name`` given
    ("snr_db", "erasure", "flip") is checked against the export's channel. Image i is sent with
    first_index = i, so the edge draws its noise from air_generator(seed, i) exactly as
    :func:`~bnpp_cli.deploy.predict.predict` does, and the answers are predict's. The device half
    runs on ``threads`` torch threads (bnpp_cli.timing)."""
    timing.check_threads(threads)
    host, port = parse_address(server)
    device = load_device_dir(deploy_dir)
    param = check_condition(device, condition, condition_name)
    check_seed(seed, 0, len(images))
    x_all = prepare_images(device, images)
    out = []
    with EdgeClient(host, port, token, timeout_s) as client, torch.inference_mode(), timing.threads(threads):
        for index, (path, x) in enumerate(zip(images, x_all)):
            t0 = time.perf_counter()
            frame = device.compress(x[None], param)
            device_ms = 1e3 * (time.perf_counter() - t0)
            answer = client.send(frame, Request(topk, condition, seed, index, close=index == len(images) - 1))
            out.append(RemotePrediction(str(path), answer.predictions[0], answer.bytes_sent, len(frame),
                                        len(frame) - header_bytes(device.code_shape), device_ms,
                                        answer.network_ms, answer.edge_ms, threads))
    return out
