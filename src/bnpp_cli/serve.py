"""`bnpp serve` / `bnpp infer`: the edge half as a network service, the device half as its client.

    device  image --DeviceHalf--> z --wire frame--> request  ==TCP==>  edge server
    edge    request --EdgeHalf.receive--> z --air interface: channel(z, param,
            air_generator(seed, first_index + i))--> z_hat --micro-batch--> decoder + tail
            --> softmax, top-k --> JSON answer  ==TCP==>  device

The edge applies the simulated air interface at the receiver exactly as `bnpp predict` does
(runtime.py): image i of a request is corrupted with ``air_generator(seed, first_index + i)`` and
the same channel parameter, so a device that numbers its images like predict gets predict's answer.

Why asyncio: an edge serves many devices, most of them idle or on slow links most of the time.
One event loop multiplexes thousands of such sockets for the price of a small object each, where
a thread per connection would cost a stack and a scheduler slot each. The model compute (which
would block the loop) runs in ONE worker thread; a batcher coroutine gathers the waiting requests
into one decoder + tail call of up to ``max_batch`` images (micro-batching): it starts the call
when the batch is full or when the oldest request has waited ``batch_window_ms``, and requests
that arrive while the worker is busy join the next call. Whether that pays depends on the tail:
see benchmarks/serve_load.py. The
server never executes or unpickles what it receives: frames are parsed with struct and numpy.

The request / answer protocol is specified in protocol.py.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import math
import os
import signal
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from . import wire
from .errors import BnppError, ExportError, ServeError
from .export import EDGE_FILE, EdgeHalf, load_edge
from .protocol import (ANSWER_LENGTH, LINGER_BYTES, LINGER_S, MAX_TOKEN, REQUEST_HEADER, ReadExactly, Request,
                       check_seed, parse_request_header, read_frame)
from .runtime import air_generator

# ---- what the server computes --------------------------------------------------------------
class Backend:
    """How an edge server frames, prepares and computes a request body.

    ``read_body`` runs on the event loop; ``prepare`` (one request -> inputs (N, ...) and channel
    parameters (N,)) and ``forward`` (a batch of inputs -> logits) run in the worker thread."""

    classes: list[str]
    max_images: int
    max_body_bytes: int

    async def read_body(self, readexactly: ReadExactly) -> bytes:
        return await read_frame(readexactly, self.max_body_bytes)

    def count_images(self, body: bytes) -> int:
        """Images in a body read by ``read_body`` (a wire frame: its shape[0]), for batching."""
        return max(1, struct.unpack_from("<I", body, wire.MIN_HEADER)[0])

    def prepare(self, body: bytes, request: Request) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, inputs: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class BnppBackend(Backend):
    """The edge half: wire frame -> air interface (as runtime.predict) -> decoder + tail."""

    def __init__(self, edge: EdgeHalf, max_images: int = 32):
        self.edge, self.max_images = edge, max_images
        self.classes = edge.classes or [str(i) for i in range(edge.meta["num_classes"])]
        per_image = wire.payload_size((1, *edge.code_shape), bits=edge.bits)
        self.max_body_bytes = wire.header_length(4) + max_images * per_image

    def prepare(self, body: bytes, request: Request) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.edge.receive(body)
        n = z.shape[0]
        if not 1 <= n <= self.max_images:
            raise ServeError(f"frame holds {n} images: valid is 1 to {self.max_images}")
        check_seed(request.seed, request.first_index, n)
        cond = request.condition
        param = 0.0 if cond is None else self.edge.param_from_condition(cond)
        z_hat = torch.cat([self.edge.channel(z[i:i + 1], param,
                                             generator=air_generator(request.seed, request.first_index + i))
                           for i in range(n)])
        return z_hat, torch.full((n,), param, dtype=torch.float64)

    def forward(self, inputs: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return self.edge(inputs, params)


# ---- the server --------------------------------------------------------------------------------
@dataclass
class ServeConfig:
    deploy_dir: str = "deploy"
    host: str = "127.0.0.1"  # loopback: opening the edge to a network is an explicit choice
    port: int = 8470
    token: str | None = None  # shared secret; None = no authentication
    max_images: int = 32  # per request: bounds a frame at max_images codes
    max_batch: int = 32  # images per decoder + tail call
    batch_window_ms: float = 2.0  # how long the oldest waiting request may wait for company
    read_timeout_s: float = 10.0  # a request must arrive whole within this time of its first byte
    idle_timeout_s: float = 300.0  # keep-alive connections idle longer than this are closed
    max_connections: int = 1024  # beyond this, new connections are closed at once

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ServeError(f"port {self.port} is out of range: valid is 0 (any free port) to 65535")
        for name in ("max_images", "max_batch", "max_connections"):
            if getattr(self, name) < 1:
                raise ServeError(f"{name} {getattr(self, name)} must be at least 1")
        for name in ("batch_window_ms", "read_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0 and (value > 0 or name == "batch_window_ms")):
                raise ServeError(f"{name} {value} must be a positive number of {name.rsplit('_', 1)[1]}")
        if self.token is not None and not 0 < len(self.token.encode()) <= MAX_TOKEN:
            raise ServeError(f"the token must be 1 to {MAX_TOKEN} bytes long")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "token"}


@dataclass
class ServeStats:
    """Counters only, so a long-running server's memory does not grow with traffic."""

    connections: int = 0
    requests: int = 0
    images: int = 0
    errors: int = 0
    batches: int = 0
    edge_ms_total: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean_batch"] = self.images / self.batches if self.batches else 0.0
        return d


@dataclass
class _Job:
    body: bytes
    request: Request
    future: asyncio.Future
    received: float = field(default_factory=time.perf_counter)


class EdgeServer:
    """An asyncio server over a Backend; ``serve()`` runs until ``stop()``."""

    def __init__(self, config: ServeConfig, backend: Backend,
                 on_event: Callable[[dict[str, Any]], None] | None = None):
        self.config, self.backend, self.on_event = config, backend, on_event
        self.token = config.token.encode() if config.token else None
        self.stats = ServeStats()
        self.port: int | None = None
        self._jobs: collections.deque[_Job] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def stop(self) -> None:
        """Ask a running server to stop (safe from any thread or a signal handler)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def serve(self, ready: Callable[[str, int], None] | None = None) -> ServeStats:
        self._loop, self._stop, self._wake = asyncio.get_running_loop(), asyncio.Event(), asyncio.Event()
        self._conns: set[asyncio.Task] = set()
        try:
            server = await asyncio.start_server(self._connection, self.config.host, self.config.port)
        except OSError as e:
            reason = os.strerror(e.errno).lower() if e.errno else str(e)
            raise ServeError(f"cannot listen on {self.config.host}:{self.config.port}: {reason}") from None
        self.port = server.sockets[0].getsockname()[1]
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnpp-edge")
        batcher = asyncio.create_task(self._batcher(executor))
        if ready is not None:
            ready(self.config.host, self.port)
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in (*self._conns, batcher):
                task.cancel()
            await asyncio.gather(*self._conns, batcher, return_exceptions=True)
            await server.wait_closed()
            executor.shutdown(wait=True)  # an in-flight tail call finishes; nothing new starts
        return self.stats

    # -- per connection (event loop) --------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._conns) >= self.config.max_connections:
            writer.close()
            return
        self._conns.add(task)
        self.stats.connections += 1
        try:
            while True:
                try:
                    first = await asyncio.wait_for(reader.readexactly(1), self.config.idle_timeout_s)
                except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return  # idle too long, or the device hung up between requests
                try:
                    body, request = await asyncio.wait_for(self._read_request(first, reader),
                                                           self.config.read_timeout_s)
                except asyncio.TimeoutError:
                    await self._refuse(reader, writer, f"request not received within "
                                                       f"{self.config.read_timeout_s:g} s")
                    return
                except asyncio.IncompleteReadError as e:
                    await self._refuse(reader, writer, f"request truncated: the connection closed "
                                                       f"{len(e.partial)} bytes into a read of {e.expected}")
                    return
                except BnppError as e:  # header, token or frame framing
                    await self._refuse(reader, writer, str(e))
                    return
                job = _Job(body, request, self._loop.create_future())
                self._jobs.append(job)
                self._wake.set()
                answer = await job.future
                await self._answer(writer, answer)
                if request.close:
                    return
        except (ConnectionError, asyncio.TimeoutError):
            return
        finally:
            self._conns.discard(task)
            writer.close()

    async def _read_request(self, first: bytes, reader: asyncio.StreamReader) -> tuple[bytes, Request]:
        request, tok_len = parse_request_header(first + await reader.readexactly(REQUEST_HEADER - 1))
        token = await reader.readexactly(tok_len)
        if self.token is not None and not hmac.compare_digest(token, self.token):
            raise ServeError("authentication failed: wrong or missing token")
        return await self.backend.read_body(reader.readexactly), request

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: str) -> None:
        """Error answer, then a lingering close: half-close and discard what the device still sends
        (bounded in bytes and time), so that unread input does not reset the answer away."""
        await self._answer(writer, self._error(message))
        if writer.can_write_eof():
            writer.write_eof()
        deadline, drained = self._loop.time() + LINGER_S, 0
        while drained < LINGER_BYTES and (left := deadline - self._loop.time()) > 0:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), left)
            except asyncio.TimeoutError:
                return
            if not chunk:
                return
            drained += len(chunk)

    def _error(self, message: str) -> dict[str, Any]:
        self.stats.errors += 1
        self._emit({"event": "error", "error": message})
        return {"ok": False, "error": message}

    async def _answer(self, writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
        body = json.dumps(answer, separators=(",", ":")).encode()
        writer.write(ANSWER_LENGTH.pack(len(body)) + body)
        await asyncio.wait_for(writer.drain(), self.config.read_timeout_s)

    def _emit(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event)

    # -- batching (event loop) and compute (worker thread) ------------------------------------
    async def _batcher(self, executor: ThreadPoolExecutor) -> None:
        window, max_batch = self.config.batch_window_ms / 1e3, self.config.max_batch
        count = self.backend.count_images
        while True:
            await self._wake.wait()
            # wait for company while the batch has room and another connected device could still
            # send (each connection has at most one request queued), at most the window after the
            # oldest request arrived: a lone device pays no batching delay
            deadline = self._jobs[0].received + window
            while (len(self._jobs) < len(self._conns) and sum(count(j.body) for j in self._jobs) < max_batch
                   and (left := deadline - time.perf_counter()) > 0):
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            jobs = [self._jobs.popleft()]
            images = count(jobs[0].body)
            while self._jobs and images + count(self._jobs[0].body) <= max_batch:
                images += count(self._jobs[0].body)
                jobs.append(self._jobs.popleft())
            if self._jobs:  # the wake-up event is set exactly while requests wait
                self._wake.set()
            else:
                self._wake.clear()
            answers, images, edge_ms = await self._loop.run_in_executor(executor, self._compute, jobs)
            if images:
                self.stats.batches += 1
                self.stats.images += images
                self.stats.edge_ms_total += edge_ms
            for job, answer in zip(jobs, answers):
                self.stats.requests += 1
                self.stats.errors += not answer["ok"]
                self._emit({"event": "request", **{k: v for k, v in answer.items() if k != "predictions"}})
                if not job.future.done():
                    job.future.set_result(answer)

    def _compute(self, jobs: list[_Job]) -> tuple[list[dict[str, Any]], int, float]:
        """Worker thread: prepare each request, one forward for all of them, split the answers.

        Returns (answers, images computed, edge ms)."""
        start = time.perf_counter()
        answers: list[dict[str, Any]] = [{} for _ in jobs]
        ready, images = [], 0
        with torch.inference_mode():
            for k, job in enumerate(jobs):
                try:
                    ready.append((k, *self.backend.prepare(job.body, job.request)))
                except BnppError as e:
                    answers[k] = {"ok": False, "error": str(e)}
            try:
                if ready:
                    probs = self.backend.forward(torch.cat([r[1] for r in ready]),
                                                 torch.cat([r[2] for r in ready])).softmax(1)
                    images = probs.shape[0]
            except Exception as e:  # a bug must not take the server down: answer, keep serving
                message = f"edge computation failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                for k, *_ in ready:
                    answers[k] = {"ok": False, "error": message}
                ready = []
        row = 0
        for k, inputs, _ in ready:
            n, topk = inputs.shape[0], min(jobs[k].request.topk, probs.shape[1])
            p, i = probs[row:row + n].topk(topk, dim=1)
            row += n
            answers[k] = {"ok": True, "predictions": [[[self.backend.classes[c], v] for v, c in zip(pv, iv)]
                                                       for pv, iv in zip(p.tolist(), i.tolist())],
                          "images": n, "batch": images}
        edge_ms = 1e3 * (time.perf_counter() - start)
        for job, answer in zip(jobs, answers):
            answer["queue_ms"] = round(1e3 * (start - job.received), 3)
            answer["edge_ms"] = round(edge_ms, 3)
        return answers, images, edge_ms


def load_backend(config: ServeConfig) -> BnppBackend:
    """The edge half of a deploy directory (device.safetensors is not needed)."""
    d = Path(config.deploy_dir)
    if not d.is_dir():
        raise ExportError(f"deploy directory '{d}' does not exist", hint="make one with `bnpp export RUN --out DIR`")
    return BnppBackend(load_edge(d / EDGE_FILE), max_images=config.max_images)


def run_server(config: ServeConfig, backend: Backend | None = None,
               ready: Callable[[str, int], None] | None = None,
               on_event: Callable[[dict[str, Any]], None] | None = None) -> ServeStats:
    """Serve until SIGINT or SIGTERM (main thread), then shut down cleanly; returns the counters."""
    server = EdgeServer(config, backend or load_backend(config), on_event)

    async def main() -> ServeStats:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        try:
            return await server.serve(ready)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())


class ServerThread:
    """An EdgeServer on its own event loop in a background thread (tests, benchmarks)::

        with ServerThread(ServeConfig(deploy_dir=..., port=0)) as server:
            EdgeClient("127.0.0.1", server.port) ...
    """

    def __init__(self, config: ServeConfig, backend: Backend | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None):
        self.server = EdgeServer(config, backend or load_backend(config), on_event)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bnpp-serve", daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(lambda host, port: self._ready.set()))
        except BaseException as e:  # handed to the starting thread
            self._error = e
            self._ready.set()

    def start(self) -> "ServerThread":
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.stop()
        self._thread.join(timeout_s)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
