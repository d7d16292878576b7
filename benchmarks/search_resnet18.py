"""`bnpp search` on the shared CIFAR-10 resnet18: does the measured search find the right split and rate?

Runs the library's search (bnpp_cli.search_split_rate, the code behind `bnpp search`) on
../shared/data/cifar10/train.npz (validation: the 10 % that every fit holds out), AWGN trained for
PSNR >= 20 dB and measured at 20 dB, --max-drop 2, then touches the test split ONCE: the
recommended candidate's run through evaluate_run on ../shared/data/cifar10/test.npz. It compares
the recommendation with the full benchmark grid (benchmarks/README.md: the earliest split within
2 points at 64x AWGN 20 dB is layer3, 29.6 M device MACs incl. the encoder).

    python benchmarks/search_resnet18.py                 # -> benchmarks/results/search_resnet18.{json,png}
    python benchmarks/search_resnet18.py --name X ...    # another results name (and search directory)
    python benchmarks/search_resnet18.py --no-augment --name search_resnet18_cached \
        --compare benchmarks/results/search_resnet18.json   # fits from the feature cache, drops side by side
    python benchmarks/search_resnet18.py --augment        # the search with random crop + flip in its fits

The candidates' runs go to runs/search_resnet18 (not committed); a second invocation reuses them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bnpp_cli import (Budget, ChannelConfig, EvalConfig, SearchConfig, evaluate_run, plot_search,
                      search_split_rate)
from harness import REPO, RESULTS, Results, add_options, shared_backbone

GRID_EARLIEST = {"split": "layer3", "device_macs": 29.6e6, "source": "benchmarks/README.md full grid, bnpp-best "
                 "64x AWGN 20 dB test drop 0.89 (10,000 images x 3 epochs)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--splits", default="layer1,layer2,layer3,layer4")
    ap.add_argument("--ratios", default="16,64,256")
    ap.add_argument("--max-drop", type=float, default=2.0)
    ap.add_argument("--snr", type=float, default=20.0)
    ap.add_argument("--first-images", type=int, default=2000)
    ap.add_argument("--first-epochs", type=int, default=1)
    ap.add_argument("--eta", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--test-draws", type=int, default=2)
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=False,
                    help="random crop + flip in the fits (the search's default is off: the feature cache serves them)")
    ap.add_argument("--compare", default=None,
                    help="a results JSON of the same search with augmentation: per-candidate validation drops side by side")
    ap.add_argument("--no-test", dest="test", action="store_false",
                    help="do not evaluate the recommendation on the test split (a timing re-run)")
    add_options(ap, out=RESULTS, name="search_resnet18")
    args = ap.parse_args()

    backbone, data = shared_backbone("resnet18_cifar10")
    out = REPO / "runs" / args.name
    config = SearchConfig(
        backbone=backbone,
        data=str(data / "train.npz"), out=str(out), channel=ChannelConfig("awgn", args.snr),
        splits=args.splits.split(","), rates=[float(r) for r in args.ratios.split(",")], max_drop=args.max_drop,
        budget=Budget(), first_images=args.first_images, first_epochs=args.first_epochs, eta=args.eta,
        rounds=args.rounds, augment=args.augment, draws=args.draws, device=args.device, seed=args.seed)

    def progress(event: str, info: dict) -> None:
        if event == "candidate":
            m = info["measured"]
            left = f"{info['left_s']:.0f}" if info["left_s"] is not None else "?"
            print(f"[{info['done']}/{info['planned']}] {m['name']}: val drop {m['val_drop']:.2f}, "
                  f"{m['device_macs'] / 1e6:.1f} M MACs, fit {m['fit_seconds']:.0f} s; "
                  f"elapsed {info['elapsed_s']:.0f} s, ~{left} s left", flush=True)
        elif event in ("round", "start"):
            print(event, info, flush=True)

    t0 = time.perf_counter()
    result = search_split_rate(config, progress)
    search_s = time.perf_counter() - t0
    rec = result.recommendation["candidate"]
    test = None
    if rec is not None and args.test:  # the test split, touched once, for the recommended candidate only
        ev = evaluate_run(EvalConfig(run=rec["run"], data=str(data / "test.npz"), conditions=[args.snr],
                                     draws=args.test_draws, device=args.device, seed=args.seed))
        top1 = ev.results[0]["top1_mean"]
        test = {"images": ev.images, "backbone_top1": ev.backbone_top1, "top1": top1,
                "drop": 100 * (ev.backbone_top1 - top1), "top1_draws": ev.results[0]["top1"],
                "noiseless_top1": ev.noiseless_top1}
    summary = {
        "seed": args.seed, "search_seconds": search_s, "search": result.to_dict(),
        "test": test, "grid_earliest_within_2": GRID_EARLIEST,
        "checks": None if rec is None or test is None else {
            "test_drop_within_max_drop": test["drop"] <= args.max_drop,
            "device_macs_vs_grid_earliest": rec["device_macs"] / GRID_EARLIEST["device_macs"],
            "within_10_percent_of_grid_earliest": rec["device_macs"] <= 1.1 * GRID_EARLIEST["device_macs"],
            "search_under_30_min": search_s <= 1800},
    }
    cands = result.candidates
    summary["fit_seconds_total"] = sum(c["fit_seconds"] for c in cands)
    summary["feature_cache_seconds_total"] = sum(c.get("features_s", 0.0) for c in cands)
    if args.compare:  # the same candidates (same names: split, rate, images, epochs), on the same validation images
        other = {c["name"]: c for c in json.loads(Path(args.compare).read_text())["search"]["candidates"]}
        pairs = [{"name": c["name"], "val_drop": c["val_drop"], "other_val_drop": other[c["name"]]["val_drop"],
                  "fit_seconds": c["fit_seconds"], "other_fit_seconds": other[c["name"]]["fit_seconds"]}
                 for c in cands if c["name"] in other]
        summary["compare"] = {"file": args.compare, "pairs": pairs,
                              "mean_val_drop_difference": statistics.mean(p["val_drop"] - p["other_val_drop"]
                                                                           for p in pairs) if pairs else None}
        for p in pairs:
            print(f"{p['name']}: val drop {p['val_drop']:.2f} here, {p['other_val_drop']:.2f} there; "
                  f"fit {p['fit_seconds']:.0f} s vs {p['other_fit_seconds']:.0f} s")
    Results(Path(args.out) / f"{args.name}.json").write(summary)
    plot_search(result, str(Path(args.out) / f"{args.name}.png"))
    print(f"search {search_s / 60:.1f} min; recommendation {rec}; test {test}; note: {result.recommendation['note']}")


if __name__ == "__main__":
    main()
