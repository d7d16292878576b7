"""Fault test of the edge runtime, on loopback and bounded in time: does `bnpp serve` stay correct,
bounded and responsive while clients misbehave and the server itself is restarted under load?

One `bnpp serve` process (the CLI, as a user runs it) and, for --seconds, client threads of five kinds:

  good      keep-alive EdgeClient requests of 1 image (noiseless link); each answer is checked
            against the edge half run locally on the same frame (same top classes, probabilities
            within 1e-4): a wrong answer is a failure, a clear refusal (ServeError) is counted
  garbage   a new connection, 1-200 random bytes (half of them behind the right magic), then read
  cut       a new connection, a valid request cut off at a random byte, then close
  http      a plain HTTP GET (must be refused at once with an HTTP 400)
  slow      a valid header start, then silence (must be refused after the server's read timeout)

Half way through, the server gets SIGTERM and a new one starts on the same port (good clients
reconnect). Every client socket has a timeout: a request with no answer or refusal within it
counts as a hang. The server's memory (VmRSS, sampled, and the kernel's peak VmHWM) is read
from /proc. Writes JSON (command, commit, machine, seeds, counts, p50/p99 latency, memory,
restart timings) to --out and prints a summary.

    python benchmarks/serve_faults.py [--deploy DEPLOY_DIR] [--seconds 20] [--out benchmarks/results/serve_faults.json]

Without --deploy it fits and exports a tiny run first (timm's test_resnet, random images, 1 epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bnpp_cli import (BackboneConfig, ChannelConfig, EdgeClient, FitConfig, Request, ServeError, encode_request,
                      export_halves, fit_codec, load_pair)
from harness import RESULTS, Results, add_options, provenance

LOOPBACK = "127.0.0.1"
ROLES = ("good", "garbage", "cut", "http", "slow")


def tiny_deploy(root: Path, seed: int) -> Path:
    """Fit and export a tiny run through the public API (seconds on a CPU)."""
    rng = np.random.default_rng(seed)
    data = root / "train.npz"
    np.savez(data, x=rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8), y=np.arange(48) % 10)
    fit_codec(FitConfig(backbone=BackboneConfig("test_resnet", num_classes=10, img_size=32), split="layer2",
                        data=str(data), out=str(root / "run"), channel=ChannelConfig("awgn", 20.0), ratio=4.0,
                        codec_epochs=1, batch_size=16, seed=seed))
    export_halves(root / "run", root / "deploy")
    return root / "deploy"


class Server:
    """`bnpp serve` in its own process, with its memory sampled from /proc."""

    def __init__(self, deploy: Path, port: int, read_timeout_s: float):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        # stderr to a file: an unread pipe would fill and block the server on its next log line
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "bnpp_cli", "serve", str(deploy), "--port", str(port),
                                      "--quiet", "--read-timeout", str(read_timeout_s)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        self.port, self.rss_mb, self.peak_mb = port, [], None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 180:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bnpp serve exited with {self.proc.returncode}: {self.stderr()}")
            try:
                socket.create_connection((LOOPBACK, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("bnpp serve did not start within 180 s")
        self.ready_s = time.monotonic() - t0
        self.t_ready = time.monotonic()
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def _status_mb(self, key: str) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            rss = self._status_mb("VmRSS")
            if rss is not None:
                self.rss_mb.append((time.monotonic() - self.t_ready, rss))
                self.peak_mb = self._status_mb("VmHWM") or self.peak_mb

    def stop(self) -> dict:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "killed after 30 s (hang)"
        self._stop.set()
        rss = self.rss_mb or [(0.0, 0.0)]
        warm = next((mb for t, mb in rss if t >= 1.0), rss[-1][1])  # after the first second of load
        log = self.stderr()
        lines = [ln for ln in log.splitlines() if ln.strip()]
        first_tb = log[log.find("Traceback"):][:1500] if "Traceback" in log else ""
        return {"exit_code": code, "stderr_tracebacks": log.count("Traceback"), "stderr_first_traceback": first_tb,
                "stderr_last_line": lines[-1][:200] if lines else "",
                "stop_s": round(time.monotonic() - t0, 3), "ready_s": round(self.ready_s, 2),
                "rss_mb_at_ready": round(rss[0][1], 1), "rss_mb_after_1s": round(warm, 1),
                "rss_mb_last": round(rss[-1][1], 1), "rss_mb_max": round(max(mb for _, mb in rss), 1),
                "rss_growth_after_1s_mb": round(rss[-1][1] - warm, 1),
                "peak_rss_mb": round(self.peak_mb or 0.0, 1), "samples": len(rss),
                "rss_mb_each_second": [round(mb, 1) for k, (t, mb) in enumerate(rss) if k % 5 == 0]}


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {role: {"attempts": 0, "answered": 0, "refused": 0, "closed": 0, "unreachable": 0, "hangs": 0,
                              "wrong": 0}
                       for role in ROLES}
        self.refusals: dict[str, int] = {}
        self.latency_ms: list[float] = []

    def add(self, role: str, outcome: str, message: str | None = None, ms: float | None = None) -> None:
        with self.lock:
            self.counts[role]["attempts"] += 1
            self.counts[role][outcome] += 1
            if message:
                key = f"{role}: {message[:90]}"
                self.refusals[key] = self.refusals.get(key, 0) + 1
            if ms is not None:
                self.latency_ms.append(ms)


def _reference(edge, frame: bytes) -> dict[str, float]:
    with torch.inference_mode():
        probs = edge(edge.receive(frame), 0.0).softmax(1)[0]
    return {edge.class_names[i]: float(p) for i, p in enumerate(probs)}


def good_client(port: int, frames: list[tuple[bytes, dict]], done: threading.Event, tally: Tally,
                rng: random.Random) -> None:
    client = EdgeClient(LOOPBACK, port, timeout_s=10.0)
    while not done.is_set():
        frame, ref = frames[rng.randrange(len(frames))]
        try:
            answer = client.send(frame, Request(topk=3))
        except ServeError as e:
            text = str(e)
            outcome = ("hangs" if "no answer" in text and "within" in text else
                       "unreachable" if text.startswith("cannot reach") else "refused")  # restarting
            tally.add("good", outcome, None if outcome == "unreachable" else text)
            client.close()
            time.sleep(0.02)  # the server may be restarting
            continue
        top = answer.predictions[0]
        third = sorted(ref.values(), reverse=True)[2]
        right = len(top) == 3 and all(abs(p - ref[c]) < 1e-4 and ref[c] >= third - 1e-4 for c, p in top)
        tally.add("good", "answered" if right else "wrong", None if right else f"answer {top}", answer.rtt_ms)
    client.close()


def _read_answer(sock: socket.socket) -> str:
    """'answered' (a JSON error answer), 'closed' (the server hung up), or 'hangs' (neither in time)."""
    try:
        head = sock.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return "closed"
        body = sock.recv(int.from_bytes(head, "little"), socket.MSG_WAITALL)
        answer = json.loads(body, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        return "refused" if answer.get("ok") is False and answer.get("error") else "wrong"
    except socket.timeout:
        return "hangs"
    except (ConnectionError, OSError):
        return "closed"
    except ValueError:
        return "wrong"


def fault_client(role: str, port: int, request: bytes, done: threading.Event, tally: Tally, rng: random.Random,
                 magic: bytes) -> None:
    while not done.is_set():
        try:
            sock = socket.create_connection((LOOPBACK, port), timeout=10.0)
        except OSError:
            tally.add(role, "unreachable")  # restarting
            time.sleep(0.02)
            continue
        with sock:
            try:
                if role == "garbage":
                    junk = rng.randbytes(rng.randint(1, 200))
                    sock.sendall(magic + junk if rng.random() < 0.5 else junk)
                    tally.add(role, _read_answer(sock))
                elif role == "cut":
                    sock.sendall(request[:rng.randrange(1, len(request))])
                    tally.add(role, "closed")  # we hang up mid-frame; the server must just drop it
                elif role == "http":
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n")
                    reply = sock.recv(64)
                    tally.add(role, "refused" if reply.startswith(b"HTTP/1.1 400") else
                              ("closed" if not reply else "wrong"))
                else:  # slow: 10 bytes of a real header, then silence
                    sock.sendall(request[:10])
                    tally.add(role, _read_answer(sock))
            except socket.timeout:
                tally.add(role, "hangs")
            except (ConnectionError, OSError):
                tally.add(role, "closed")
        time.sleep(0.005)


def run(args) -> dict:
    """The fault run in a scratch directory that is removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="bnpp_faults_"))
    try:
        return measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args, work: Path) -> dict:
    torch.manual_seed(args.seed)
    deploy = args.deploy or tiny_deploy(work, args.seed)
    device, edge = load_pair(deploy)
    g = torch.Generator().manual_seed(args.seed)
    with torch.inference_mode():
        frames = [device.compress(torch.randn(1, 3, *device.meta["data_config"]["input_size"][1:], generator=g))
                  for _ in range(16)]
    frames = [(f, _reference(edge, f)) for f in frames]
    request = encode_request(frames[0][0], Request(topk=3))
    magic = request[:4]  # every request starts with the protocol's 4-byte magic
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]

    tally = Tally()
    servers = [Server(deploy, port, args.read_timeout)]
    done = threading.Event()
    threads = []
    for role, n in (("good", args.good), ("garbage", args.garbage), ("cut", args.cut), ("http", args.http),
                    ("slow", args.slow)):
        for k in range(n):
            rng = random.Random(args.seed * 1000 + len(threads))
            target = (good_client, (port, frames, done, tally, rng)) if role == "good" else \
                (fault_client, (role, port, request, done, tally, rng, magic))
            threads.append(threading.Thread(target=target[0], args=target[1], daemon=True))
    for t in threads:
        t.start()
    time.sleep(args.seconds / 2)
    incarnations = [servers[0].stop()]  # SIGTERM under load
    restart_t0 = time.monotonic()
    servers.append(Server(deploy, port, args.read_timeout))
    downtime_s = time.monotonic() - restart_t0
    time.sleep(args.seconds / 2)  # as long again under load on the new server
    done.set()
    for t in threads:
        t.join(30)
    stuck = sum(t.is_alive() for t in threads)
    incarnations.append(servers[1].stop())
    lat = sorted(tally.latency_ms)
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None
    counts = tally.counts
    return {
        "benchmark": "serve_faults", "seed": args.seed, "deploy": str(deploy) if args.deploy else "tiny test_resnet run",
        "settings": {"seconds": args.seconds, "read_timeout_s": args.read_timeout, "clients": {
            r: getattr(args, r) for r in ROLES}, "client_timeout_s": 10.0},
        "requests": sum(c["attempts"] for c in counts.values()),
        "good_answered": counts["good"]["answered"], "wrong_answers": sum(c["wrong"] for c in counts.values()),
        "refusals": sum(c["refused"] for c in counts.values()),
        "hangs": sum(c["hangs"] for c in counts.values()) + stuck,
        "counts": counts, "refusal_messages": dict(sorted(tally.refusals.items(), key=lambda kv: -kv[1])[:12]),
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": round(lat[-1], 2) if lat else None,
                       "mean": round(statistics.fmean(lat), 2) if lat else None},
        "restart": {"downtime_s": round(downtime_s, 2)}, "servers": incarnations,
        "peak_rss_mb": max(s["peak_rss_mb"] for s in incarnations),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deploy", type=Path, default=None, help="`bnpp export` directory (default: a tiny run)")
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="seconds of load: half on the first server, half on the restarted one")
    ap.add_argument("--read-timeout", type=float, default=2.0, help="the server's --read-timeout (slow clients)")
    for role, n in (("good", 8), ("garbage", 4), ("cut", 4), ("http", 2), ("slow", 2)):
        ap.add_argument(f"--{role}", type=int, default=n, help=f"{role} client threads")
    add_options(ap, out=RESULTS / "serve_faults.json", out_help="results file (JSON)", device=False)
    args = ap.parse_args()
    m = provenance()["machine"]  # the load average before the run
    result = run(args)
    Results(Path(args.out)).write(result)
    c = result["counts"]
    print(f"{result['requests']} requests in {args.seconds:g} s ({m['cores']} cores, load "
          f"{m['load_average_1m']}): {result['good_answered']} good answered correctly, "
          f"{result['wrong_answers']} wrong, {result['refusals']} refused, {result['hangs']} hangs")
    print("  " + ", ".join(f"{r}: {v['attempts']} ({v['answered']} ok, {v['refused']} refused, {v['closed']} closed)"
                           for r, v in c.items()))
    print(f"  good latency p50 {result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']} ms; restart "
          f"downtime {result['restart']['downtime_s']} s; server peak RSS {result['peak_rss_mb']} MB "
          f"(after 1 s of load -> last sample, per server: " + ", ".join(
              f"{s['rss_mb_after_1s']} -> {s['rss_mb_last']} MB" for s in result["servers"]) + ")")
    print(f"  wrote {args.out}")


if __name__ == "__main__":
    main()
