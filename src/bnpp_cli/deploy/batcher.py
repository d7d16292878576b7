"""Micro-batching on the event loop: gather waiting requests into one decoder + tail call.

A batch starts when it is full (``max_batch`` images), when every connected device has a request
waiting (each connection has at most one in flight, so none more can come), or when the oldest
request has waited ``batch_window_ms``; a lone device pays no batching delay. Requests that
arrive while the worker thread is busy join the next call. Whether that pays depends on the tail:
see benchmarks/serve_load.py.
"""

from __future__ import annotations

import asyncio
import collections
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from .backend import Backend, compute_batch
from .protocol import Request


@dataclass
class Job:
    body: bytes
    request: Request
    future: asyncio.Future
    received: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """A queue of jobs and the coroutine that runs them through ``compute_batch`` in batches."""

    def __init__(self, backend: Backend, max_batch: int, window_ms: float,
                 on_batch: Callable[[list[Job], list[dict[str, Any]], int, float], None]):
        self.backend, self.max_batch, self.window_s = backend, max_batch, window_ms / 1e3
        self.on_batch = on_batch  # (jobs, answers, images, edge ms), called on the event loop
        self._jobs: collections.deque[Job] = collections.deque()
        self._wake = asyncio.Event()

    def submit(self, job: Job) -> None:
        self._jobs.append(job)
        self._wake.set()

    def _next_batch(self) -> list[Job]:
        count = self.backend.count_images
        jobs = [self._jobs.popleft()]
        images = count(jobs[0].body)
        while self._jobs and images + count(self._jobs[0].body) <= self.max_batch:
            images += count(self._jobs[0].body)
            jobs.append(self._jobs.popleft())
        if self._jobs:  # the wake-up event is set exactly while requests wait
            self._wake.set()
        else:
            self._wake.clear()
        return jobs

    async def run(self, executor: ThreadPoolExecutor, connections: Callable[[], int]) -> None:
        """Forever: wait for work, gather a batch, compute it in the worker thread, answer."""
        loop = asyncio.get_running_loop()
        count = self.backend.count_images
        while True:
            await self._wake.wait()
            deadline = self._jobs[0].received + self.window_s
            while (len(self._jobs) < connections() and sum(count(j.body) for j in self._jobs) < self.max_batch
                   and (left := deadline - time.perf_counter()) > 0):
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            jobs = self._next_batch()
            start = time.perf_counter()
            answers, images, edge_ms = await loop.run_in_executor(
                executor, compute_batch, self.backend, [(j.body, j.request) for j in jobs])
            for job, answer in zip(jobs, answers):
                answer["queue_ms"] = round(1e3 * (start - job.received), 3)
                answer["edge_ms"] = round(edge_ms, 3)
            self.on_batch(jobs, answers, images, edge_ms)
            for job, answer in zip(jobs, answers):
                if not job.future.done():
                    job.future.set_result(answer)
