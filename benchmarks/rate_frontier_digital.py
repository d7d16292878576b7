"""Digital rate frontier on real data: the fewest MEASURED bits per image within 1 and 2 points.

The digital half of benchmarks/rate_frontier.py (same structure, same JSON shape). For each split of
the shared CIFAR-10 resnet18 (layer1-layer4) the entropy-coded codec (preset entropy: an integer code
with a learned factorized prior, range-coded, over an error-free link, channel none) is fitted at
each ratio of --ratios and each rate weight of --lmbdas in ascending order (more weight on the rate:
fewer bits each time) with the rate-accuracy grid's budget (the first 10,000 training images, 3 codec
epochs). These fits do NOT augment: FitConfig(augment=False, feature_cache=DIR), so the frozen head's
features and the teacher's logits are computed once per split (run/features.py) and shared by every
fit at that split. Every fit is measured on the VALIDATION images with evaluate_run (the code path of
`bnpp eval`): the bits are those of each image's own batch-1 range-coded stream (8 x the payload
bytes, wire header excluded), not the prior's estimate (which is recorded beside them). Validation
(--validation test-half, the default) is 5,000 images of the official test split the backbone has
never seen (harness.test_halves); the other 5,000 are the test images. At a ratio, the sweep stops
at the first lmbda whose validation drop exceeds the largest level.

Ratios: every split is swept at --ratios' first ratio (16). Each further ratio (64, then 256: a smaller
latent, fewer integers and fewer 32-bit coder words per stream) is swept only at splits where the
ratio before it has a fit within the smallest level (1 point): elsewhere a smaller latent is not
expected to do better (the layer2 entropy codes of entropy_sweep.py lost more at 64x than at 16x on test). A
fallback ratio (8: a bigger latent) is swept only where no fit of the first ratio is within the
largest level (2 points), to find a point within it at all. lmbda runs up to 10 by default: at this
budget (468 optimizer steps) rate weights up to 0.1 barely move the code (the rate follows the
latent's size), so the sweep goes on until the stop rule bites.

Per split and drop level (1 and 2 points), the point is the fewest measured validation bits among the
fits within the level, where fits within --bits-tie (1 bit per image) of the fewest count as equal and
the lowest validation drop among them wins (the coder writes 32-bit words, so most codes of one latent
size measure the same bits to a fraction of a bit, and the fewest by 0.01 bit is merely the noisiest);
only those points are then evaluated on the test images, once. Device MACs = head + encoder per image.
Writes benchmarks/results/<name>.json and a plot (bits per image against device MACs, one line per
drop level, log y).

    flock /tmp/bnpp-heavy.lock python benchmarks/rate_frontier_digital.py     # ~15-20 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bnpp_cli import ChannelConfig, CodecError, EvalConfig, FitConfig, evaluate_run, fit_and_measure, load_run
from harness import (REPO, VALIDATION_RULES, Results, add_options, drop_stale, floats, head_macs, pyplot, rel,
                     save_figure, shared_backbone, validation_images)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--splits", default="layer4,layer3,layer2,layer1")
    ap.add_argument("--ratios", default="16,64,256", help="the first is swept at every split, each further one "
                                                          "only where the one before has a fit within the smallest level")
    ap.add_argument("--fallback-ratios", default="8", help="swept (in this order) only where no fit of --ratios' "
                                                           "first is within the largest level; empty: none")
    ap.add_argument("--lmbdas", default="0.001,0.003,0.01,0.03,0.1,0.3,1,3,10",
                    help="rate weights, swept in ascending order until the validation drop passes the largest level")
    ap.add_argument("--levels", default="1,2", help="drop levels in points")
    ap.add_argument("--bits-tie", type=float, default=1.0,
                    help="bits per image within which two fits count as the same rate (then the lower drop wins)")
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--validation", choices=VALIDATION_RULES, default="test-half",
                    help="where choices are made (see benchmarks/rate_frontier.py)")
    add_options(ap, name="rate_frontier_digital", plot_only=True)
    return ap.parse_args()


def main() -> None:
    args = parse()
    out = Path(args.out)
    if args.plot_only:  # the plot again from the results file, nothing fitted or evaluated
        res = json.loads((out / f"{args.name}.json").read_text())
        plot(out / f"{args.name}.png", res["frontier"], res["levels_points"], res["fits"])
        return
    bb, data = shared_backbone("resnet18_cifar10")
    runs = out / "runs" / args.name
    cache = out / "runs" / "feature_cache"  # shared with any other benchmark's no-augment fits of this backbone
    val, test_npz, val_info = validation_images(args.validation, data, runs, args.seed)
    levels, ratios, fallback = floats(args.levels), floats(args.ratios), floats(args.fallback_ratios)
    lmbdas = sorted(floats(args.lmbdas))
    results = Results(out / f"{args.name}.json")
    t0 = time.perf_counter()
    fits: list[dict] = []
    frontier: list[dict] = []

    def save(complete: bool) -> None:
        results.write({
            "seeds": [args.seed],
            "budget": {"train_images": args.train_limit, "epochs": args.epochs, "preset": "entropy",
                       "channel": "none (error-free link)", "augment": False,
                       "feature_cache": rel(cache), "ratios": ratios, "fallback_ratios": fallback, "lmbdas": lmbdas,
                       "ratio_rule": f"{ratios[0]:g}x at every split; each of {ratios[1:]} only where a fit at the "
                                     f"ratio before it is within {min(levels):g} point(s) on validation; {fallback} "
                                     f"only where no {ratios[0]:g}x fit is within {max(levels):g}",
                       "choice_rule": f"per level, the fewest validation bits; fits within {args.bits_tie:g} bit(s) "
                                      "per image of the fewest count as equal and the lowest validation drop wins",
                       "lmbda_rule": "ascending; a ratio's sweep stops at the first lmbda whose validation drop "
                                     f"exceeds {max(levels):g} points"},
            "bits": "measured: 8 x the payload bytes of each image's own batch-1 range-coded stream (wire header "
                    "excluded), mean over the images; est_bits is -log2 under the run's integer tables (the "
                    "prior's likelihood in runs fitted before d70ad1b)",
            "levels_points": levels, "validation": {"rule": args.validation, **val_info},
            "wall_seconds": time.perf_counter() - t0, "complete": complete, "fits": fits, "frontier": frontier})

    for split in args.splits.split(","):
        for i, ratio in enumerate(ratios + fallback):
            # a further ratio: while the previous one has a fit within the smallest level; a fallback
            # ratio: where the first has none within the largest
            prev = ratios[0] if i >= len(ratios) else ratios[i - 1] if i else None
            level = min(levels) if i < len(ratios) else max(levels)
            within = any(r["val_drop"] <= level for r in fits if r["split"] == split and r["ratio"] == prev)
            if i > 0 and within != (i < len(ratios)):
                print(f"{split}: ratio {ratio:g} not swept ({prev:g}x has {'a' if within else 'no'} fit within "
                      f"{level:g} pt{'' if any(r['split'] == split and r['ratio'] == prev for r in fits) else ': not swept'})",
                      flush=True)
                continue
            for lmbda in lmbdas:
                name = f"{split}-{ratio:g}x-lmbda{lmbda:g}"
                cfg = FitConfig(backbone=bb, split=split, data=str(data / "train.npz"), out=str(runs / name),
                                channel=ChannelConfig("none"), preset="entropy", ratio=ratio, lmbda=lmbda,
                                limit=args.train_limit, codec_epochs=args.epochs, augment=False,
                                feature_cache=str(cache), device=args.device, seed=args.seed)
                try:
                    drop_stale(cfg)  # reuse only a fit of this recipe (lmbda included) and codec
                    trial = fit_and_measure(cfg, str(val), None, 1)  # measured on the validation images only
                except CodecError as e:  # a ratio this split cannot meet
                    print(f"{name}: skipped ({e})", flush=True)
                    break
                ev = trial.evaluation
                head = head_macs(load_run(trial.run))
                row = {"name": name, "split": split, "ratio": ratio, "lmbda": lmbda, "code_shape": ev.code_shape,
                       "code_integers": ev.code_symbols, "head_macs": head, "encoder_macs": trial.encoder_macs,
                       "device_macs": head + trial.encoder_macs, "val_images": ev.images,
                       "val_backbone_top1": ev.backbone_top1, "val_top1": ev.noiseless_top1,
                       "val_drop": 100 * (ev.backbone_top1 - ev.noiseless_top1), "val_bits": ev.bits_per_image,
                       "val_est_bits": ev.estimated_bits_per_image, "val_frame_bytes": ev.frame_bytes_per_image,
                       "fit_seconds": trial.fit_seconds, "features_seconds": trial.features_s,
                       "reused": trial.reused, "run": rel(trial.run)}
                fits.append(row)
                print(f"{name:22s} {row['val_bits']:8.2f} bits (est {row['val_est_bits']:7.2f})  val drop "
                      f"{row['val_drop']:6.2f} pt  device {row['device_macs'] / 1e6:.1f} M MACs  "
                      f"fit {trial.fit_seconds:.0f} s", flush=True)
                save(False)
                if row["val_drop"] > max(levels):
                    break
        # the frontier at this split: chosen on validation, then the test split once per chosen point
        tested: dict[str, dict] = {}
        tried = [r for r in fits if r["split"] == split]
        for level in levels:
            ok = [r for r in tried if r["val_drop"] <= level]
            if not ok:
                frontier.append({"split": split, "level": level, "bits": None,
                                 "fewest_bits_tried": min(r["val_bits"] for r in tried) if tried else None,
                                 "best_val_drop": min(r["val_drop"] for r in tried) if tried else None})
                continue
            # the fewest bits; fits within --bits-tie of them count as as few, and of those the lowest
            # validation drop wins (the coder writes 32-bit words: codes differing by a fraction of a
            # bit per image are the same rate, and the fewest by 0.01 bit is only the noisiest)
            fewest = min(r["val_bits"] for r in ok)
            best = min((r for r in ok if r["val_bits"] <= fewest + args.bits_tie), key=lambda r: r["val_drop"])
            if best["name"] not in tested:
                test = evaluate_run(EvalConfig(run=str(REPO / best["run"]), data=str(test_npz), draws=1))
                tested[best["name"]] = {"test_top1": test.noiseless_top1, "test_backbone_top1": test.backbone_top1,
                                        "test_drop": 100 * (test.backbone_top1 - test.noiseless_top1),
                                        "test_bits": test.bits_per_image, "test_est_bits": test.estimated_bits_per_image,
                                        "test_images": test.images}
            frontier.append({"split": split, "level": level, "bits": best["val_bits"], "ratio": best["ratio"],
                             "lmbda": best["lmbda"], "code_shape": best["code_shape"],
                             "device_macs": best["device_macs"], "val_drop": best["val_drop"],
                             **tested[best["name"]], "name": best["name"]})
            print(f"frontier {split} within {level:g} pt (validation): {best['val_bits']:.2f} bits ({best['name']}), "
                  f"test drop {tested[best['name']]['test_drop']:.2f} pt at {tested[best['name']]['test_bits']:.2f} bits",
                  flush=True)
        save(False)
    save(True)
    plot(out / f"{args.name}.png", frontier, levels, fits)


def plot(path: Path, frontier, levels, fits=()) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if fits:  # every fit, its validation drop beside it: where the rate went at each split
        ax.scatter([r["device_macs"] / 1e6 for r in fits], [r["val_bits"] for r in fits], s=12, color="0.7",
                   label="every fit (validation)", zorder=1)
    for level, style in zip(levels, ("-", "--", ":")):
        pts = sorted((r for r in frontier if r["level"] == level and r["bits"]), key=lambda r: r["device_macs"])
        if pts:
            ax.plot([r["device_macs"] / 1e6 for r in pts], [r["bits"] for r in pts], marker="o", ls=style,
                    label=f"within {level:g} pt (chosen on validation)", zorder=2)
    for r in frontier:
        if r["level"] == max(levels) and r["bits"]:
            ax.annotate(f"{r['split']}: test {r['test_drop']:.2f} pt, {r['test_bits']:.0f} b",
                        (r["device_macs"] / 1e6, r["bits"]), fontsize=7, textcoords="offset points", xytext=(4, 6))
        elif r["level"] == max(levels) and r["fewest_bits_tried"]:  # nothing within: its best, for scale
            best = min((f for f in fits if f["split"] == r["split"]), key=lambda f: f["val_drop"], default=None)
            if best:
                ax.scatter([best["device_macs"] / 1e6], [best["val_bits"]], marker="x", color="k", zorder=3)
                ax.annotate(f"{r['split']}: none within {max(levels):g} pt\n(best {best['val_drop']:.2f} pt at "
                            f"{best['val_bits']:.0f} b)", (best["device_macs"] / 1e6, best["val_bits"]), fontsize=7,
                            textcoords="offset points", xytext=(4, -16))
    ax.set_yscale("log", base=2)
    ax.set_xlabel("device MACs per image, head + encoder (M)")
    ax.set_ylabel("measured bits per image (batch-1 streams)")
    ax.margins(x=0.15)
    ax.set_title("resnet18 / CIFAR-10, entropy code, error-free link: fewest bits", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
