"""How bnpp times things: one thread policy for every latency it reports.

    with timing.threads(config.threads):          torch's intra-op threads for the timed block
        ... time each run, warm-up excluded ...
    timing.summary(times_ms, threads) -> {"median", "min", "max", "runs", "threads", "load", "cores", "warning"}

Why one thread by default: a batch-1 forward of a split head is a few ms of small kernels, which a
device core runs; more intra-op threads buy little on such work and are what other work on the
machine takes first. On a 2-core machine with another process running, a resnet18 forward at batch
1 took 454 ms with 2 threads and 12.4 ms with 1 (threads spin-waiting on each other for whole time
slices). ``threads=N`` (`--threads N`) times with N threads, for a device with N cores to spare.

A figure is flagged (``warning``) when the machine was too busy for it to mean much: a 1-minute load
average above the cores left for this measurement (cores - threads), or timed runs whose slowest
is more than twice their median. Profile's per-split head latency, predict's device and edge times,
infer's device time and serve's edge time all follow this policy; search's latencies are estimates
from MACs and the budget's speeds (split.profile's formula), not timings.

This module imports nothing of bnpp but errors, and torch only inside :func:`threads`.
"""

from __future__ import annotations

import os
import statistics
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from .errors import BnppError

DEFAULT_THREADS = 1  # batch-1 latency of a split head: what one device core gives (see above)
SPREAD_LIMIT = 2.0  # slowest timed run over the median above this: the figure is flagged


def cores() -> int:
    """CPU cores this process may run on (its affinity, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def check_threads(threads: int) -> int:
    """``threads`` if it is a usable thread count (1 .. the cores here), else a BnppError."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= cores():
        raise BnppError(f"`threads` {threads!r} is not a thread count for this machine",
                        hint=f"give 1 .. {cores()} (the cores this process may use); default {DEFAULT_THREADS}")
    return threads


@contextmanager
def threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block, restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(check_threads(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load() -> float | None:
    """The machine's 1-minute load average (runnable threads), None where the OS does not say."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def busy_warning(times_ms: Sequence[float], threads: int, load_before: float | None) -> str | None:
    """Why a timing may not mean much, in words; None when the machine looked quiet enough."""
    reasons = []
    spare = cores() - threads
    if load_before is not None and load_before > spare + 0.5:
        reasons.append(f"load average {load_before:.1f} with {cores()} cores and {threads} timing thread(s)")
    if times_ms:
        median = statistics.median(times_ms)
        if median > 0 and max(times_ms) > SPREAD_LIMIT * median:
            reasons.append(f"slowest run {max(times_ms) / median:.1f}x the median")
    if not reasons:
        return None
    return "the machine was busy (" + "; ".join(reasons) + "): these times may overstate the model's cost"


def summary(times_ms: Sequence[float], threads: int, load_before: float | None) -> dict[str, Any]:
    """A timing as bnpp reports it: median, min, max over the timed runs (warm-up excluded), with
    the thread count, the load and the cores it was taken under, and a warning when busy."""
    times = list(times_ms)
    return {"median": statistics.median(times) if times else 0.0, "min": min(times, default=0.0),
            "max": max(times, default=0.0), "runs": len(times), "threads": threads, "load": load_before,
            "cores": cores(), "warning": busy_warning(times, threads, load_before)}
