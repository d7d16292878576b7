"""Serving under load, on loopback: what a device should send its edge server.

Three options a user weighs, each served by the same asyncio server (serve.py: keep-alive
connections, one worker thread, micro-batching) in its own process, each measured with and
without micro-batching (2 ms window / 32 images vs none):

  bnpp      the device runs head + encoder and sends the code z as a wire frame; the edge runs
            the simulated air interface (PSNR --snr dB, per image as `bnpp predict`), decoder + tail
  feature   the device runs the head and sends the raw float32 feature f (a 4-byte length, then
            the float32 bytes); the edge runs the tail
  jpeg      the device sends the image as JPEG (PIL, quality 90); the edge decodes it and runs the
            whole model (head + tail of the same export: the uncut backbone)

N devices (asyncio connections, one request of one image at a time each, as fast as answers come)
for T seconds per row; the images are the first --images CIFAR-10 test images, encoded once up
front (device-side cost is measured separately, single-threaded, and reported as device ms).
Reported: throughput (images/s), p50/p99 latency (request sent -> answer read), request bytes per
image (protocol header + payload), the uplink time those bytes take at --mbps, the mean batch of
the tail calls, and top-1 of the answers against the test labels. Writes JSON under
benchmarks/results/ with the machine (cores, load average, torch version, git commit) and
prints a table.

    python benchmarks/serve_load.py --deploy DEPLOY_DIR [--clients 8] [--seconds 10]

Loopback only; every run is bounded in time (--seconds per row, a start-up timeout per server)
and in requests (--max-requests per device).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bnpp_cli import (Backend, BatchTransform, BnppBackend, Request, ServeConfig, ServeError, encode_request,
                      load_device, load_edge, run_server)
from harness import RESULTS, SHARED, Results, add_options, decode_jpeg, encode_jpeg, provenance

LOOPBACK = "127.0.0.1"
MODES = ("bnpp", "feature", "jpeg")
JPEG_QUALITY = 90  # PIL's default is 75; 90 keeps the classifier's accuracy close to the raw image's
MAX_JPEG_BYTES = 2**20  # the JPEG server's frame bound


# ---- the edge side of each option (runs in the server process) -------------------------------------
class LengthPrefixed(Backend):
    """A body of one image: a 4-byte little-endian length, then that many bytes."""

    max_images = 1

    async def read_body(self, readexactly):
        (length,) = struct.unpack("<I", await readexactly(4))
        if length > self.max_body_bytes:
            raise ServeError(f"a body of {length} bytes is over the limit of {self.max_body_bytes}")
        return await readexactly(length)

    def count_images(self, body):
        return 1


def make_backend(mode: str, deploy: Path, max_images: int):
    edge = load_edge(deploy / "edge.safetensors")
    if mode == "bnpp":
        return BnppBackend(edge, max_images)

    class FeatureBackend(LengthPrefixed):
        """Raw float32 feature bytes -> tail."""

        def __init__(self):
            self.classes = edge.class_names
            self.feature_shape = tuple(edge.meta["feature_shape"])
            self.max_body_bytes = 4 * math.prod(self.feature_shape)

        def prepare(self, body, request):
            if len(body) != self.max_body_bytes:
                raise ServeError(f"a feature of {len(body)} bytes is not float32 {self.feature_shape}")
            f = torch.frombuffer(bytearray(body), dtype=torch.float32).view(1, *self.feature_shape)
            return f, torch.zeros(1, dtype=torch.float64)

        def forward(self, inputs, params):
            return edge.tail(inputs)

    if mode == "feature":
        return FeatureBackend()

    head = load_device(deploy / "device.safetensors").head
    dc = edge.meta["data_config"]
    transform = BatchTransform(dc["mean"], dc["std"], augment=False)
    size = tuple(dc["input_size"][1:])

    class JpegBackend(LengthPrefixed):
        """JPEG bytes -> decode -> the whole model (head + tail)."""

        def __init__(self):
            self.classes, self.max_body_bytes = edge.class_names, MAX_JPEG_BYTES

        def prepare(self, body, request):
            try:
                rgb = decode_jpeg(body, size)
            except ValueError as e:
                raise ServeError(str(e)) from None
            x = transform(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None])
            return x, torch.zeros(1, dtype=torch.float64)

        def forward(self, inputs, params):
            return edge.tail(head(inputs))

    return JpegBackend()


def serve_role(args) -> None:
    """Child process: one option's server until SIGTERM; prints its port, then its counters."""
    torch.set_num_threads(args.threads)
    config = ServeConfig(deploy_dir=str(args.deploy), port=0, max_batch=args.max_batch,
                         batch_window_ms=args.window_ms, max_images=32)
    backend = make_backend(args.serve, args.deploy, config.max_images)
    stats = run_server(config, backend, ready=lambda host, port: print(f"PORT {port}", flush=True))
    print("STATS " + json.dumps(stats.to_dict()), flush=True)


# ---- the device side (this process) -----------------------------------------------------------------
def encode_payloads(deploy: Path, x_uint8: np.ndarray, snr_db: float) -> dict:
    """Per option: request body per image, device ms per image (median, one thread)."""
    device = load_device(deploy / "device.safetensors")
    dc = device.meta["data_config"]
    transform = BatchTransform(dc["mean"], dc["std"], augment=False)
    param = device.param_from_condition(snr_db)
    out = {m: {"bodies": [], "device_ms": []} for m in MODES}
    with torch.inference_mode():
        for img in x_uint8:
            t0 = time.perf_counter()
            x = transform(torch.from_numpy(img).permute(2, 0, 1)[None])
            z = device(x, param)
            out["bnpp"]["bodies"].append(device.payload(z))
            t1 = time.perf_counter()
            f = device.head(transform(torch.from_numpy(img).permute(2, 0, 1)[None]))
            raw = f.contiguous().numpy().astype("<f4").tobytes()
            out["feature"]["bodies"].append(struct.pack("<I", len(raw)) + raw)
            t2 = time.perf_counter()
            jpeg = encode_jpeg(img, JPEG_QUALITY)
            out["jpeg"]["bodies"].append(struct.pack("<I", len(jpeg)) + jpeg)
            t3 = time.perf_counter()
            for mode, ms in zip(MODES, (t1 - t0, t2 - t1, t3 - t2)):
                out[mode]["device_ms"].append(1e3 * ms)
    return out


async def load(port: int, requests: list[bytes], labels: list[str], clients: int, seconds: float,
               max_requests: int) -> dict:
    """N keep-alive devices, each one request at a time, for ``seconds``."""
    latencies, hits, answered, batches, errors = [], 0, 0, [], []
    stop_at = time.perf_counter() + seconds

    async def device(c: int) -> None:
        nonlocal hits, answered
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        try:
            for k in range(max_requests):
                if time.perf_counter() >= stop_at:
                    return
                i = (c * 7919 + k) % len(requests)
                t0 = time.perf_counter()
                writer.write(requests[i])
                await writer.drain()
                (length,) = struct.unpack("<I", await reader.readexactly(4))
                answer = json.loads(await reader.readexactly(length))
                latencies.append(1e3 * (time.perf_counter() - t0))
                if not answer["ok"]:
                    errors.append(answer["error"])
                    continue
                answered += 1
                batches.append(answer["batch"])
                hits += answer["predictions"][0][0][0] == labels[i]
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(device(c) for c in range(clients))), seconds + 60)
    wall = time.perf_counter() - t0
    lat = np.array(latencies)
    return {"answered": answered, "errors": len(errors), "first_error": errors[0] if errors else None,
            "seconds": round(wall, 2), "images_per_s": round(answered / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "mean_batch": round(float(np.mean(batches)), 2) if batches else 0.0,
            "top1": round(hits / answered, 4) if answered else 0.0}


def run_row(args, mode: str, batched: bool, requests: list[bytes], labels: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--serve", mode, "--deploy", str(args.deploy), "--threads", str(args.threads),
           "--max-batch", "32" if batched else "1", "--window-ms", "2" if batched else "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        t0 = time.perf_counter()
        while not line.startswith("PORT ") and time.perf_counter() - t0 < 180:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"the {mode} server exited with code {proc.returncode}")
        port = int(line.split()[1])
        result = asyncio.run(load(port, requests, labels, args.clients, args.seconds, args.max_requests))
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
        stats = json.loads(next(ln for ln in rest.splitlines() if ln.startswith("STATS "))[6:])
    finally:
        if proc.poll() is None:
            proc.kill()
    return {"option": mode, "micro_batching": "2 ms / 32" if batched else "off", **result,
            "server_mean_batch": round(stats["mean_batch"], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deploy", type=Path, required=True, help="`bnpp export` directory (both halves)")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "cifar10" / "test.npz")
    ap.add_argument("--images", type=int, default=64, help="distinct test images the devices cycle through")
    ap.add_argument("--clients", type=int, default=8, help="concurrent devices")
    ap.add_argument("--seconds", type=float, default=10.0, help="load duration per row")
    ap.add_argument("--max-requests", type=int, default=100_000, help="per device, per row")
    ap.add_argument("--snr", type=float, default=20.0, help="bnpp rows: the simulated PSNR in dB")
    ap.add_argument("--mbps", type=float, default=10.0, help="uplink rate for the transfer-time column")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads of each server")
    ap.add_argument("--modes", default=",".join(MODES))
    add_options(ap, out=RESULTS / "serve_load.json", out_help="results file (JSON)", seed=False, device=False)
    ap.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--max-batch", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--window-ms", type=float, default=2.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve_role(args)

    torch.set_num_threads(1)
    data = np.load(args.data)
    x, y = data["x"][:args.images], data["y"][:args.images]
    labels = [str(data["class_names"][k]) for k in y]
    payloads = encode_payloads(args.deploy, x, args.snr)
    rows = []
    for mode in args.modes.split(","):
        # bnpp: image i is always sent as image i of seed 0, so its answer is predict's
        requests = [encode_request(body, Request(1, args.snr if mode == "bnpp" else None, 0, i))
                    for i, body in enumerate(payloads[mode]["bodies"])]
        for batched in (True, False):
            row = run_row(args, mode, batched, requests, labels)
            row["bytes_per_image"] = round(float(np.mean([len(r) for r in requests])), 1)
            row["payload_bytes_per_image"] = round(float(np.mean([len(b) for b in payloads[mode]["bodies"]])), 1)
            row["uplink_ms"] = round(8e-3 * row["bytes_per_image"] / args.mbps, 3)
            row["device_ms"] = round(float(np.median(payloads[mode]["device_ms"])), 3)
            rows.append(row)
            print(f"  {mode:8s} batching {row['micro_batching']:9s}: {row['images_per_s']:8.1f} img/s, "
                  f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms", file=sys.stderr)
    result = {"benchmark": "serve_load", "deploy": str(args.deploy),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                           if k not in ("serve", "max_batch", "window_ms")},
              "rows": rows}
    Results(Path(args.out)).write(result)
    print_table({**result, "machine": provenance()["machine"], "commit": provenance()["commit"]})
    print(f"\nwritten: {args.out}")


def print_table(result: dict) -> None:
    m, s = result["machine"], result["settings"]
    print(f"{m['cores']} cores (1-min load {m['load_average_1m']} at start), torch {m['torch']}, commit {result['commit']}; "
          f"{s['clients']} devices x {s['seconds']:g} s per row on loopback, server threads {s['threads']}")
    head = ("option", "batching", "img/s", "p50 ms", "p99 ms", "B/image", f"ms @{s['mbps']:g}Mb/s",
            "device ms", "mean batch", "top-1", "errors")
    print(" | ".join(head))
    for r in result["rows"]:
        print(" | ".join(map(str, (r["option"], r["micro_batching"], r["images_per_s"], r["p50_ms"], r["p99_ms"],
                                   r["bytes_per_image"], r["uplink_ms"], r["device_ms"], r["mean_batch"],
                                   f"{r['top1']:.1%}", r["errors"]))))


if __name__ == "__main__":
    main()
