"""Codec ablation: variants of the bnpp codec and recipe at one split, on the shared resnet18 / CIFAR-10.

One variant per invocation, through the public API (`fit_codec` with recipe overrides, then
`evaluate_run`): the training images of ../shared/data/cifar10/train.npz (all of them unless
--limit; no validation split), evaluated on the official 10,000 test images with one noise draw
(seed 0); appends one JSON line to benchmarks/results/codec_ablation.jsonl. Knobs are FitConfig's:
--hidden (width), --enc-blocks (residual blocks), --spatial (1: stride-2 code, 0: none, -1: the
preset's rule), --sched cos|const, --T (distillation temperature), --distill (its weight), --lr,
--batch, --joint-epochs (also fine-tune the backbone). Every line records the command that made it.
`--table` prints the recorded variants as a Markdown table.

    python benchmarks/codec_ablation.py --epochs 5 --sched cos --hidden 64 --spatial 1 --T 4 --enc-blocks 1
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from bnpp_cli import ChannelConfig, EvalConfig, FitConfig, evaluate_run, fit_codec, load_run
from harness import RESULTS, Results, add_options, read_results, shared_backbone


def table(path: Path) -> None:
    """The results file as the README's Markdown table."""
    print("| variant | split | images | width | enc blocks | spatial | lr schedule | T | trained from | "
          "epochs | fit s | noiseless | PSNR 10 dB | PSNR 20 dB | drop 20 dB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d in read_results(path) if path.is_file() else []:
        g = d["args"]
        print(f"| {g['tag']} | {g['split']} {g['ratio']:g}x | {g['limit'] or 25000:,} | {d['hidden_resolved']} | "
              f"{g['enc_blocks']} | {'yes' if g['spatial'] == 1 else 'no'} | "
              f"{'cosine' if g['sched'] == 'cos' else 'constant'} | {g['T']:g} | "
              f"{g['train_cond']:g} dB | {g['epochs']} | {d['fit_s']:.0f} | "
              f"{100 * d['noiseless']:.2f} | {100 * d['10dB']:.2f} | {100 * d['20dB']:.2f} | **{d['drop20']:.2f}** |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="layer2")
    ap.add_argument("--ratio", type=float, default=64)
    ap.add_argument("--channel", default="awgn")
    ap.add_argument("--train-cond", type=float, default=10.0)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sched", default="const", choices=("const", "cos"))
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--enc-blocks", type=int, default=0)
    ap.add_argument("--spatial", type=int, default=-1)
    ap.add_argument("--distill", type=float, default=1.0)
    ap.add_argument("--T", type=float, default=1.0)
    ap.add_argument("--joint-epochs", type=int, default=0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="print the results file as a Markdown table, then stop")
    add_options(ap, out=RESULTS / "codec_ablation.jsonl", out_help="JSON-lines file the variant's line is appended to")
    a = ap.parse_args()
    if a.table:
        return table(Path(a.out))
    torch.set_num_threads(a.threads)
    backbone, data = shared_backbone("resnet18_cifar10")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = FitConfig(
            backbone=backbone, split=a.split, data=str(data / "train.npz"), out=str(Path(tmp) / "run"),
            channel=ChannelConfig(a.channel, a.train_cond), ratio=a.ratio, preset="bnpp", hidden_channels=a.hidden,
            encoder_blocks=a.enc_blocks, spatial_reduction=None if a.spatial < 0 else bool(a.spatial), val_fraction=0.0,
            limit=a.limit, codec_epochs=a.epochs, joint_epochs=a.joint_epochs, lr=a.lr, batch_size=a.batch,
            lr_schedule="cosine" if a.sched == "cos" else "constant", distill=a.distill, distill_temperature=a.T,
            device=a.device, seed=a.seed)
        fit = fit_codec(cfg)
        conditions = [10.0, 20.0] if a.channel == "awgn" else [0.01]
        ev = evaluate_run(EvalConfig(run=fit.run, data=str(data / "test.npz"), conditions=conditions, draws=1,
                                     device=a.device, seed=a.seed))
        hidden = load_run(fit.run).codec_config.hidden_channels
    res = {"noiseless": ev.noiseless_top1, **{("p0.01" if c == 0.01 else f"{c:g}dB"): r["top1_mean"]
                                              for c, r in zip(conditions, ev.results)}}
    out = {"args": {k: v for k, v in vars(a).items() if k not in ("out", "table")}, "hidden_resolved": hidden,
           "fit_s": fit.seconds, "base": ev.backbone_top1, **res,
           "drop20": 100 * (ev.backbone_top1 - res.get("20dB", res.get("p0.01")))}
    print("RESULT", json.dumps(out), flush=True)
    Results(Path(a.out)).append(out)


if __name__ == "__main__":
    sys.exit(main())
