"""Does a recipe carry to another task? One fit variant per run, measured on validation images.

For a shared model (resnet18 on CIFAR-10 or CIFAR-100, the ViT on CIFAR-10) at one split, ratio
and channel, fit `bnpp fit`'s defaults with the fields named by --set changed (FitConfig fields,
e.g. --set codec_epochs=30 --set distill_temperature=1), then measure the cut model on the
VALIDATION half of the official test split (harness.test_halves: 5,000 images the backbone never
saw) at the channel condition, 2 noise draws. The fit's own held-out share of train.npz (which
the backbone was trained on) is recorded beside it from metrics.json. --test also scores the test
half and the whole test split: for the final figure of a recipe already chosen, once.
One JSONL row per invocation in benchmarks/results/<name>.jsonl, with the resolved recipe, the
optimizer steps and the fit's wall time.

    python benchmarks/recipe_transfer.py --model resnet18_cifar100 --label default
    python benchmarks/recipe_transfer.py --model resnet18_cifar100 --label T1 --set distill_temperature=1
"""

from __future__ import annotations

import argparse
import math
from dataclasses import fields
from pathlib import Path

from bnpp_cli import ChannelConfig, EvalConfig, FitConfig, RunDir, evaluate_run, fit_and_measure, resolve_recipe
from harness import REPO, RUNS, SHARED_MODELS, Results, add_options, drop_stale, rel, shared_backbone, test_halves

_CONDITION = {"awgn": "snr_db", "bec": "erasure"}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18_cifar100", choices=list(SHARED_MODELS))
    ap.add_argument("--split", default="layer3")
    ap.add_argument("--ratio", type=float, default=16.0)
    ap.add_argument("--channel", default="awgn", choices=list(_CONDITION))
    ap.add_argument("--train", type=float, default=20.0, help="training condition: PSNR dB (awgn) or p (bec)")
    ap.add_argument("--at", type=float, default=None, help="condition measured at (default: --train)")
    ap.add_argument("--bits", type=int, default=8, help="bec: bits per symbol")
    ap.add_argument("--label", required=True, help="the variant's name (its run folder)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a FitConfig field changed from the default (repeatable)")
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--test", action="store_true", help="also score the test half and the whole test split")
    add_options(ap, name="recipe_transfer")
    return ap.parse_args()


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def overrides(pairs: list[str]) -> dict:
    names = {f.name for f in fields(FitConfig)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in names:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with a FitConfig field; valid: {', '.join(sorted(names))}")
        out[key] = _value(value)
    return out


def main() -> None:
    args = parse()
    bb, data = shared_backbone(args.model)
    out = Path(args.out)
    at = args.train if args.at is None else args.at
    # one folder per dataset: the halves are named by their indices, the same for every 10,000-image test split
    val, test_half, halves = test_halves(data / "test.npz", RUNS / "heldout" / data.name)
    tag = f"{args.model}-{args.split}-{args.ratio:g}x-{args.channel}{args.train:g}" + (f"-{args.bits}b" if args.channel == "bec" else "")
    cfg = FitConfig(backbone=bb, split=args.split, data=str(data / "train.npz"),
                    out=str(out / "runs" / args.name / tag / args.label),
                    channel=ChannelConfig(args.channel, args.train, args.bits), ratio=args.ratio, device=args.device,
                    seed=args.seed, **overrides(args.set))
    drop_stale(cfg)
    trial = fit_and_measure(cfg, str(val), [at], args.draws)
    recipe = resolve_recipe(cfg)
    ev, epochs = trial.evaluation, trial.metrics.get("epochs", [])
    last = epochs[-1] if epochs else {}
    train_images = last.get("images", 0)
    steps_per_epoch = train_images // recipe.batch_size
    row = {"model": args.model, "split": args.split, "ratio": args.ratio, "channel": args.channel,
           "train_condition": args.train, "bits": args.bits if args.channel == "bec" else None,
           "condition": {_CONDITION[args.channel]: at}, "label": args.label,
           "set": overrides(args.set), "seed": args.seed, "draws": args.draws,
           "recipe": {k: getattr(recipe, k) for k in ("lr", "batch_size", "distill", "distill_temperature",
                                                     "distill_features", "lr_schedule", "codec_epochs", "augment")},
           "hidden_channels": RunDir(trial.run).read_config().codec.hidden_channels,  # as planned (the class floor)
           "train_images": train_images, "steps": steps_per_epoch * len(epochs), "code_shape": ev.code_shape,
           "symbols": ev.code_symbols, "payload_bits": ev.results[0].get("payload_bits"),
           "bits_per_image": ev.bits_per_image, "fit_seconds": trial.fit_seconds, "reused": trial.reused,
           "holdout_top1_noiseless": last.get("val_top1_noiseless"), "holdout_top1_at": last.get("val_top1_worst"),
           "holdout_images": last.get("val_images"),
           "validation": {"rule": "test-half", **halves}, "val_images": ev.images,
           "val_backbone_top1": ev.backbone_top1, "val_top1": ev.results[0]["top1_mean"],
           "val_drop": 100 * (ev.backbone_top1 - ev.results[0]["top1_mean"]), "run": rel(trial.run)}
    if args.test:
        for key, path in (("test_half", test_half), ("test", data / "test.npz")):
            t = evaluate_run(EvalConfig(run=str(REPO / row["run"]), data=str(path), conditions=[at],
                                        draws=args.draws, device=args.device, seed=args.seed))
            row[f"{key}_images"], row[f"{key}_backbone_top1"] = t.images, t.backbone_top1
            row[f"{key}_top1"] = t.results[0]["top1_mean"]
            row[f"{key}_drop"] = 100 * (t.backbone_top1 - t.results[0]["top1_mean"])
    Results(out / f"{args.name}.jsonl").append(row)
    shown = {k: row[k] for k in ("val_drop", "test_half_drop", "test_drop") if k in row and not math.isnan(row[k])}
    print(f"{tag} {args.label}: {row['steps']} steps, fit {row['fit_seconds']:.0f} s, "
          + ", ".join(f"{k} {v:.2f} pt" for k, v in shown.items()), flush=True)


if __name__ == "__main__":
    main()
