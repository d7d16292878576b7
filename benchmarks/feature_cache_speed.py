"""Candidate-fit speed: `bnpp fit`'s default path vs the feature cache, side by side in one run.

On the shared resnet18 / CIFAR-10, at each split (layer1..layer4), the library's fit_codec (the code
behind `bnpp fit` and every `bnpp search` candidate) runs in three modes, interleaved (repeat r:
every split, every mode) so that machine load hits them alike:

    default      bnpp fit's defaults: augmentation on, no cache (the head runs every batch)
    no-augment   --no-augment, no cache (what augmentation itself costs)
    cache        --no-augment --cache-dir DIR: the head's features and teacher logits read from
                 memory-mapped .npy files (built by the first cached fit at that split, reused after)

Reported per split and mode: training images/s (images over the epochs' own seconds, median of the
repeats), and the whole fit_codec wall (backbone load, trace, validation included). The cache's
build time is reported apart, and amortised over the candidates that share it (a search's rates).

    python benchmarks/feature_cache_speed.py            # -> benchmarks/results/feature_cache_speed.json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bnpp_cli import ChannelConfig, FitConfig, fit_codec
from harness import RESULTS, Results, add_options, shared_backbone

MODES = {"default": {"augment": True, "cache": False}, "no-augment": {"augment": False, "cache": False},
         "cache": {"augment": False, "cache": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="layer1,layer2,layer3,layer4")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--val-fraction", type=float, default=0.02,
                    help="held out for the fits' per-epoch validation (the same in every mode; small: it is not timed)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=64.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--share", type=int, default=3, help="candidates sharing one cache (a search's rates)")
    add_options(ap, out=RESULTS, name="feature_cache_speed", seed=False)
    args = ap.parse_args()
    backbone, data = shared_backbone("resnet18_cifar10")
    scratch = Path(tempfile.mkdtemp(prefix="bnpp-cache-speed-"))
    splits = args.splits.split(",")
    rows: dict[tuple[str, str], list[dict]] = {(s, m): [] for s in splits for m in MODES}
    builds: dict[str, dict] = {}
    t0 = time.perf_counter()
    try:
        for rep in range(args.repeats):
            for split in splits:
                for mode, how in MODES.items():
                    out = scratch / f"{split}-{mode}-{rep}"
                    config = FitConfig(
                        backbone=backbone,
                        split=split, data=str(data / "train.npz"), out=str(out), channel=ChannelConfig("awgn", 20.0),
                        ratio=args.ratio, limit=args.images, val_fraction=args.val_fraction, codec_epochs=args.epochs,
                        augment=how["augment"], device=args.device,
                        feature_cache=str(scratch / "features") if how["cache"] else False)
                    start = time.perf_counter()
                    result = fit_codec(config)
                    wall = time.perf_counter() - start
                    train_s = sum(e["seconds"] for e in result.epochs)
                    images = sum(e["images"] for e in result.epochs)
                    row = {"repeat": rep, "images": images, "train_s": train_s, "images_per_s": images / train_s,
                           "fit_s": result.seconds, "wall_s": wall, "features": result.features,
                           "val_top1_worst": result.epochs[-1].get("val_top1_worst")}
                    rows[(split, mode)].append(row)
                    if result.features and result.features["built"]:
                        builds[split] = result.features
                    print(f"[{rep}] {split} {mode}: {row['images_per_s']:.0f} img/s train, wall {wall:.1f} s"
                          + (f", cache {'built' if result.features['built'] else 'reused'} "
                             f"{result.features['build_s']:.1f} s" if result.features else ""), flush=True)
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = []
    for split in splits:
        med = {m: statistics.median(r["images_per_s"] for r in rows[(split, m)]) for m in MODES}
        wall = {m: statistics.median(r["wall_s"] for r in rows[(split, m)]) for m in MODES}
        build = builds.get(split, {})
        build_s = build.get("build_s", 0.0)
        images = args.images * args.epochs
        # one candidate's cost at the same split when `share` candidates split one cache build
        amortised = images / (images / med["cache"] + build_s / args.share)
        table.append({"split": split, "images_per_s": med, "wall_s": wall, "cache_build_s": build_s,
                      "cache_key_s": build.get("key_s"), "cache_rows": build.get("rows"),
                      "speedup_vs_default": med["cache"] / med["default"],
                      "speedup_vs_no_augment": med["cache"] / med["no-augment"],
                      "amortised_images_per_s": amortised, "amortised_speedup_vs_default": amortised / med["default"],
                      "wall_speedup_vs_default": wall["default"] / wall["cache"]})
        print(f"{split}: default {med['default']:.0f}, no-augment {med['no-augment']:.0f}, cache {med['cache']:.0f} "
              f"img/s ({med['cache'] / med['default']:.2f}x; amortised with a {build_s:.1f} s build over "
              f"{args.share}: {amortised / med['default']:.2f}x); wall {wall['default']:.1f} / {wall['cache']:.1f} s")
    summary = {"seed": 0, "images": args.images, "epochs": args.epochs, "val_fraction": args.val_fraction,
               "ratio": args.ratio, "repeats": args.repeats, "share": args.share, "seconds": time.perf_counter() - t0,
               "modes": MODES, "table": table, "rows": {f"{s}/{m}": r for (s, m), r in rows.items()}}
    Results(Path(args.out) / f"{args.name}.json").write(summary)


if __name__ == "__main__":
    main()
