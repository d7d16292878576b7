"""The runtime under faults, on loopback and bounded in time: benchmarks/serve_faults.py run short.

Many clients (well-formed, garbage, cut off mid-frame, plain HTTP, stalled), and `bnpp serve`
restarted under load: every well-formed request gets a correct answer or a clear refusal, nothing
hangs, the server stops cleanly on SIGTERM without a traceback, and its memory stays bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_serve_survives_garbage_disconnects_and_a_restart_under_load(tmp_path):
    out = tmp_path / "faults.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_faults.py"), "--seconds", "6",
                        "--good", "4", "--garbage", "2", "--cut", "2", "--http", "1", "--slow", "1",
                        "--read-timeout", "1", "--out", str(out)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    d = json.loads(out.read_text())
    c = d["counts"]
    assert d["wrong_answers"] == 0 and d["hangs"] == 0, d
    assert c["good"]["answered"] >= 50, c  # checked one by one against the edge half run locally
    # a good request either got its answer, or a clear refusal, or found the port closed (restart)
    assert c["good"]["attempts"] == sum(c["good"][k] for k in ("answered", "refused", "unreachable")), c
    assert all(m.startswith("good: the edge server at") for m in d["refusal_messages"] if m.startswith("good")), d
    assert c["garbage"]["refused"] > 0 and c["http"]["refused"] > 0 and c["slow"]["refused"] > 0, c
    assert c["cut"]["closed"] > 0, c
    assert len(d["servers"]) == 2
    for server in d["servers"]:
        assert server["exit_code"] == 0 and server["stop_s"] < 10, server  # SIGTERM under load: a clean stop
        assert server["stderr_tracebacks"] == 0, server["stderr_first_traceback"]
        # bounded: a coarse bound for this 6 s run, where allocator warm-up alone reached +124 MB once in CI
        # (the 20 s benchmark grew +1.8 / +2.3 MB over 39,176 requests: no per-request leak)
        assert server["rss_growth_after_1s_mb"] < 256, server
    assert d["latency_ms"]["p99"] is not None and d["latency_ms"]["p50"] <= d["latency_ms"]["p99"]
