"""Rate-accuracy at token split points: the shared CIFAR-10 ViT, bnpp preset vs the paper-faithful one.

On ../shared/models/vit_tiny_p4_d6_cifar10.safetensors (timm vit_tiny_patch16_224, img_size 32,
patch_size 4, depth 6: features (65, 192) = one class token + an 8 x 8 patch grid) and
../shared/data/cifar10, for an early, a middle and a late block (blocks.0, blocks.2, blocks.5), at
16x and 64x bandwidth reduction, over AWGN (trained for PSNR >= 10 dB, evaluated at 10 and 20 dB)
and the BEC (trained for p < 0.01, evaluated at p = 0.01, 8-bit symbols), it fits

  bottlenetpp-faithful  preset bottlenetpp (the paper's codec and recipe: Adam 1e-4, batch 32, CE)
  bnpp-best             preset bnpp (`bnpp fit` defaults)

through the public API (fit_codec, evaluate_run): the tokens layout codes the patch grid as a
(192, 8, 8) map and the class token by its own small code, both counted in the symbols. The bnpp
preset standardises the signed residual stream per channel (codec/standardize.py) and gives the
class token at least a quarter of the symbols (49 of 193 at 64x, all 192 of its dimensions at 16x);
the faithful preset does neither (round(D / R) symbols for it). Rows: the achieved ratio, code and
prefix symbols per image, device MACs (head + encoder), top-1 and the drop in points against the
uncut ViT on the same test images, and the fit's own validation top-1 (held-out training images,
noiseless and at the worst training condition). Budget as rate_accuracy.py --quick: the first 5,000
training images (a tenth of the 25,000 held out for validation first), 1 epoch, the first 2,000 test
images, 2 noise draws. A finished fit is reused only when its recipe and codec are what this code
would fit now (`stale`).

    python benchmarks/rate_accuracy_tokens.py              # 24 fits, results saved after each
    python benchmarks/rate_accuracy_tokens.py --splits blocks.2 --ratios 64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
import time

import torch

from bnpp_cli import (ChannelConfig, EvalConfig, FitConfig, RunDir, count_macs, evaluate_run, fit_codec, load_backbone,
                      load_run, split_model, trace_model)
from harness import (IMAGENET_STATS, SHARED_MODELS, Results, add_options, encoder_macs, image_batches, legend, pyplot,
                     save_figure, shared_backbone, stale_reason)

MODEL_KWARGS = {k: v for k, v in SHARED_MODELS["vit_cifar10"].model_kwargs.items() if k != "pretrained_cfg_overlay"}


def stale(cfg, point) -> str | None:
    """Why the fit in ``cfg.out`` is not what ``cfg`` would fit now (None: a finished, current fit):
    its recipe and its codec against today's plan, so a changed default refits."""
    if not RunDir(cfg.out).finished:
        return "no finished fit"
    return stale_reason(cfg, point.layout)


def plot(result: dict, path: Path) -> None:
    """Drop in points against device MACs (the three blocks), per preset and ratio: AWGN 20 dB, BEC p = 0.01."""
    plt = pyplot()
    if plt is None:
        return
    rows = result["rows"]
    panels = [("awgn", {"snr_db": 20.0}, "AWGN, PSNR 20 dB"), ("bec", {"erasure": 0.01}, "BEC p = 0.01, 8-bit symbols")]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for ax, (channel, cond, title) in zip(axes, panels):
        for method, style in (("bnpp-best", "-"), ("bottlenetpp-faithful", "--")):
            for ratio, marker in ((64.0, "s"), (16.0, "o")):
                pts = sorted((r["device_macs"] / 1e6, r["drop"], r["split"]) for r in rows if r["method"] == method
                             and r["asked_ratio"] == ratio and r["channel"] == channel and r["condition"] == cond)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style + marker, ms=4,
                            label=f"{method} {int(ratio)}x")
                    if method == "bnpp-best" and ratio == 64.0:
                        for x, y, split in pts:
                            ax.annotate(split, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"{title} ({result['train_limit']} images x {result['epochs']} epoch)", fontsize=8)
        ax.set_xlabel("device MACs (head + encoder), M", fontsize=7)
        ax.set_ylabel("drop vs the uncut ViT (points)", fontsize=7)
        ax.tick_params(labelsize=6)
        legend(ax, fontsize=6)
    save_figure(fig, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", default="blocks.0,blocks.2,blocks.5", help="early, middle, late block")
    ap.add_argument("--ratios", default="64,16", help="bandwidth ratios (64 first: the headline rows)")
    ap.add_argument("--channels", default="awgn,bec")
    ap.add_argument("--methods", default="best,faithful")
    ap.add_argument("--train-limit", type=int, default=5000)
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=1)
    add_options(ap, name="rate_accuracy_tokens", plot_only=True)
    args = ap.parse_args()
    out = Path(args.out)
    if args.plot_only:
        plot(json.loads((out / f"{args.name}.json").read_text()), out / f"{args.name}.png")
        return 0
    bb, data = shared_backbone("vit_cifar10")
    out.mkdir(parents=True, exist_ok=True)
    runs = out / "runs" / args.name
    results = Results(out / f"{args.name}.json")
    t_start = time.perf_counter()
    backbone = load_backbone(bb)
    traced = trace_model(backbone.model, backbone.input_size, bb.model)
    batches = image_batches(data / "test.npz", backbone.data_config, 500, args.test_limit)
    test_images = sum(len(y) for _, y in batches)
    with torch.no_grad():
        hits = sum(int((backbone.model(x).argmax(1) == y).sum()) for x, y in batches)
    backbone_top1 = hits / test_images
    rows: list[dict] = []

    def save(final: bool = False) -> None:
        results.write({"seeds": [args.seed], "model": bb.model, "model_kwargs": MODEL_KWARGS,
                  "pretrained_cfg_overlay": IMAGENET_STATS, "checkpoint": Path(bb.checkpoint).name,
                  "backbone_top1": backbone_top1, "test_images": test_images, "train_limit": args.train_limit,
                  "epochs": args.epochs, "draws": 2, "complete": final,
                  "wall_seconds": time.perf_counter() - t_start, "rows": rows})

    print(f"uncut ViT top-1 on {test_images} test images: {100 * backbone_top1:.2f} %", flush=True)
    for ratio in (float(r) for r in args.ratios.split(",")):
        for channel in args.channels.split(","):
            train_cond, eval_conds = (10.0, [10.0, 20.0]) if channel == "awgn" else (0.01, [0.01])
            for split in args.splits.split(","):
                point = traced.find(split)
                head_macs = count_macs(split_model(traced, point)[0], torch.zeros(1, *backbone.input_size))
                for method in args.methods.split(","):
                    name = f"{split}-{int(ratio)}x-{channel}-{method}"
                    cfg = FitConfig(backbone=bb, split=split, data=str(data / "train.npz"), out=str(runs / name),
                                    channel=ChannelConfig(channel, train_cond), ratio=ratio,
                                    preset="bottlenetpp" if method == "faithful" else "bnpp",
                                    codec_epochs=args.epochs, limit=args.train_limit, device=args.device,
                                    seed=args.seed)
                    why = stale(cfg, point)
                    if why is not None:
                        print(f"fitting {name}: {why}", flush=True)
                        cfg.overwrite = not RunDir(runs / name).is_empty()
                        fit_codec(cfg)
                    run = load_run(runs / name)
                    metrics = RunDir(runs / name).read_metrics()
                    seconds, last = metrics["seconds"], metrics["epochs"][-1]
                    enc = encoder_macs(run)
                    ev = evaluate_run(EvalConfig(run=str(runs / name), data=str(data / "test.npz"),
                                                 conditions=eval_conds, draws=2, limit=args.test_limit,
                                                 device=args.device, seed=args.seed), run=run)
                    bits = 8 if channel == "bec" else 32
                    for r in [{"condition": {"noiseless": True}, "top1_mean": ev.noiseless_top1}, *ev.results]:
                        rows.append({
                            "method": "bottlenetpp-faithful" if method == "faithful" else "bnpp-best",
                            "split": split, "point": point.name, "layout": run.codec_config.layout.describe(),
                            "asked_ratio": ratio, "ratio": ev.bandwidth_ratio, "code_shape": ev.code_shape,
                            "symbols": ev.code_symbols, "payload_bits": bits * ev.code_symbols, "channel": channel,
                            "condition": r["condition"], "top1": r["top1_mean"],
                            "drop": 100 * (ev.backbone_top1 - r["top1_mean"]), "device_macs": head_macs + enc,
                            "encoder_macs": enc, "fit_seconds": seconds, "standardized": run.codec_config.standardize,
                            "prefix_symbols": run.codec_config.prefix_code_channels * run.codec_config.layout.prefix_tokens,
                            "val_images": last.get("val_images"), "val_top1_noiseless": last.get("val_top1_noiseless"),
                            "val_top1_worst": last.get("val_top1_worst"), "val_worst": last.get("val_worst_label")})
                        print(f"{rows[-1]['method']:21s} {split:9s} {ev.bandwidth_ratio:6.2f}x {ev.code_symbols:5d} sym "
                              f"{channel:4s} {json.dumps(r['condition']):22s} top-1 {100 * r['top1_mean']:6.2f} "
                              f"drop {rows[-1]['drop']:6.2f}", flush=True)
                    save()
    save(final=True)
    plot(json.loads((out / f"{args.name}.json").read_text()), out / f"{args.name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
