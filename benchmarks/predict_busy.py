"""`bnpp predict`'s times on an idle machine and with one core kept busy by another process.

The thread policy (docs/cli.md#timing) says a timed figure runs on `--threads` torch threads,
1 by default. This measures what that buys: the shared CIFAR-10 resnet18 cut at layer3 (16x, a
short fit: the times do not depend on how well it learned), exported, then `bnpp predict` on
--images test images at batch 1, --snr 10, in four settings side by side in one run:

    no added load, --threads 1        the default, the machine as found
    one core kept busy, --threads 1   the default with one core taken by a busy-looping process
    no added load, --threads CORES    as many threads as cores (torch's own default)
    one core kept busy, --threads CORES

The machine as found is only idle when nothing else runs: each run records the 1-minute load
average before it, and the results say it.

Each setting runs `bnpp predict --json` --repeats times as a fresh process (as a user would); the
figure is the median over those runs of predict's own device / edge median (ms per image, warm-up
excluded), with each run's busy-machine warning kept.

    python benchmarks/predict_busy.py [--images 20] [--repeats 3]

Writes benchmarks/results/predict_busy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from harness import RESULTS, RUNS, Results, rel, require_shared, save_png, shared_backbone

BUSY_LOOP = "while True: pass"


def bnpp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnpp_cli", *args], capture_output=True, text=True, check=True)


def prepare(work: Path, images: int) -> tuple[Path, list[str]]:
    """A layer3 16x run of the shared resnet18, its halves, and the first test images as PNGs."""
    backbone, data = shared_backbone("resnet18_cifar10")
    deploy = work / "deploy"
    if not (deploy / "device.safetensors").is_file():
        run = work / "run"
        bnpp("fit", backbone.model, "--checkpoint", backbone.checkpoint, "--num-classes", "10", "--img-size", "32",
             "--split", "layer3", "--ratio", "16", "--snr", "20", "--data", str(data / "train.npz"),
             "--limit", "1000", "--codec-epochs", "1", "--no-augment", "--out", str(run), "--overwrite")
        bnpp("export", str(run), "--out", str(deploy))
    x = np.load(data / "test.npz")["x"][:images]
    (work / "images").mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rgb in enumerate(x):
        path = work / "images" / f"test{i:04d}.png"
        if not path.is_file():
            save_png(rgb, path)
        paths.append(str(path))
    return deploy, paths


def measure(deploy: Path, images: list[str], threads: int, repeats: int, out: Path) -> dict:
    runs = []
    for r in range(repeats):
        js = out / f"predict_t{threads}_{r}.json"
        bnpp("predict", str(deploy), *images, "--snr", "10", "--threads", str(threads), "--json", str(js))
        lat = json.loads(js.read_text())["latency_ms"]
        runs.append({side: {k: lat[side][k] for k in ("median", "min", "max", "runs", "load", "warning")}
                     for side in ("device", "edge")})
    return {"threads": threads, "repeats": repeats,
            "device_ms": statistics.median(r["device"]["median"] for r in runs),
            "edge_ms": statistics.median(r["edge"]["median"] for r in runs),
            "warned": sum(bool(r["device"]["warning"] or r["edge"]["warning"]) for r in runs), "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "predict_busy.json"))
    a = ap.parse_args()
    require_shared()
    work = RUNS / "predict_busy"
    deploy, images = prepare(work, a.images)
    cores = len(os.sched_getaffinity(0))
    rows = []
    for busy in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if busy else None
        try:
            if hog is not None:
                time.sleep(5)  # let the load average see it
            for threads in sorted({1, cores}):
                row = {"machine": "one core kept busy" if busy else "no added load", **measure(deploy, images, threads, a.repeats, work)}
                rows.append(row)
                print(f"{row['machine']:>18}, --threads {threads}: device {row['device_ms']:.2f} ms, "
                      f"edge {row['edge_ms']:.2f} ms per image (median of {a.repeats} runs; {row['warned']} warned)")
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    Results(Path(a.out)).write({"deploy": rel(deploy), "images": len(images), "batch_size": 1, "snr_db": 10,
                                "cores": cores, "busy_process": BUSY_LOOP, "rows": rows})
    print(f"wrote {rel(a.out)}")


if __name__ == "__main__":
    main()
