"""Variable-length code vs fixed-length codes on real data.

On the shared CIFAR-10 resnet18 at one split (default layer3, 256 x 2 x 2), the same training images
and epochs for every model:

  variable      preset variable at --variable-ratio (K symbols at most), AWGN trained over a PSNR range
                (default 5 to 25 dB, drawn per batch): one model, every prefix a code; after the fit
                its length table is chosen on the validation images (the fit's own step)
  fixed-K       preset bnpp at each --fixed-ratios, trained over the same range: K symbols everywhere
  specialist-c  preset bnpp trained AT one test condition c only (AWGN PSNR [c, c]) with the number
                of symbols the variable model's table sends at c: its ratio is elements / k_c, which
                at layer3 gives exactly k_c (code channels k_c / (H' W'), and k_c is a multiple of
                H' W' there); where k_c is not a multiple the nearest channel count is used and the
                results say so ("symbols_match")

Validation (--validation): test-half (default) = 5,000 images of the official test split the
backbone has never seen (benchmarks/heldout.py), given to every fit as FitConfig(val_data=...), the
other 5,000 being the test images; train-holdout = the earlier rule (the 2,500 images each fit
holds out of train.npz, which the backbone was trained on) with all 10,000 test images.

Each model is evaluated on the test images at the conditions (default 5, 10, 15, 20, 25 dB; a
specialist at its own condition), 2 noise draws. Comparisons:
  - the fixed-length model of equal worst-case accuracy = the one with the fewest symbols whose
    VALIDATION top-1 at the worst condition is at least the variable model's there (with the length
    its table sends); then both models' TEST top-1 per condition and their mean symbols per image
    over the range (the variable model's from its table at every whole dB, and at the conditions)
  - per condition, the variable model's test top-1 against its specialist's, at equal symbols
Results: benchmarks/results/<name>.json and .png.

    flock /tmp/bnpp-heavy.lock python benchmarks/variable_length.py       # ~8 min on 2 cores (9 fits)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from bnpp_cli import ChannelConfig, FitConfig, fit_and_measure, load_run
from harness import (VALIDATION_RULES, Results, add_options, drop_stale, floats, legend, pyplot, rel, save_figure,
                     shared_backbone, test_halves)


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="layer3")
    ap.add_argument("--snr", default="5:25", help="training range A:B in dB (the worst is the comparison's)")
    ap.add_argument("--conditions", default="5,10,15,20,25", help="test PSNRs in dB")
    ap.add_argument("--variable-ratio", type=float, default=16.0, help="the variable code's largest length: elements / ratio")
    ap.add_argument("--fixed-ratios", default="64,32,16", help="fixed-length models' bandwidth ratios")
    ap.add_argument("--no-specialists", action="store_true", help="skip the per-condition fixed-length models")
    ap.add_argument("--validation", choices=VALIDATION_RULES, default="test-half",
                    help="where choices are made (see the module docstring)")
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--test-limit", type=int, default=None)
    add_options(ap, name="variable_length", plot_only=True)
    return ap.parse_args()


def fit_fresh(cfg, test_npz: Path, conditions, args):
    """fit_and_measure, after removing a finished run that another recipe, codec or validation set made."""
    drop_stale(cfg)
    return fit_and_measure(cfg, str(test_npz), conditions, args.draws, limit=args.test_limit)


def main() -> None:
    args = parse()
    out = Path(args.out)
    if args.plot_only:
        doc = json.loads((out / f"{args.name}.json").read_text())
        plot(out / f"{args.name}.png", doc["rows"], doc["models"], doc["comparison"]["fixed_of_equal_worst_case"],
             doc["validation"])
        return
    bb, data = shared_backbone("resnet18_cifar10")
    lo, hi = (float(v) for v in args.snr.split(":"))
    conditions = floats(args.conditions)
    runs = out / "runs" / args.name / args.validation
    if args.validation == "test-half":
        # the same halves for every fit seed
        val, test_npz, val_info = test_halves(data / "test.npz", seed=0)
        val_data = str(val)
    else:
        test_npz, val_data = data / "test.npz", None
        val_info = {"source": "held out of train.npz (val_fraction 0.1, seed 0), seen by the backbone in its training"}
    state = {"t0": time.perf_counter(), "results": Results(out / f"{args.name}.json"),
             "validation": {"choice": args.validation, **val_info}}
    rows, summary = [], {}

    def fit(name: str, preset: str, ratio: float, train, evaluate_at) -> dict:
        cfg = FitConfig(backbone=bb, split=args.split, data=str(data / "train.npz"), out=str(runs / name),
                        channel=ChannelConfig("awgn", train), ratio=ratio, preset=preset, limit=args.train_limit,
                        codec_epochs=args.epochs, device=args.device, seed=args.seed, val_data=val_data)
        trial = fit_fresh(cfg, test_npz, evaluate_at, args)
        ev, metrics = trial.evaluation, trial.metrics
        table = metrics["validation"].get("length_table")
        if preset == "variable":
            worst = min(table["rows"], key=lambda r: r["snr_db"])
            val_worst = worst["top1"][str(worst["symbols_per_image"])]
            run = load_run(trial.run)
            channel = run.pipeline.channel
            per_db = {d: run.pipeline.codec.symbols(channel.param_from_condition(float(d)))
                      for d in range(int(lo), int(hi) + 1)}
        else:
            val_worst = metrics["epochs"][-1]["val_top1_worst"]
            per_db = {d: ev.code_symbols for d in range(int(lo), int(hi) + 1)}
        summary[name] = {
            "preset": preset, "ratio": ratio, "train_range_db": train, "max_symbols": ev.code_symbols,
            "code_shape": ev.code_shape, "feature_shape": ev.feature_shape, "val_top1_worst": val_worst,
            "val_images": metrics["validation"].get("images"), "symbols_per_db": per_db,
            "mean_symbols_per_db": statistics.fmean(per_db.values()),
            "mean_symbols_eval": statistics.fmean(r["symbols_per_image"] for r in ev.results),
            "test_images": ev.images, "test_noiseless_top1": ev.noiseless_top1, "backbone_top1": ev.backbone_top1,
            "encoder_macs": trial.encoder_macs, "fit_seconds": trial.fit_seconds, "reused": trial.reused,
            "length_table_validation": table, "run": rel(trial.run),
        }
        for r in ev.results:
            rows.append({"model": name, "snr_db": r["condition"]["snr_db"], "symbols_per_image": r["symbols_per_image"],
                         "top1": r["top1_mean"], "top1_std": r["top1_std"], "draws": r["draws"],
                         "drop": 100 * (ev.backbone_top1 - r["top1_mean"])})
            print(f"{name:16s} PSNR {r['condition']['snr_db']:5.1f} dB  symbols {r['symbols_per_image']:4d}  "
                  f"test top-1 {100 * r['top1_mean']:6.2f}  (fit {trial.fit_seconds:.0f} s)", flush=True)
        write(out, args, state, rows, summary, None, complete=False)
        return summary[name]

    vl = fit("variable", "variable", args.variable_ratio, [lo, hi], conditions)
    for r in (float(v) for v in args.fixed_ratios.split(",")):
        fit(f"fixed-{r:g}x", "bnpp", r, [lo, hi], conditions)
    specialists = []
    if not args.no_specialists:
        elements, positions = math.prod(vl["feature_shape"]), math.prod(vl["code_shape"][1:])
        for c in conditions:
            (k,) = [row["symbols_per_image"] for row in rows if row["model"] == "variable" and row["snr_db"] == c]
            channels = max(1, round(k / positions))
            name = f"specialist-{c:g}dB"
            sp = fit(name, "bnpp", elements / (channels * positions), [c, c], [c])
            specialists.append({"snr_db": c, "variable_symbols": k, "specialist": name,
                                "specialist_symbols": sp["max_symbols"], "symbols_match": sp["max_symbols"] == k})
    verdict = compare(summary, rows, specialists)
    write(out, args, state, rows, summary, verdict, complete=True)
    plot(out / f"{args.name}.png", rows, summary, verdict["fixed_of_equal_worst_case"], state["validation"])
    print(json.dumps(verdict, indent=1))


def compare(summary: dict, rows: list, specialists: list) -> dict:
    """The done-when comparison (validation choice, test figures) and the per-condition specialists."""
    def test(name: str, c: float) -> dict:
        (r,) = [r for r in rows if r["model"] == name and r["snr_db"] == c]
        return r

    vl = summary["variable"]
    fixed = sorted((n for n in summary if n.startswith("fixed-")), key=lambda n: summary[n]["max_symbols"])
    equal = [n for n in fixed if summary[n]["val_top1_worst"] >= vl["val_top1_worst"]]
    match = equal[0] if equal else fixed[-1]
    per_condition = []
    for s in specialists:
        v, sp = test("variable", s["snr_db"]), test(s["specialist"], s["snr_db"])
        per_condition.append({**s, "variable_test_top1": v["top1"], "variable_test_top1_std": v["top1_std"],
                              "specialist_test_top1": sp["top1"], "specialist_test_top1_std": sp["top1_std"],
                              "variable_minus_specialist_points": 100 * (v["top1"] - sp["top1"]),
                              "specialist_val_top1": summary[s["specialist"]]["val_top1_worst"]})
    return {
        "fixed_of_equal_worst_case": match, "qualifies": bool(equal),
        "rule": "fewest symbols among fixed models whose validation top-1 at the worst condition is >= the "
                "variable model's there (with its table's length)",
        "variable_val_top1_worst": vl["val_top1_worst"], "fixed_val_top1_worst": summary[match]["val_top1_worst"],
        "variable_mean_symbols_per_db": vl["mean_symbols_per_db"], "fixed_symbols": summary[match]["max_symbols"],
        "variable_mean_symbols_eval": vl["mean_symbols_eval"],
        "test_top1": {n: {str(r["snr_db"]): r["top1"] for r in rows if r["model"] == n} for n in ("variable", match)},
        "specialists": per_condition,
        "specialists_rule": "preset bnpp trained at the condition only (AWGN PSNR [c, c]), ratio elements / k with k "
                            "the variable model's symbols there; symbols_match says whether the code has exactly k",
    }


def write(out: Path, args, state: dict, rows, summary, verdict, complete: bool) -> None:
    doc = {"seeds": [args.seed], "split": args.split, "channel": "awgn",
           "train_range_db": args.snr, "train_limit": args.train_limit, "epochs": args.epochs, "draws": args.draws,
           "validation": state["validation"], "wall_seconds": time.perf_counter() - state["t0"], "complete": complete,
           "models": summary, "rows": rows, "comparison": verdict}
    state["results"].write(doc)


def plot(path: Path, rows, summary, match: str, validation: dict) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for name in (n for n in summary if not n.startswith("specialist-")):
        rs = sorted((r for r in rows if r["model"] == name), key=lambda r: r["snr_db"])
        style = dict(lw=2.5) if name in ("variable", match) else dict(lw=1, alpha=0.6)
        a1.plot([r["snr_db"] for r in rs], [100 * r["top1"] for r in rs], marker="o", label=name, **style)
        per_db = summary[name]["symbols_per_db"]
        a2.step(list(map(float, per_db)), list(per_db.values()), where="post", label=name, **style)
    spec = sorted((r for r in rows if r["model"].startswith("specialist-")), key=lambda r: r["snr_db"])
    if spec:
        a1.scatter([r["snr_db"] for r in spec], [100 * r["top1"] for r in spec], marker="x", s=60, color="k",
                   zorder=5, label="specialist at c (variable's symbols)")
    a1.axhline(100 * summary["variable"]["backbone_top1"], color="k", ls="--", lw=1, label="uncut backbone")
    a1.set_xlabel("PSNR (dB)")
    a1.set_ylabel(f"test top-1 (%), {summary['variable']['test_images']} images")
    a2.set_xlabel("PSNR (dB)")
    a2.set_ylabel("symbols per image sent")
    a2.set_yscale("log", base=2)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        legend(ax, fontsize=8)
    fig.suptitle(f"resnet18 / CIFAR-10: variable-length vs fixed-length codes (AWGN; choices on {validation['choice']})")
    save_figure(fig, path)


if __name__ == "__main__":
    main()
