"""Variable-length code vs fixed-length codes on real data (issue 18 item 3).

On the shared CIFAR-10 resnet18 at one split (default layer3, 256 x 2 x 2), AWGN trained over a PSNR
range (default 5 to 25 dB, drawn per batch), the same data and epochs for every model:

  variable   preset variable at --variable-ratio (K symbols at most): one model, every prefix a code;
             after the fit its length table is chosen on the validation images (the fit's own step)
  fixed-K    preset bnpp at each --fixed-ratios: K symbols at every condition

Each is evaluated on the official test split at the conditions (default 5, 10, 15, 20, 25 dB), 2
noise draws. The comparison: the fixed-length model of equal worst-case accuracy is the one with the
fewest symbols whose VALIDATION top-1 at the worst condition is at least the variable model's there
(with the length its table sends); then both models' TEST top-1 per condition and their mean symbols
per image over the range (the variable model's from its table at every whole dB, and at the
evaluated conditions). Results: benchmarks/results/<name>.json and .png.

    python benchmarks/variable_length.py                      # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
from rate_accuracy import commit, machine, rel  # noqa: E402  (the grid benchmark's own; benchmarks/ is sys.path[0])


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="layer3")
    ap.add_argument("--snr", default="5:25", help="training range A:B in dB (the worst is the comparison's)")
    ap.add_argument("--conditions", default="5,10,15,20,25", help="test PSNRs in dB")
    ap.add_argument("--variable-ratio", type=float, default=16.0, help="the variable code's largest length: elements / ratio")
    ap.add_argument("--fixed-ratios", default="64,32,16", help="fixed-length models' bandwidth ratios")
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--name", default="variable_length")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    return ap.parse_args()


def main() -> None:
    args = parse()
    from bnpp_cli.link.config import ChannelConfig
    from bnpp_cli.run.config import FitConfig
    from bnpp_cli.run.measure import fit_and_measure
    from bnpp_cli.run.pipeline import load_run
    from bnpp_cli.split.backbone import BackboneConfig

    checkpoint, data = SHARED / "models" / "resnet18_cifar10.safetensors", SHARED / "data" / "cifar10"
    if not checkpoint.is_file():
        sys.exit(f"{checkpoint} not found: this benchmark needs the shared model and data")
    lo, hi = (float(v) for v in args.snr.split(":"))
    conditions = [float(v) for v in args.conditions.split(",")]
    out = Path(args.out)
    runs = out / "runs" / args.name
    t0, code_commit = time.perf_counter(), commit()
    bb = BackboneConfig("resnet18", checkpoint=str(checkpoint), num_classes=10, img_size=32)
    models = [("variable", "variable", args.variable_ratio)] + [
        (f"fixed-{r:g}x", "bnpp", float(r)) for r in (float(v) for v in args.fixed_ratios.split(","))]
    rows, summary = [], {}
    for name, preset, ratio in models:
        cfg = FitConfig(backbone=bb, split=args.split, data=str(data / "train.npz"), out=str(runs / name),
                        channel=ChannelConfig("awgn", [lo, hi]), ratio=ratio, preset=preset, limit=args.train_limit,
                        codec_epochs=args.epochs, device=args.device, seed=args.seed)
        trial = fit_and_measure(cfg, str(data / "test.npz"), conditions, args.draws, limit=args.test_limit)
        ev, metrics = trial.evaluation, trial.metrics
        last = metrics["epochs"][-1]
        if preset == "variable":
            table = metrics["validation"]["length_table"]
            worst = min(table["rows"], key=lambda r: r["snr_db"])
            val_worst = worst["top1"][str(worst["symbols_per_image"])]
            run = load_run(trial.run)
            channel = run.pipeline.channel
            per_db = {d: run.pipeline.codec.symbols(channel.param_from_condition(float(d)))
                      for d in range(int(lo), int(hi) + 1)}
        else:
            table, val_worst = None, last["val_top1_worst"]
            per_db = {d: ev.code_symbols for d in range(int(lo), int(hi) + 1)}
        summary[name] = {
            "preset": preset, "ratio": ratio, "max_symbols": ev.code_symbols, "code_shape": ev.code_shape,
            "val_top1_worst": val_worst, "val_images": metrics["validation"].get("images"),
            "symbols_per_db": per_db, "mean_symbols_per_db": statistics.fmean(per_db.values()),
            "mean_symbols_eval": statistics.fmean(r["symbols_per_image"] for r in ev.results),
            "test_noiseless_top1": ev.noiseless_top1, "backbone_top1": ev.backbone_top1,
            "encoder_macs": trial.encoder_macs, "fit_seconds": trial.fit_seconds, "reused": trial.reused,
            "length_table_validation": table, "run": rel(trial.run),
        }
        for r in ev.results:
            rows.append({"model": name, "snr_db": r["condition"]["snr_db"], "symbols_per_image": r["symbols_per_image"],
                         "top1": r["top1_mean"], "top1_std": r["top1_std"], "draws": r["draws"],
                         "drop": 100 * (ev.backbone_top1 - r["top1_mean"])})
            print(f"{name:12s} PSNR {r['condition']['snr_db']:5.1f} dB  symbols {r['symbols_per_image']:4d}  "
                  f"test top-1 {100 * r['top1_mean']:6.2f}", flush=True)
        write(out, args, code_commit, t0, rows, summary, None, complete=False)
    # the fixed model of equal worst-case accuracy, chosen on validation figures
    vl = summary["variable"]
    fixed = sorted((n for n in summary if n != "variable"), key=lambda n: summary[n]["max_symbols"])
    equal = [n for n in fixed if summary[n]["val_top1_worst"] >= vl["val_top1_worst"]]
    match = equal[0] if equal else fixed[-1]
    verdict = {
        "fixed_of_equal_worst_case": match, "qualifies": bool(equal),
        "rule": "fewest symbols among fixed models whose validation top-1 at the worst condition is >= the "
                "variable model's there (with its table's length)",
        "variable_mean_symbols_per_db": vl["mean_symbols_per_db"], "fixed_symbols": summary[match]["max_symbols"],
        "variable_mean_symbols_eval": vl["mean_symbols_eval"],
        "test_top1": {n: {str(r["snr_db"]): r["top1"] for r in rows if r["model"] == n} for n in ("variable", match)},
    }
    write(out, args, code_commit, t0, rows, summary, verdict, complete=True)
    plot(out / f"{args.name}.png", rows, summary, match)
    print(json.dumps(verdict, indent=1))


def write(out: Path, args, code_commit: str, t0: float, rows, summary, verdict, complete: bool) -> None:
    from bnpp_cli.files import write_json

    doc = {"command": "python " + " ".join(sys.argv), "commit": code_commit, "machine": machine(),
           "seeds": [args.seed], "split": args.split, "channel": "awgn", "train_range_db": args.snr,
           "train_limit": args.train_limit, "epochs": args.epochs, "draws": args.draws, "test_images": args.test_limit
           or 10000, "wall_seconds": time.perf_counter() - t0, "complete": complete, "models": summary,
           "rows": rows, "comparison": verdict}
    write_json(out / f"{args.name}.json", doc)


def plot(path: Path, rows, summary, match: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    for name in summary:
        rs = sorted((r for r in rows if r["model"] == name), key=lambda r: r["snr_db"])
        style = dict(lw=2.5) if name in ("variable", match) else dict(lw=1, alpha=0.6)
        a1.plot([r["snr_db"] for r in rs], [100 * r["top1"] for r in rs], marker="o", label=name, **style)
        per_db = summary[name]["symbols_per_db"]
        a2.step(list(map(float, per_db)), list(per_db.values()), where="post", label=name, **style)
    a1.axhline(100 * next(iter(summary.values()))["backbone_top1"], color="k", ls="--", lw=1, label="uncut backbone")
    a1.set_xlabel("PSNR (dB)")
    a1.set_ylabel("test top-1 (%)")
    a2.set_xlabel("PSNR (dB)")
    a2.set_ylabel("symbols per image sent")
    a2.set_yscale("log", base=2)
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("resnet18 / CIFAR-10: variable-length code vs fixed-length codes (AWGN)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
