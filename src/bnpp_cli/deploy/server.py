"""`bnpp serve` / `bnpp infer`: the edge half as a network service, the device half as its client.

    device  image --DeviceHalf--> z --wire frame--> request  ==TCP==>  edge server
    edge    request --EdgeHalf.receive--> z --air interface: channel(z, param,
            air_generator(seed, first_index + i))--> z_hat --micro-batch--> decoder + tail
            --> softmax, top-k --> JSON answer  ==TCP==>  device

The edge applies the simulated air interface at the receiver exactly as `bnpp predict` does
(link.receiver): image i of a request is corrupted with ``air_generator(seed, first_index + i)`` and
the same channel parameter, so a device that numbers its images like predict gets predict's answer.

Why asyncio: an edge serves many devices, most of them idle or on slow links most of the time.
One event loop multiplexes thousands of such sockets for the price of a small object each, where
a thread per connection would cost a stack and a scheduler slot each. The model compute (which
would block the loop) runs in ONE worker thread; a batcher coroutine gathers the waiting requests
into one decoder + tail call of up to ``max_batch`` images (micro-batching, batcher.py). The
server never executes or unpickles what it receives: frames are parsed with struct and numpy.

This module is the connections: accept, read a request whole (protocol.py), queue it, answer,
refuse. What is computed is backend.py; how requests are grouped is batcher.py.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, Callable

from .. import timing
from ..errors import BnppError, ServeError
from .backend import Backend, BnppBackend
from .batcher import Job, MicroBatcher
from .halves import load_edge_dir
from .protocol import (ANSWER_LENGTH, LINGER_BYTES, LINGER_S, MAGIC, MAX_TOKEN, REQUEST_HEADER, Request, check_magic,
                       http_refusal, is_http, parse_request_header)


class _HttpRequest(Exception):
    """A plain HTTP request reached the port: answered in HTTP, then closed."""

# ---- the server --------------------------------------------------------------------------------
@dataclass
class ServeConfig:
    """How `serve` runs the edge half: address, authentication, batching and limits.

    Attributes:
        deploy_dir: the directory made by `export_halves`; default "deploy".
        host: address to listen on; default "127.0.0.1": opening the edge to a network is an
            explicit choice.
        port: TCP port; default 8470.
        token: shared secret between devices and the edge; default None: no authentication.
        max_images: images per request; default 32, which bounds a frame at 32 codes.
        max_batch: images per decoder + tail call; default 32.
        batch_window_ms: how long the oldest waiting request may wait for company, ms; default 2.0.
        read_timeout_s: a request must arrive whole within this many seconds of its first byte;
            default 10.0.
        idle_timeout_s: keep-alive connections idle longer than this are closed, s; default 300.0.
        max_connections: beyond this many, new connections are closed at once; default 1024.
        threads: torch threads of the edge's worker (decoder + tail); default 1 (bnpp_cli.timing:
            the edge times it reports are not inflated by other work; raise it for big batches).
    """

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
    threads: int = timing.DEFAULT_THREADS  # the edge worker's torch threads

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
        timing.check_threads(self.threads)
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


def _worker_threads(n: int) -> None:
    """The edge worker's torch threads (set in the worker, the thread that computes)."""
    import torch

    torch.set_num_threads(n)


class EdgeServer:
    """An asyncio server over a Backend; ``serve()`` runs until ``stop()``."""

    def __init__(self, config: ServeConfig, backend: Backend,
                 on_event: Callable[[dict[str, Any]], None] | None = None):
        self.config, self.backend, self.on_event = config, backend, on_event
        self.token = config.token.encode() if config.token else None
        self.stats = ServeStats()
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def stop(self) -> None:
        """Ask a running server to stop (safe from any thread or a signal handler)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def serve(self, ready: Callable[[str, int], None] | None = None) -> ServeStats:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        self._conns: set[asyncio.Task] = set()
        self._batcher = MicroBatcher(self.backend, self.config.max_batch, self.config.batch_window_ms,
                                     self._record)
        try:
            server = await asyncio.start_server(self._connection, self.config.host, self.config.port)
        except OSError as e:
            reason = os.strerror(e.errno).lower() if e.errno else str(e)
            raise ServeError(f"cannot listen on {self.config.host}:{self.config.port}: {reason}") from None
        self.port = server.sockets[0].getsockname()[1]
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bnpp-edge", initializer=_worker_threads,
                                      initargs=(self.config.threads,))
        batcher = asyncio.create_task(self._batcher.run(executor, lambda: len(self._conns)))
        if ready is not None:
            ready(self.config.host, self.port)
        try:
            await self._stop.wait()
        finally:
            server.close()
            batcher.cancel()
            # connections accepted from the backlog after close() are refused at their start; cancel
            # until none is left (a connection left open would wait on the stopped batcher forever)
            while self._conns:
                pending = list(self._conns)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                self._conns.difference_update(pending)
            await asyncio.gather(batcher, return_exceptions=True)
            await server.wait_closed()
            executor.shutdown(wait=True)  # an in-flight tail call finishes; nothing new starts
        return self.stats

    # -- per connection (event loop) --------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._conns) >= self.config.max_connections or self._stop.is_set():
            writer.close()  # over the limit, or stopping: closed at once, the device sees why
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
                except _HttpRequest:
                    self._error("plain HTTP request refused (this port speaks the bnpp protocol)")
                    writer.write(http_refusal())
                    await asyncio.wait_for(writer.drain(), self.config.read_timeout_s)
                    return
                if self._stop.is_set():
                    return  # stopping: the batcher takes nothing new
                job = Job(body, request, self._loop.create_future())
                self._batcher.submit(job)
                answer = await job.future
                await self._answer(writer, answer)
                if request.close:
                    return
        except (OSError, asyncio.TimeoutError):  # the device went away (reset, not connected): nothing to answer
            return
        except asyncio.CancelledError:  # the server is stopping: the device sees the connection close
            return
        finally:
            self._conns.discard(task)
            writer.close()

    async def _read_request(self, first: bytes, reader: asyncio.StreamReader) -> tuple[bytes, Request]:
        head = first + await reader.readexactly(len(MAGIC) - 1)
        if is_http(head):
            raise _HttpRequest
        check_magic(head)  # refused now: a client of another protocol may never send 30 bytes
        request, tok_len = parse_request_header(head + await reader.readexactly(REQUEST_HEADER - len(MAGIC)))
        token = await reader.readexactly(tok_len)
        if self.token is not None and not hmac.compare_digest(token, self.token):
            raise ServeError("authentication failed: wrong or missing token")
        return await self.backend.read_body(reader.readexactly), request

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: str) -> None:
        """Error answer, then a lingering close: half-close and discard what the device still sends
        (bounded in bytes and time), so that unread input does not reset the answer away."""
        await self._answer(writer, self._error(message))
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:  # the device has already gone (ENOTCONN): nothing to linger for
            return
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
        try:  # strict JSON: a parser may reject NaN, so no answer ever holds one
            body = json.dumps(answer, separators=(",", ":"), allow_nan=False).encode()
        except ValueError:
            body = json.dumps(self._error("the edge computed non-finite numbers (NaN or Inf) for this request"),
                              separators=(",", ":")).encode()
        writer.write(ANSWER_LENGTH.pack(len(body)) + body)
        await asyncio.wait_for(writer.drain(), self.config.read_timeout_s)

    def _emit(self, event: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _record(self, jobs: list[Job], answers: list[dict[str, Any]], images: int, edge_ms: float) -> None:
        """Counters and events for one computed batch (event loop)."""
        if images:
            self.stats.batches += 1
            self.stats.images += images
            self.stats.edge_ms_total += edge_ms
        for answer in answers:
            self.stats.requests += 1
            self.stats.errors += not answer["ok"]
            self._emit({"event": "request", **{k: v for k, v in answer.items() if k != "predictions"}})


def load_backend(config: ServeConfig) -> BnppBackend:
    """The edge half of a deploy directory (device.safetensors is not needed)."""
    return BnppBackend(load_edge_dir(config.deploy_dir), max_images=config.max_images)


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
