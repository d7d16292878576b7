"""`bnpp search` with one worker and with two on one study, on the shared CIFAR-10 resnet18, side by side.

The search of benchmarks/search_resnet18.py (4 splits x ratios 16, 64, 256, AWGN 20 dB, --max-drop 2,
4 rounds at eta 3 from 2,000 images x 1 epoch, feature cache on), run twice from nothing:
  one   one worker process with --threads (default 2) torch threads: the search as `bnpp search` runs it;
  two   --workers processes (default 2) on one study (the search directory's journal), each with
        --threads / --workers torch threads, so both runs use the same cores.
Each run starts from an empty search directory (runs/NAME_one, runs/NAME_two: their own studies and
feature caches). Written: the wall seconds of each, who fitted what (every candidate must be fitted
exactly once), and both recommendations (they must agree).

    flock /tmp/bnpp-heavy.lock python benchmarks/search_workers.py    # -> benchmarks/results/search_workers.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import REPO, RESULTS, Results, add_options, shared_backbone


def _config(args, out: Path) -> dict:
    from bnpp_cli import Budget, ChannelConfig, SearchConfig

    backbone, data = shared_backbone("resnet18_cifar10")
    return SearchConfig(backbone=backbone, data=str(data / "train.npz"), out=str(out),
                        channel=ChannelConfig("awgn", args.snr), splits=args.splits.split(","),
                        rates=[float(r) for r in args.ratios.split(",")], max_drop=args.max_drop, budget=Budget(),
                        first_images=args.first_images, first_epochs=args.first_epochs, eta=args.eta,
                        rounds=args.rounds, device=args.device, seed=args.seed).to_dict()


def worker(config: dict, threads: int, log: str) -> None:
    """One worker: the library's search on the study, its events to ``log`` (one JSON line each)."""
    import torch

    from bnpp_cli import SearchConfig, search_split_rate

    torch.set_num_threads(threads)
    with open(log, "a") as fh:
        def note(event: str, info: dict) -> None:
            if event in ("fit", "wait", "lost", "round"):
                fh.write(json.dumps({"t": time.time(), "event": event, **{k: info.get(k) for k in
                                                                          ("name", "round", "kept", "running")}}) + "\n")
                fh.flush()

        result = search_split_rate(SearchConfig.from_dict(config), note)
        fh.write(json.dumps({"t": time.time(), "event": "result", "recommendation": result.recommendation,
                             "final": result.final, "pareto": result.pareto, "study": result.study}) + "\n")


def _run(args, label: str, workers: int, threads: int) -> dict:
    out = REPO / "runs" / f"{args.name}_{label}"
    if out.exists():
        shutil.rmtree(out)  # from nothing: no fit, feature or study of an earlier run
    out.mkdir(parents=True)
    config = _config(args, out)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    logs = [out.with_name(f"{out.name}.worker{i}.jsonl") for i in range(workers)]  # beside the search directory
    for log in logs:
        log.unlink(missing_ok=True)
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(config), str(threads), str(log)],
                              env=env, cwd=REPO / "benchmarks") for log in logs]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"{label}: a worker exited with {codes}")
    events = [[json.loads(line) for line in log.read_text().splitlines()] for log in logs]
    fitted = [[e["name"] for e in ev if e["event"] == "fit"] for ev in events]
    results = [next(e for e in ev if e["event"] == "result") for ev in events]
    names = [n for f in fitted for n in f]
    return {"workers": workers, "threads_per_worker": threads, "wall_s": wall, "fits": len(names),
            "fitted_by_worker": fitted, "fitted_twice": sorted({n for n in names if names.count(n) > 1}),
            "recommendation": results[0]["recommendation"], "final": results[0]["final"],
            "pareto": results[0]["pareto"], "study": results[0]["study"],
            "workers_agree": all(r["recommendation"] == results[0]["recommendation"] for r in results)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="layer1,layer2,layer3,layer4")
    ap.add_argument("--ratios", default="16,64,256")
    ap.add_argument("--max-drop", type=float, default=2.0)
    ap.add_argument("--snr", type=float, default=20.0)
    ap.add_argument("--first-images", type=int, default=2000)
    ap.add_argument("--first-epochs", type=int, default=1)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the one worker; the workers share them")
    add_options(ap, out=RESULTS, name="search_workers")
    args = ap.parse_args()
    one = _run(args, "one", 1, args.threads)
    print(f"one worker, {args.threads} threads: {one['wall_s']:.0f} s, {one['fits']} fits", flush=True)
    two = _run(args, "two", args.workers, max(1, args.threads // args.workers))
    print(f"{args.workers} workers, {two['threads_per_worker']} thread(s) each: {two['wall_s']:.0f} s, "
          f"{two['fits']} fits ({[len(f) for f in two['fitted_by_worker']]} per worker)", flush=True)
    same = one["recommendation"].get("winner") == two["recommendation"].get("winner") and \
        (one["recommendation"].get("candidate") or {}).get("name") == (two["recommendation"].get("candidate") or {}).get("name")
    doc = {"cores": os.cpu_count(), "one": one, "many": two, "speedup": one["wall_s"] / two["wall_s"],
           "same_recommendation": same, "every_candidate_fitted_once": not one["fitted_twice"] and not two["fitted_twice"]
           and sorted(n for f in one["fitted_by_worker"] for n in f) == sorted(n for f in two["fitted_by_worker"] for n in f)}
    path = Results(Path(args.out) / f"{args.name}.json").write(doc)
    print(f"speedup {doc['speedup']:.2f}x; same recommendation: {same}; every candidate fitted once: "
          f"{doc['every_candidate_fitted_once']}; -> {path}")


if __name__ == "__main__":
    main()
