"""Rate frontier on real data: the fewest symbols per image within 1 and 2 points.

For each split of the shared CIFAR-10 resnet18 (layer1-layer4), bnpp's default codec (preset bnpp)
is fitted at bandwidth ratios from --ratios in ascending order (fewer symbols each time) with the
rate-accuracy grid's budget (the first 10,000 training images, 3 epochs, AWGN trained over
PSNR >= 10 dB). Every fit is measured on the VALIDATION images at PSNR 20 dB, 2 noise draws:
by default (--validation test-half) 5,000 of the official test split the backbone has never seen
(benchmarks/heldout.py), the other 5,000 being the test images; --validation train-holdout is the
earlier rule (the 2,500 images the fit holds out of train.npz, which the backbone was trained on:
its drops there run 2.8-3.6 points above test drops) with all 10,000 test images. A split stops at
the first ratio whose validation drop exceeds the largest level (the drop grows as symbols shrink).
Per split and drop level (1 and 2 points), the point is the fewest symbols whose validation drop is
within the level; only those points are then evaluated on the test images, once. Device MACs = head
+ encoder per image. Writes benchmarks/results/<name>.json and a plot (symbols against device MACs, one line per
drop level).

    python benchmarks/rate_frontier.py          # ~15-25 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bnpp_cli import ChannelConfig, CodecError, EvalConfig, FitConfig, evaluate_run, fit_and_measure, load_run
from harness import (REPO, VALIDATION_RULES, Results, add_options, floats, head_macs, legend, pyplot, rel,
                     save_figure, shared_backbone, validation_images)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--splits", default="layer3,layer4,layer2,layer1")
    ap.add_argument("--ratios", default="16,32,64,128,256")
    ap.add_argument("--levels", default="1,2", help="drop levels in points")
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-snr", type=float, default=10.0, help="trained over PSNR >= this (dB), as the grid")
    ap.add_argument("--snr", type=float, default=20.0, help="the frontier's condition (dB)")
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--validation", choices=VALIDATION_RULES, default="test-half",
                    help="where choices are made (see the module docstring)")
    add_options(ap, name="rate_frontier", plot_only=True)
    return ap.parse_args()


def main() -> None:
    args = parse()
    out = Path(args.out)
    levels = floats(args.levels)
    if args.plot_only:
        plot(out / f"{args.name}.png", json.loads((out / f"{args.name}.json").read_text())["frontier"], levels, args.snr)
        return
    bb, data = shared_backbone("resnet18_cifar10")
    runs = out / "runs" / args.name
    val, test_npz, val_info = validation_images(args.validation, data, runs, args.seed)
    results = Results(out / f"{args.name}.json")
    t0 = time.perf_counter()
    fits: list[dict] = []
    frontier: list[dict] = []

    def save(complete: bool) -> None:
        results.write({
            "seeds": [args.seed],
            "budget": {"train_images": args.train_limit, "epochs": args.epochs, "preset": "bnpp",
                       "train_condition": f"AWGN PSNR >= {args.train_snr:g} dB"},
            "condition": {"snr_db": args.snr}, "draws": args.draws, "levels_points": levels,
            "validation": {"rule": args.validation, **val_info},
            "wall_seconds": time.perf_counter() - t0, "complete": complete, "fits": fits, "frontier": frontier})

    for split in args.splits.split(","):
        for ratio in sorted(float(r) for r in args.ratios.split(",")):
            name = f"{split}-{ratio:g}x"
            cfg = FitConfig(backbone=bb, split=split, data=str(data / "train.npz"), out=str(runs / name),
                            channel=ChannelConfig("awgn", args.train_snr), ratio=ratio, limit=args.train_limit,
                            codec_epochs=args.epochs, device=args.device, seed=args.seed)
            try:  # measured on the validation images only
                trial = fit_and_measure(cfg, str(val), [args.snr], args.draws)
            except CodecError as e:  # a ratio this split cannot meet
                print(f"{name}: skipped ({e})", flush=True)
                continue
            ev = trial.evaluation
            head = head_macs(load_run(trial.run))
            top1 = ev.results[0]["top1_mean"]
            row = {"name": name, "split": split, "ratio": ratio, "symbols": ev.code_symbols, "code_shape": ev.code_shape,
                   "head_macs": head, "encoder_macs": trial.encoder_macs,
                   "device_macs": head + trial.encoder_macs, "val_images": ev.images,
                   "val_backbone_top1": ev.backbone_top1, "val_top1": top1,
                   "val_drop": 100 * (ev.backbone_top1 - top1), "fit_seconds": trial.fit_seconds,
                   "reused": trial.reused, "run": rel(trial.run)}
            fits.append(row)
            print(f"{name:12s} {row['symbols']:4d} symbols  val drop {row['val_drop']:6.2f} pt  "
                  f"device {row['device_macs'] / 1e6:.1f} M MACs  fit {trial.fit_seconds:.0f} s", flush=True)
            save(False)
            if row["val_drop"] > max(levels):
                break
        # the frontier at this split: chosen on validation, then the test split once per chosen point
        tested: dict[str, dict] = {}
        for level in levels:
            ok = [r for r in fits if r["split"] == split and r["val_drop"] <= level]
            tried = [r for r in fits if r["split"] == split]
            if not ok:
                frontier.append({"split": split, "level": level, "symbols": None,
                                 "fewest_tried": min(r["symbols"] for r in tried) if tried else None,
                                 "best_val_drop": min(r["val_drop"] for r in tried) if tried else None})
                continue
            best = min(ok, key=lambda r: r["symbols"])
            if best["name"] not in tested:
                test = evaluate_run(EvalConfig(run=str(REPO / best["run"]), data=str(test_npz),
                                               conditions=[args.snr], draws=args.draws))
                tested[best["name"]] = {"test_top1": test.results[0]["top1_mean"],
                                        "test_backbone_top1": test.backbone_top1,
                                        "test_drop": 100 * (test.backbone_top1 - test.results[0]["top1_mean"]),
                                        "test_images": test.images}
            frontier.append({"split": split, "level": level, "symbols": best["symbols"], "ratio": best["ratio"],
                             "device_macs": best["device_macs"], "val_drop": best["val_drop"],
                             **tested[best["name"]], "name": best["name"]})
            print(f"frontier {split} within {level:g} pt (validation): {best['symbols']} symbols, test drop "
                  f"{tested[best['name']]['test_drop']:.2f} pt", flush=True)
        save(False)
    save(True)
    plot(out / f"{args.name}.png", frontier, levels, args.snr)


def plot(path: Path, frontier, levels, snr: float) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for level in levels:
        pts = sorted((r for r in frontier if r["level"] == level and r["symbols"]), key=lambda r: r["device_macs"])
        if pts:
            ax.plot([r["device_macs"] / 1e6 for r in pts], [r["symbols"] for r in pts], marker="o",
                    label=f"within {level:g} pt (chosen on validation)")
            for r in pts:
                ax.annotate(f"{r['split']}\n(test {r['test_drop']:.2f})", (r["device_macs"] / 1e6, r["symbols"]),
                            fontsize=7, textcoords="offset points", xytext=(4, 4))
    ax.set_yscale("log", base=2)
    ax.set_xlabel("device MACs per image, head + encoder (M)")
    ax.set_ylabel(f"fewest symbols per image (AWGN PSNR {snr:g} dB)")
    ax.set_title("resnet18 / CIFAR-10 rate frontier (bnpp preset, grid budget)")
    ax.grid(alpha=0.3)
    legend(ax, fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
