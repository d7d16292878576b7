"""Every entropy-preset variant tried at one split, scored on VALIDATION images (never the test split).

For each finished `bnpp fit --preset entropy` run directory given, the validation images are exactly
the ones its fit held out of --data (bnpp_cli.validation_images: the fit's val_fraction and
seed); the run is evaluated on them with `evaluate_run` (the code path of `bnpp eval`), so the bits
are MEASURED from the real batch-1 bitstream, next to the likelihood estimate. The backbone's top-1 on
the same images gives the validation drop. The backbone was trained on these images (train.npz is
half of its training set), so its validation top-1 is higher than its test top-1 and validation drops
are larger than test drops: they rank variants, they are not the test figure.

    python benchmarks/entropy_sweep.py benchmarks/results/runs/entropy_l2_* \
        --out benchmarks/results/entropy_layer2_sweep.jsonl

Rewrites the jsonl (one line per run, sorted by validation drop), with the command, commit, machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from bnpp_cli import EvalConfig, RunDir, evaluate_run, validation_images
from harness import Results, add_options, rel, write_images_npz


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished entropy-preset run directories")
    add_options(ap, out="benchmarks/results/entropy_layer2_sweep.jsonl", out_help="results file (JSONL, rewritten)",
                seed=False, device=False)
    args = ap.parse_args()
    rows, val_files = [], {}
    with tempfile.TemporaryDirectory(prefix="bnpp-sweep-") as tmp:
        for run in sorted(args.runs):
            run_dir = RunDir(run)
            if not run_dir.finished:
                print(f"{run}: not finished, skipped", flush=True)
                continue
            cfg = run_dir.read_config()
            fit = cfg.fit
            if cfg.codec.preset != "entropy":
                print(f"{run}: preset {cfg.codec.preset}, skipped", flush=True)
                continue
            key = (fit.data, fit.val_data, fit.val_fraction, fit.seed)
            if key not in val_files:  # the fit's own held-out images, written once per (data, fraction, seed)
                x, y, classes, source, _ = validation_images(fit.data, fit.val_data, fit.val_fraction, fit.seed,
                                                             tuple(cfg.data_config["input_size"][1:]), cfg.num_classes)
                path = Path(tmp) / f"val{len(val_files)}.npz"
                write_images_npz(path, x, y, classes)
                val_files[key] = (str(path), source)
            path, source = val_files[key]
            t0 = time.perf_counter()
            ev = evaluate_run(EvalConfig(run=run, data=path, draws=1)).to_dict()
            metrics = run_dir.read_metrics()
            rows.append({
                "run": rel(run), "split": cfg.split, "ratio": fit.ratio, "code_shape": ev["code_shape"],
                "lmbda": fit.lmbda, "codec_epochs": fit.codec_epochs, "joint_epochs": fit.joint_epochs,
                "limit": fit.limit, "seed": fit.seed, "validation": source, "val_images": ev["images"],
                "backbone_val_top1": ev["backbone_top1"], "val_top1": ev["noiseless_top1"],
                "val_drop_points": round(100 * (ev["backbone_top1"] - ev["noiseless_top1"]), 2),
                "val_bits_per_image": ev["bits_per_image"], "val_estimated_bits_per_image": ev["estimated_bits_per_image"],
                "fit_seconds": metrics.get("seconds"), "eval_seconds": time.perf_counter() - t0,
            })
            print(json.dumps(rows[-1]), flush=True)
    rows.sort(key=lambda r: (r["split"], r["val_drop_points"], r["val_bits_per_image"]))
    Results(Path(args.out)).rewrite_rows(rows)


if __name__ == "__main__":
    main()
