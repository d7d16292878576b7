"""Moving the rate frontier: recipe and architecture variants at one thin point.

Each variant is preset bnpp with some FitConfig fields changed, fitted at one split and ratio of the
shared CIFAR-10 resnet18 (AWGN trained over PSNR >= 10 dB, as the grid), and measured on the
VALIDATION images only (5,000 of the official test split the backbone never saw, harness.test_halves)
at PSNR 20 dB, 2 noise draws. Every variant tried is appended to benchmarks/results/<name>.jsonl with
its validation figure, device MACs (head + encoder) and edge MACs (decoder), whether or not it wins.
`--test RUN_NAME` instead evaluates named finished runs on the TEST half, once (the chosen points).

    python benchmarks/frontier_variants.py --split layer2 --ratio 64 --variants base,dec2,fd1
    python benchmarks/frontier_variants.py --split layer2 --ratio 64 --test layer2-64x-dec2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bnpp_cli import ChannelConfig, EvalConfig, FitConfig, evaluate_run, fit_and_measure, load_run
from harness import Results, add_options, head_macs, rel, shared_backbone, test_halves

# name -> FitConfig fields changed from the bnpp preset at the grid budget
VARIANTS: dict[str, dict] = {
    "base": {},
    "dec2": {"decoder_blocks": 2},  # edge capacity where the code is thin
    "dec4": {"decoder_blocks": 4},
    "fd1": {"distill_features": 1.0},  # the tail's pre-logits features as well as its logits
    "fd3": {"distill_features": 3.0},
    "fd10": {"distill_features": 10.0},
    "dec2-fd1": {"decoder_blocks": 2, "distill_features": 1.0},
    # --distill-at (resnet names): the tail's input at layer2 (the decoder's output against the uncut
    # feature: reconstruction), layer3's output (layer4's input), and these with the pre-logits features
    "fd-in": {"distill_features": 1.0, "distill_at": ["layer3.0.conv1"]},
    "fd-l3": {"distill_features": 1.0, "distill_at": ["layer4.0.conv1"]},
    "fd-l3-pre": {"distill_features": 1.0, "distill_at": ["layer4.0.conv1", "fc"]},
    "fd-all": {"distill_features": 1.0, "distill_at": ["layer3.0.conv1", "layer4.0.conv1", "fc"]},
    "nosr": {"spatial_reduction": False},  # the same symbols as more positions, fewer channels (2 x 4 x 4)
    "enc2": {"encoder_blocks": 2},  # device capacity (device MACs grow)
    "hid128": {"hidden_channels": 128},  # both sides wider
    "enc4": {"encoder_blocks": 4},  # a deeper device side: an early cut's encoder does the later stages' work
    "lr3e-4": {"lr": 3e-4},
    # every training image: no fit-time validation (the choice is the benchmark's, on the test split's
    # validation half); with --train-limit 25000 that is 25,000 images instead of 22,500
    "noval": {"val_fraction": 0.0},  # wider codecs trained erratically at the recipe's 1e-3
    "joint1": {"joint_epochs": 1, "joint_lr": 1e-4},  # fine-tune the tail (and head) afterwards
    "e10": {"codec_epochs": 10},  # a longer schedule, the same images
    "snr20": {"train_snr": 20.0},  # trained for the frontier's own condition, PSNR >= 20 dB (not >= 10)
    "hid96": {"hidden_channels": 96},
    "e30": {"codec_epochs": 30},
    "e60": {"codec_epochs": 60},
    # no augmentation, the frozen head's features computed once (run.features): a long schedule in less time
    "cached": {"augment": False, "feature_cache": "@runs/features"},
}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="layer2")
    ap.add_argument("--ratio", type=float, default=64.0)
    ap.add_argument("--variants", default="base", help=f"comma-separated, from: {', '.join(VARIANTS)}; "
                    "join with + to combine (dec2+fd1)")
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-snr", type=float, default=10.0)
    ap.add_argument("--snr", type=float, default=20.0)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--tag", default="", help="appended to run names (a different budget: e.g. -long)")
    ap.add_argument("--test", default=None, help="comma-separated finished run names to evaluate on the test half")
    add_options(ap, name="frontier_variants")
    return ap.parse_args()


def overrides(spec: str) -> dict:
    out: dict = {}
    for part in spec.split("+"):
        if part not in VARIANTS:
            raise SystemExit(f"unknown variant {part!r}; valid: {', '.join(VARIANTS)}")
        out.update(VARIANTS[part])
    return out


def main() -> None:
    args = parse()
    bb, data = shared_backbone("resnet18_cifar10")
    out = Path(args.out)
    runs = out / "runs" / args.name
    val, test, halves = test_halves(data / "test.npz", seed=0)
    log = Results(out / f"{args.name}.jsonl")
    common = {"seed": args.seed, "halves": halves, "condition_snr_db": args.snr, "draws": args.draws}
    if args.test:
        for name in args.test.split(","):
            ev = evaluate_run(EvalConfig(run=str(runs / name), data=str(test), conditions=[args.snr], draws=args.draws))
            row = {**common, "kind": "test", "run": rel(runs / name), "test_images": ev.images,
                   "test_backbone_top1": ev.backbone_top1, "test_top1": ev.results[0]["top1_mean"],
                   "test_drop": 100 * (ev.backbone_top1 - ev.results[0]["top1_mean"])}
            log.append(row)
            print(f"{name}: test drop {row['test_drop']:.2f} pt on {ev.images} images", flush=True)
        return
    for spec in args.variants.split(","):
        changes = overrides(spec)
        name = f"{args.split}-{args.ratio:g}x-{spec}{args.tag}"
        fields = {"limit": args.train_limit, "codec_epochs": args.epochs, **changes}
        train_snr = fields.pop("train_snr", args.train_snr)
        if str(fields.get("feature_cache", "")).startswith("@runs/"):  # a directory next to the runs
            fields["feature_cache"] = str(runs / fields["feature_cache"][len("@runs/"):])
        cfg = FitConfig(backbone=bb, split=args.split, data=str(data / "train.npz"), out=str(runs / name),
                        channel=ChannelConfig("awgn", train_snr), ratio=args.ratio, device=args.device,
                        seed=args.seed, **fields)
        t0 = time.perf_counter()
        trial = fit_and_measure(cfg, str(val), [args.snr], args.draws)
        ev, head = trial.evaluation, head_macs(load_run(trial.run))
        top1 = ev.results[0]["top1_mean"]
        row = {**common, "kind": "validation", "variant": spec, "changes": changes, "split": args.split,
               "ratio": args.ratio, "train_snr_db": train_snr, "train_images": args.train_limit, "epochs": fields["codec_epochs"],
               "joint_epochs": fields.get("joint_epochs", 0), "symbols": ev.code_symbols,
               "device_macs": head + trial.encoder_macs, "encoder_macs": trial.encoder_macs,
               "decoder_macs": trial.decoder_macs, "val_images": ev.images, "val_backbone_top1": ev.backbone_top1,
               "val_top1": top1, "val_drop": 100 * (ev.backbone_top1 - top1), "fit_seconds": trial.fit_seconds,
               "wall_seconds": time.perf_counter() - t0, "reused": trial.reused, "run": rel(trial.run)}
        log.append(row)
        print(f"{name:28s} {row['symbols']:4d} symbols  val drop {row['val_drop']:6.2f} pt  device "
              f"{row['device_macs'] / 1e6:.1f} M  decoder {row['decoder_macs'] / 1e6:.2f} M  fit "
              f"{trial.fit_seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
