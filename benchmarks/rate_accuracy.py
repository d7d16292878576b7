"""Rate-accuracy benchmark on real data: BottleNet++'s claims, reproduced, and bnpp's best beside them.

On the shared CIFAR-10 resnet18 (../shared/models) and CIFAR-10 (../shared/data/cifar10), for each
split point and bandwidth ratio, it compares side by side:

  raw-float32           the feature as it is: digital 32 bits/element error-free, or analog through
                        the same AWGN (per-sample peak-normalised to amplitude 1, like the codec's symbols)
  quant8                per-sample min-max 8-bit quantisation, error-free and through the BEC
  sparse                top-k magnitude coding (8-bit value + index per kept element), error-free link,
                        k chosen so that the payload meets the row's bit budget
  bottlenetpp-faithful  the paper's codec and recipe (preset bottlenetpp, Adam 1e-4, batch 32)
  bnpp-best             bnpp's default recipe (`bnpp fit` defaults)

Both learned methods get the same data and epochs (default: the first 10,000 training images,
3 epochs; --quick: 5,000 images, 1 epoch). AWGN rows: trained over PSNR >= 10 dB (as the paper: the condition drawn per batch), evaluated at
fixed 10 and 20 dB. BEC rows: trained for p < 0.01, evaluated at p = 0.01; 8-bit symbols, so the
bit ratio is 4x the bandwidth ratio. Evaluation: the official 10,000-image test split (--quick: the
first 2,000), 2 noise draws per condition. Writes benchmarks/results/<name>.json and two plots
drawn from it (<name>.png, <name>_psnr.png; --plot-only redraws them).

    python benchmarks/rate_accuracy.py --quick     # smoke run, < 10 min on 2 cores
    python benchmarks/rate_accuracy.py             # the full grid
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from bnpp_cli import (ChannelConfig, CodecError, FitConfig, count_macs, create_channel, fit_and_measure,
                      load_backbone, split_model, trace_model)
from harness import Results, add_options, drop_stale, floats, image_batches, legend, pyplot, save_figure, shared_backbone


# ---- baselines on cached head features --------------------------------------------------------
def _minmax(f):
    lo = f.flatten(1).min(1).values.view(-1, *[1] * (f.dim() - 1))
    hi = f.flatten(1).max(1).values.view(-1, *[1] * (f.dim() - 1))
    return lo, (hi - lo).clamp_min(1e-12)


def peak_awgn(f, sigma, gen):
    """Raw feature as analog symbols: per-sample min-max to [0, 1], AWGN, undo the scaling."""
    lo, scale = _minmax(f)
    z = (f - lo) / scale
    z = z + sigma * torch.randn(z.shape, generator=gen)
    return z * scale + lo


BEC8 = create_channel("bec", bits=8)  # q = round(255 z); an erased bit decodes as its expected value


def quant8(f, p, gen):
    """Per-sample min-max 8-bit levels; bits erased with probability p decode to their expected value."""
    lo, scale = _minmax(f)
    with torch.no_grad():
        return BEC8((f - lo) / scale, p, generator=gen) * scale + lo


def topk_sparse(f, k):
    """Keep the k largest-magnitude elements per sample (values 8-bit quantised), zero the rest."""
    flat = f.flatten(1)
    idx = flat.abs().topk(k, dim=1).indices
    vals = flat.gather(1, idx)
    peak = vals.abs().max(1, keepdim=True).values.clamp_min(1e-12)
    vals = torch.round(vals / peak * 127) / 127 * peak  # 8-bit signed values
    out = torch.zeros_like(flat).scatter_(1, idx, vals)
    return out.view_as(f)


def accuracy(tail, feats, labels, fn):
    hits = 0
    with torch.no_grad():
        for f, y in zip(feats, labels):
            hits += int((tail(fn(f)).argmax(1) == y).sum())
    return hits / sum(len(y) for y in labels)


# ---- the benchmark ------------------------------------------------------------------------------
def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="layer2 + layer3 at 64x, 5,000 train / 2,000 test images")
    ap.add_argument("--splits", default=None, help="comma list, overrides the grid's splits")
    ap.add_argument("--ratios", default=None, help="comma list of bandwidth ratios, overrides the grid's")
    ap.add_argument("--methods", default="faithful,best", help="learned methods to fit")
    ap.add_argument("--train-limit", type=int, default=None,
                    help="training images per fit (default: 10,000; --quick: 5,000)")
    ap.add_argument("--epochs", type=int, default=None, help="codec epochs per fit (default: 3; --quick: 1)")
    add_options(ap, name="", plot_only=True)  # --name default: rate_accuracy, or rate_accuracy_quick with --quick
    return ap.parse_args()


def main() -> int:
    args = parse()
    out = Path(args.out)
    tag = args.name or ("rate_accuracy_quick" if args.quick else "rate_accuracy")
    if args.plot_only:
        plot(json.loads((out / f"{tag}.json").read_text()), out / f"{tag}.png")
        return 0
    bb_cfg, data_dir = shared_backbone("resnet18_cifar10")
    quick = args.quick
    splits = args.splits.split(",") if args.splits else (["layer2", "layer3"] if quick else
                                                         ["layer1", "layer2", "layer3", "layer4"])
    ratios = floats(args.ratios) if args.ratios else ([64.0] if quick else [16.0, 64.0, 256.0])
    train_limit = args.train_limit or (5000 if quick else 10000)
    epochs = args.epochs or (1 if quick else 3)
    test_limit = 2000 if quick else None
    draws = 2
    runs = out / "runs" / tag
    results = Results(out / f"{tag}.json")
    t_start = time.perf_counter()

    backbone = load_backbone(bb_cfg)
    traced = trace_model(backbone.model, backbone.input_size, "resnet18")
    batches = image_batches(data_dir / "test.npz", backbone.data_config, 500, test_limit)
    labels = [y for _, y in batches]
    test_images = sum(len(y) for y in labels)
    with torch.no_grad():
        backbone_top1 = sum(int((backbone.model(x).argmax(1) == y).sum()) for x, y in batches) / test_images

    rows: list[dict] = []
    reused: list[str] = []  # fits found finished in the runs folder (an earlier invocation), evaluated again
    cuts: dict[str, tuple[int, int]] = {}

    def save(final: bool = False) -> None:
        wall = time.perf_counter() - t_start
        results.write({
            "backbone_top1": backbone_top1, "seeds": [args.seed], "wall_seconds": wall, "complete": final,
            "quick": quick, "test_images": test_images, "train_limit": train_limit, "epochs": epochs,
            "draws": draws, "reused_fits": reused, "rows": rows})
        if final:
            plot(json.loads(results.path.read_text()), out / f"{tag}.png")
            print(f"wrote {results.path} in {wall / 60:.1f} min", flush=True)

    def add(method, split, ratio, bit_ratio, channel, condition, top1, device_macs, payload_bits, fit_seconds=0.0,
            encoder_macs=0):
        # device_macs = the head's MACs + the encoder's (the encoder runs on the device too)
        rows.append({"method": method, "split": split, "ratio": ratio, "bit_ratio": bit_ratio, "channel": channel,
                     "condition": condition, "top1": top1, "drop": 100 * (backbone_top1 - top1),
                     "device_macs": device_macs + encoder_macs, "encoder_macs": encoder_macs,
                     "payload_bits": payload_bits, "fit_seconds": fit_seconds})
        print(f"{method:22s} {split:7s} bw {ratio:6.1f}x bits {bit_ratio:7.1f}x {channel:8s} "
              f"{json.dumps(condition):20s} top-1 {100 * top1:6.2f}  drop {100 * (backbone_top1 - top1):6.2f}",
              flush=True)

    for split in splits:
        point = traced.find(split)
        head, tail = split_model(traced, point)
        device_macs = count_macs(head, torch.zeros(1, *backbone.input_size))
        n = point.elements
        with torch.no_grad():
            feats = [head(x) for x, _ in batches]
        g = lambda d: torch.Generator().manual_seed(args.seed * 1000 + d)  # noqa: E731
        # raw float32: digital error-free, and analog through AWGN
        add("raw-float32", split, 1.0, 1.0, "digital", {"erasure": 0.0}, accuracy(tail, feats, labels, lambda f: f),
            device_macs, 32 * n)
        for snr in (10.0, 20.0):
            sigma = 10 ** (-snr / 20)
            accs = [accuracy(tail, feats, labels, lambda f, gen_d=g(d): peak_awgn(f, sigma, gen_d))
                    for d in range(draws)]
            add("raw-float32", split, 1.0, 1.0, "awgn", {"snr_db": snr}, sum(accs) / draws, device_macs, 32 * n)
        # quant8: 8 bits per element + 64 bits of per-sample scale/offset
        q_bits = 8 * n + 64
        add("quant8", split, 1.0, 32 * n / q_bits, "digital", {"erasure": 0.0},
            accuracy(tail, feats, labels, lambda f: quant8(f, 0.0, None)), device_macs, q_bits)
        accs = [accuracy(tail, feats, labels, lambda f, gen_d=g(d): quant8(f, 0.01, gen_d)) for d in range(draws)]
        add("quant8", split, 1.0, 32 * n / q_bits, "bec", {"erasure": 0.01}, sum(accs) / draws, device_macs, q_bits)
        # sparse top-k at the bit budget of an 8-bit code at each bandwidth ratio
        idx_bits = max(1, math.ceil(math.log2(n)))
        for ratio in ratios:
            budget = 32 * n / (4 * ratio)
            k = int((budget - 32) // (8 + idx_bits))
            if k >= 1:
                bits = 32 + k * (8 + idx_bits)
                add("sparse", split, ratio, 32 * n / bits, "digital", {"erasure": 0.0},
                    accuracy(tail, feats, labels, lambda f, k=k: topk_sparse(f, k)), device_macs, bits)
        cuts[split] = (n, device_macs)
        save()

    # learned codecs, headline rows first (64x at layer2/layer3), results saved after every fit
    plan = sorted(((ratio, split) for ratio in ratios for split in splits),
                  key=lambda rs: (rs[0] != 64, rs[1] not in ("layer2", "layer3"), ratios.index(rs[0]), splits.index(rs[1])))
    for ratio, split in plan:
        n, device_macs = cuts[split]
        for channel, train_cond, eval_conds in (("awgn", 10.0, [10.0, 20.0]), ("bec", 0.01, [0.01])):
            for method in args.methods.split(","):
                name = f"{split}-{int(ratio)}x-{channel}-{method}"
                # faithful: the paper's codec and recipe (preset bottlenetpp: Adam 1e-4, batch 32, CE only);
                # best: `bnpp fit` defaults (preset bnpp: Adam 1e-3, batch 64, distillation). Same data, epochs.
                recipe = {"preset": "bottlenetpp" if method == "faithful" else "bnpp", "codec_epochs": epochs}
                cfg = FitConfig(backbone=bb_cfg, split=split, data=str(data_dir / "train.npz"),
                                out=str(runs / name), channel=ChannelConfig(channel, train_cond), ratio=ratio,
                                limit=train_limit, device=args.device, seed=args.seed, **recipe)
                try:
                    drop_stale(cfg)  # fitted with other defaults: fit again rather than report an old codec
                    # the search's step: fit (or reuse the finished run, or resume), then measure
                    trial = fit_and_measure(cfg, str(data_dir / "test.npz"), eval_conds, draws, limit=test_limit)
                except CodecError as e:  # an infeasible ratio at this split (e.g. C' < 1)
                    print(f"{name}: skipped ({e})", flush=True)
                    continue
                if trial.reused:  # finished before with the same recipe and codec: reused, and said so
                    reused.append(name)
                metrics, fit_seconds, enc_macs, ev = trial.metrics, trial.fit_seconds, trial.encoder_macs, trial.evaluation
                # analog rows: payload counted as float32 symbols; digital rows: 8-bit symbols
                bits = 8 * ev.code_symbols if channel == "bec" else 32 * ev.code_symbols
                label = "bottlenetpp-faithful" if method == "faithful" else "bnpp-best"
                for r in ev.results:
                    add(label, split, ev.bandwidth_ratio, 32 * n / bits, channel, r["condition"], r["top1_mean"],
                        device_macs, bits, fit_seconds, enc_macs)
                    rows[-1].update(train_images=metrics["epochs"][0]["images"], epochs=len(metrics["epochs"]))
                save()
    save(final=True)
    return 0


def plot(result: dict, path: Path) -> None:
    """Two figures: top-1 vs bandwidth ratio per split (AWGN 20 dB, BEC p = 0.01), and top-1 vs PSNR at 64x."""
    plt = pyplot()
    if plt is None:
        return
    rows = result["rows"]
    splits = list(dict.fromkeys(r["split"] for r in rows))
    base = 100 * result["backbone_top1"]
    styles = {"bottlenetpp-faithful": "o--", "bnpp-best": "s-", "sparse": "^:"}
    panels = [("awgn", {"snr_db": 20.0}, "AWGN, PSNR 20 dB"), ("bec", {"erasure": 0.01}, "BEC p=0.01 (sparse: error-free)")]
    width = max(3.2 * len(splits), 6.0)  # room for the title when there is one split
    fig, axes = plt.subplots(len(panels), len(splits), figsize=(width, 5.8), dpi=110, squeeze=False)
    for i, (channel, cond, title) in enumerate(panels):
        for j, split in enumerate(splits):
            ax = axes[i][j]
            for method, style in styles.items():
                if method == "sparse" and channel != "bec":
                    continue  # sparse coding is digital: compared with the digital rows
                pts = sorted((r["ratio"], 100 * r["top1"]) for r in rows if r["method"] == method
                             and r["split"] == split and (method == "sparse" or (r["channel"], r["condition"]) == (channel, cond)))
                if pts:
                    ax.plot(*zip(*pts), style, label=method, ms=4)
            ax.axhline(base, color="k", lw=0.8)
            ax.axhline(base - 2, color="k", lw=0.8, ls=":")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{split} - {title}", fontsize=8)
            ax.set_xlabel("bandwidth ratio (symbols; bits = 4x for 8-bit codes)", fontsize=6)
            ax.set_ylabel("top-1 (%)", fontsize=7)
            ax.tick_params(labelsize=6)
    legend(axes[0][0], fontsize=6)
    legend(axes[-1][0], fontsize=6)  # the BEC row also has the sparse baseline
    fig.suptitle(f"resnet18 / CIFAR-10: backbone {base:.2f} % (solid), -2 points (dotted)", fontsize=9)
    save_figure(fig, path)

    fig, axes = plt.subplots(1, len(splits), figsize=(width, 3.0), dpi=110, squeeze=False)
    for j, split in enumerate(splits):
        ax = axes[0][j]
        for method, style in (("raw-float32", "d:"), ("bottlenetpp-faithful", "o--"), ("bnpp-best", "s-")):
            pts = sorted((r["condition"]["snr_db"], 100 * r["top1"]) for r in rows if r["method"] == method
                         and r["split"] == split and r["channel"] == "awgn" and r["ratio"] in (1.0, 64.0))
            if pts:
                ax.plot(*zip(*pts), style, label=method + (" (1x)" if method == "raw-float32" else " (64x)"), ms=4)
        ax.axhline(base, color="k", lw=0.8)
        ax.set_title(f"{split}: AWGN", fontsize=8)
        ax.set_xlabel("PSNR (dB, peak amplitude 1)", fontsize=7)
        ax.set_ylabel("top-1 (%)", fontsize=7)
        ax.tick_params(labelsize=6)
    legend(axes[0][0], fontsize=6)
    save_figure(fig, path.with_name(path.stem + "_psnr.png"))


if __name__ == "__main__":
    sys.exit(main())
