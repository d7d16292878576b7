"""Diagnostic for the digital rate frontier: the bits its codes would take with integer tables fitted to them.

At the grid budget (468 optimizer steps) the entropy preset's learned prior does not follow the code:
its tables (frozen from the prior's density when the run is saved) spend about 3.4 bits per integer at
layer3 64x whatever the rate weight, while the code itself (the encoder does respond to lmbda) has a
much lower empirical entropy. This script keeps every fit of benchmarks/results/rate_frontier_digital.json
unchanged except its tables: for each run named, the code of the first --train-images training images
(train.npz: images the fit trained on or held out of train.npz, never the test split) gives a per-channel
histogram, turned into integer tables (codec.entropy.integer_tables, every count >= 1) in both the prior
and the decoder's copy; then the real range coder codes every validation image as its own batch-1 frame
(run.evaluate.measure_bitstream, which also checks that each stream decodes to its code). The code, and
so top-1, is unchanged; only the bits move. The runs on the frontier are also measured on the test half.

Nothing is saved into the run directories. Writes benchmarks/results/rate_frontier_digital_tables.json.

    flock /tmp/bnpp-heavy.lock python benchmarks/rate_frontier_digital_tables.py      # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
from rate_accuracy import commit, machine, rel  # noqa: E402  (benchmarks/ is sys.path[0])


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "rate_frontier_digital.json"))
    ap.add_argument("--runs", default="frontier,best,last",
                    help="which fits per (split, ratio): frontier (the chosen points), best (lowest validation "
                         "drop), last (the largest lmbda within the largest level)")
    ap.add_argument("--train-images", type=int, default=5000)
    ap.add_argument("--limit", type=int, default=None, help="only the first N validation / test images (a quick check)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "rate_frontier_digital_tables.json"))
    return ap.parse_args()


def head_features(run, path: Path, limit: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    from bnpp_cli.data.batching import BatchTransform, make_loader
    from bnpp_cli.data.datasets import load_dataset

    dc = run.config.data_config
    ds = load_dataset(str(path), input_size=tuple(dc["input_size"][1:]), train=False)
    ds = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
    tf = BatchTransform(dc["mean"], dc["std"], augment=False)
    feats, labels = [], []
    with torch.no_grad():
        for x, y in make_loader(ds, 256, shuffle=False, seed=0):
            feats.append(run.pipeline.head(tf(x)))
            labels.append(y)
    return feats, torch.cat(labels)


def main() -> None:
    args = parse()
    from bnpp_cli.codec.entropy import SymbolTables, find_prior, integer_tables
    from bnpp_cli.files import write_json
    from bnpp_cli.run.evaluate import measure_bitstream
    from bnpp_cli.run.pipeline import load_run

    res = json.loads(Path(args.results).read_text())
    levels = res["levels_points"]
    fits = {r["name"]: r for r in res["fits"]}
    chosen = {r["name"] for r in res["frontier"] if r.get("name")}
    want: dict[str, set] = {}
    groups: dict[tuple, list] = {}
    for r in res["fits"]:
        groups.setdefault((r["split"], r["ratio"]), []).append(r)
    kinds = args.runs.split(",")
    for rows in groups.values():
        ok = [r for r in rows if r["val_drop"] <= max(levels)]
        picks = []
        if "best" in kinds:
            picks.append(("best", min(rows, key=lambda r: r["val_drop"])))
        if "last" in kinds and ok:
            picks.append(("last", max(ok, key=lambda r: r["lmbda"])))
        for kind, r in picks:
            want.setdefault(r["name"], set()).add(kind)
    if "frontier" in kinds:
        for name in chosen:
            want.setdefault(name, set()).add("frontier")
    from heldout import test_halves

    val_path, test_path, info = test_halves(SHARED / "data" / "cifar10" / "test.npz",
                                            REPO / "benchmarks" / "results" / "runs" / "heldout", seed=res["seeds"][0])
    if info["val"] != res["validation"]["val"]:
        sys.exit("the validation half differs from the results file's")
    train_path = SHARED / "data" / "cifar10" / "train.npz"
    t0, rows, cache = time.perf_counter(), [], {}
    for name in sorted(want, key=lambda n: (fits[n]["split"], fits[n]["ratio"], fits[n]["lmbda"])):
        fit = fits[name]
        run = load_run(REPO / fit["run"])
        run.pipeline.eval()
        split = fit["split"]
        if split not in cache:  # the head is the same frozen backbone in every run at a split
            cache = {split: {"train": head_features(run, train_path, args.train_images)[0],
                             "val": head_features(run, val_path, args.limit or 10**9)[0],
                             "test": head_features(run, test_path, args.limit or 10**9)[0] if any(
                                 fits[n]["split"] == split for n in chosen & set(want)) else None}}
        feats = cache[split]
        codec = run.pipeline.codec
        prior = find_prior(codec)
        b = prior.support
        with torch.no_grad():
            z = torch.cat([codec.encoder(f, 0.0) for f in feats["train"]])  # integers in [-B, B]
        sym = (z.transpose(0, 1).reshape(z.shape[1], -1) + b).long()
        hist = torch.stack([torch.bincount(s, minlength=2 * b + 1) for s in sym]).double()
        empirical = (hist / hist.sum(1, keepdim=True)).numpy()
        before = measure_bitstream(run.pipeline, feats["val"])
        counts = integer_tables(torch.from_numpy(empirical))
        prior.counts.copy_(counts)
        for m in codec.modules():
            if isinstance(m, SymbolTables):
                m.counts.copy_(counts)
        after = measure_bitstream(run.pipeline, feats["val"])
        with torch.no_grad():
            zv = torch.cat([codec.encoder(f, 0.0) for f in feats["val"]])
        sv = (zv.transpose(0, 1).reshape(zv.shape[1], -1) + b).long()
        p = counts.double() / counts.sum(1, keepdim=True)
        ideal = float(-torch.log2(torch.gather(p, 1, sv)).sum()) / zv.shape[0]  # -log2 of the new tables
        row = {"name": name, "why": sorted(want[name]), "split": split, "ratio": fit["ratio"], "lmbda": fit["lmbda"],
               "code_shape": fit["code_shape"], "val_drop": fit["val_drop"], "val_bits_saved_tables": before["bits_per_image"],
               "val_bits_fitted_tables": after["bits_per_image"], "val_ideal_bits_fitted_tables": ideal,
               "val_est_bits_prior": fit["val_est_bits"], "table_images": int(z.shape[0]), "run": fit["run"]}
        if feats["test"] is not None and name in chosen:
            row["test_bits_fitted_tables"] = measure_bitstream(run.pipeline, feats["test"])["bits_per_image"]
        rows.append(row)
        print(f"{name:22s} val drop {fit['val_drop']:5.2f}  bits saved tables {before['bits_per_image']:7.2f}  "
              f"fitted {after['bits_per_image']:7.2f} (ideal {ideal:6.2f})"
              + (f"  test {row['test_bits_fitted_tables']:.2f}" if "test_bits_fitted_tables" in row else ""), flush=True)
    write_json(args.out, {
        "command": "python " + " ".join(sys.argv), "commit": commit(), "machine": machine(),
        "results": rel(args.results), "train_images_for_tables": args.train_images, "limit": args.limit,
        "tables": "per-channel histogram of the code on the first train_images of train.npz -> integer_tables",
        "wall_seconds": time.perf_counter() - t0, "rows": rows})


if __name__ == "__main__":
    main()
