"""Separate source and channel coding vs bnpp's joint (analog) code, at the same channel uses.

For the shared resnet18 / CIFAR-10 at each split given, top-1 against channel uses per image (real
AWGN symbols) and against the true channel SNR from 0 to 30 dB, for:
  (a) bnpp's analog code over AWGN: channel uses = its code symbols; top-1 MEASURED by `bnpp eval
      --snr 0,5,...,30 --json` of each analog run (`--analog SPLIT=EVAL.json`, repeatable);
  (b) the entropy-coded code (`bnpp eval --json` of a `--preset entropy` run, `--entropy SPLIT=EVAL.json`,
      repeatable: bits measured from the real batch-1 bitstream) under an ideal channel code at capacity
      designed for 10 or 20 dB: channel uses = bits / C(design), C = 0.5 log2(1 + SNR); error-free top-1
      at or above the design SNR, chance (1 / classes) below it (the cliff), and under Rayleigh block
      fading of that mean SNR the outage-weighted top-1 (bnpp_cli.channel_uses, outage, rayleigh_outage);
  (c) the 8-bit fixed-length code under the same ideal channel code (its top-1 is the rate-accuracy
      grid's BEC p = 0.01 figure: a slight underestimate of its error-free top-1);
  (d) JPEG of the input image at its measured size (PIL, bnpp_cli.measure_images), same code;
  and the floor: log2(classes) bits (the label itself) under that code.

    python benchmarks/separate_vs_joint.py --entropy layer3=E.json [--entropy ...] --analog layer3=A.json [...] \
        [--checkpoint ../shared/models/resnet18_cifar10.safetensors --data ../shared/data/cifar10/test.npz]

Writes benchmarks/results/separate_vs_joint.json (command, commit, machine, inputs, rows, a table per
split in markdown) and a plot beside it; prints the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from bnpp_cli import (BackboneConfig, channel_uses, expected_top1, load_backbone, load_dataset, measure_images, outage,
                      rayleigh_outage)
from harness import SHARED, SHARED_MODELS, Results, add_options, pyplot, save_figure

DESIGNS_DB = (10.0, 20.0)
TRUE_DB = tuple(float(s) for s in range(0, 31))
TABLE_DB = tuple(float(s) for s in range(0, 31, 5))
RATIOS = (16.0, 64.0, 256.0)


def separate_rows(split: str, scheme: str, bits: float, top1: float, classes: int, extra: dict) -> list[dict]:
    """One row per design SNR: channel uses, and top-1 against the true SNR (AWGN, Rayleigh mean)."""
    rows = []
    for design in DESIGNS_DB:
        awgn = {f"{s:g}": (top1 if not outage("awgn", design, s) else 1.0 / classes) for s in TRUE_DB}
        rayleigh = {f"{s:g}": expected_top1(top1, classes, rayleigh_outage(design, s))
                    for s in TRUE_DB}
        rows.append({"split": split, "scheme": scheme, "kind": "separate", "design_snr_db": design,
                     "bits_per_image": bits, "channel_uses": channel_uses(bits, "awgn", design),
                     "top1_error_free": top1, "top1_awgn": awgn, "top1_rayleigh_mean_snr": rayleigh, **extra})
    return rows


def analog_row(split: str, ev: dict) -> dict:
    """An analog run's `bnpp eval --snr ... --json`: measured top-1 at each PSNR, channel uses = symbols."""
    top1 = {f"{next(iter(r['condition'].values())):g}": r["top1_mean"] for r in ev["results"]}
    return {"split": split, "scheme": f"analog bnpp {ev['bandwidth_ratio']:g}x", "kind": "analog",
            "design_snr_db": None, "ratio": ev["bandwidth_ratio"], "channel_uses": ev["code_symbols"],
            "top1_awgn": top1, "top1_noiseless": ev["noiseless_top1"], "trained_for": ev["train_condition"],
            "draws": ev["results"][0]["draws"] if ev["results"] else 0, "source": ev["run"],
            "backbone_top1": ev["backbone_top1"], "images": ev["images"]}


def pairs(items: list[str], flag: str) -> list[tuple[str, dict]]:
    out = []
    for item in items or []:
        split, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"{flag} {item!r}: expected SPLIT=EVAL.json")
        out.append((split, json.loads(Path(path).read_text())))
    return out


def table(rows: list[dict], split: str) -> str:
    """Markdown: scheme, channel uses, top-1 at the true SNRs of TABLE_DB (AWGN)."""
    head = "| " + f"{split} scheme | channel uses | " + " | ".join(f"{s:g} dB" for s in TABLE_DB) + " |"
    lines = [head, "|" + "---|" * (2 + len(TABLE_DB))]
    families = ("analog", "entropy", "8-bit", "jpeg", "label")

    def order(r: dict) -> tuple:
        family = next(i for i, f in enumerate(families) if r["scheme"].startswith(f))
        return family, r["design_snr_db"] or 0, -r.get("ratio", 0) if family == 0 else r["bits_per_image"]

    for r in sorted((r for r in rows if r["split"] == split), key=order):
        if r["kind"] == "analog":
            name = f"{r['scheme']} (joint, AWGN-trained {r['trained_for']})"
        else:
            name = f"{r['scheme']} ({r['bits_per_image']:.4g} bits) + ideal code for {r['design_snr_db']:g} dB"
        cells = [f"{100 * r['top1_awgn'][f'{s:g}']:.2f}" if f"{s:g}" in r["top1_awgn"] else "-" for s in TABLE_DB]
        lines.append(f"| {name} | {r['channel_uses']:.4g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entropy", action="append", default=[], help="SPLIT=path of an entropy run's eval JSON (required)")
    ap.add_argument("--analog", action="append", default=[],
                    help="SPLIT=path of an analog AWGN run's `bnpp eval --snr 0,5,...,30 --json`")
    ap.add_argument("--rate-accuracy", default="benchmarks/results/rate_accuracy.json",
                    help="the grid's results (its 8-bit fixed-length bnpp-best rows)")
    ap.add_argument("--checkpoint", default=str(SHARED / "models" / SHARED_MODELS["resnet18_cifar10"].file))
    ap.add_argument("--data", default=str(SHARED / "data" / "cifar10" / "test.npz"), help="test images (.npz)")
    ap.add_argument("--jpeg-images", type=int, default=10000)
    add_options(ap, out="benchmarks/results/separate_vs_joint.json", out_help="results file (JSON; the plot beside it)",
                seed=False, device=False, plot_only=True)
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"))
        return
    if not args.entropy:
        ap.error("--entropy SPLIT=EVAL.json is required (once per entropy run)")
    t0 = time.time()
    grid = json.loads(Path(args.rate_accuracy).read_text())
    entropy, analog = pairs(args.entropy, "--entropy"), pairs(args.analog, "--analog")
    splits = sorted({s for s, _ in entropy + analog})

    backbone = load_backbone(BackboneConfig("resnet18", num_classes=10, img_size=32, checkpoint=args.checkpoint))
    classes = backbone.num_classes
    ds = load_dataset(args.data, input_size=(32, 32), train=False)
    n = min(args.jpeg_images, len(ds))
    x = torch.stack([ds[i][0] for i in range(n)])
    y = torch.tensor([int(ds[i][1]) for i in range(n)])
    with torch.no_grad():
        jpeg = measure_images(backbone.model, x, y, backbone.data_config)

    rows: list[dict] = []
    for split, ev in entropy:
        rows += separate_rows(split, f"entropy {ev['bandwidth_ratio']:g}x", ev["bits_per_image"], ev["noiseless_top1"],
                              classes, {"bytes_per_image": ev["bytes_per_image"],
                                        "frame_bytes_per_image": ev["frame_bytes_per_image"],
                                        "estimated_bits_per_image": ev["estimated_bits_per_image"], "source": ev["run"],
                                        "ratio": ev["bandwidth_ratio"], "images": ev["images"]})
    for split, ev in analog:
        rows.append(analog_row(split, ev))
    for split in splits:
        rows += separate_rows(split, "label (floor)", math.log2(classes), 1.0, classes, {})
        for enc in jpeg["encodings"]:
            if enc["format"] == "jpeg":
                rows += separate_rows(split, f"jpeg q{enc['quality']}", 8 * enc["bytes_per_image"], enc["val_top1"],
                                      classes, {"jpeg_images": jpeg["images"]})
        if not any(s == split for s, _ in analog):  # no measured sweep given: the grid's 10 / 20 dB rows
            for ratio in RATIOS:
                pts = {f"{r['condition']['snr_db']:g}": r["top1"] for r in grid["rows"] if r["split"] == split
                       and r["method"] == "bnpp-best" and r["ratio"] == ratio and r["channel"] == "awgn"}
                sym = next((r["payload_bits"] // 32 for r in grid["rows"] if r["split"] == split and r["ratio"] == ratio
                            and r["method"] == "bnpp-best" and r["channel"] == "awgn"), None)
                if pts:
                    rows.append({"split": split, "scheme": f"analog bnpp {ratio:g}x", "kind": "analog", "design_snr_db": None,
                                 "ratio": ratio, "channel_uses": sym, "top1_awgn": pts,
                                 "trained_for": "PSNR >= 10 dB", "source": f"{args.rate_accuracy} (grid rows, 10 / 20 dB only)"})
        for r in grid["rows"]:
            if r["split"] == split and r["method"] == "bnpp-best" and r["ratio"] in RATIOS and r["channel"] == "bec":
                rows += separate_rows(split, f"8-bit fixed {r['ratio']:g}x", r["payload_bits"], r["top1"], classes,
                                      {"ratio": r["ratio"], "top1_note": "measured through BEC p = 0.01"})
    tables = {split: table(rows, split) for split in splits}
    out = {"seeds": [0],
           "backbone_top1_jpeg_images": jpeg["backbone_val_top1"], "jpeg_images": jpeg["images"],
           "rate_accuracy_source": {"file": args.rate_accuracy, "commit": grid.get("commit"), "epochs": grid.get("epochs"),
                                    "train_limit": grid.get("train_limit")},
           "definitions": {"channel_uses": "real AWGN symbols per image; analog: its code symbols; separate schemes: "
                                           "bits / (0.5 log2(1 + SNR_design))",
                           "snr": "analog: PSNR (noise sigma = 10^(-dB/20), peak amplitude 1); separate: SNR = P / "
                                  "sigma^2 with the same sigma and average power P = 1",
                           "outage": "true SNR below the design SNR: the image's bits are lost, top-1 = 1 / classes",
                           "rayleigh": "block fading, P_out = 1 - exp(-SNR_design / SNR_mean)"},
           "wall_seconds": time.time() - t0, "tables_md": tables, "rows": rows}
    Results(Path(args.out)).write(out)
    plot(out, Path(args.out).with_suffix(".png"))
    for t in tables.values():
        print(t + "\n")


def plot(out: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    splits = sorted({r["split"] for r in out["rows"]})
    fig, axes = plt.subplots(len(splits), 2, figsize=(13, 4.6 * len(splits)), dpi=110, squeeze=False)
    for i, split in enumerate(splits):
        rows = [r for r in out["rows"] if r["split"] == split]
        left, right = axes[i]
        for snr, marker in ((10.0, "o"), (20.0, "s")):
            key = f"{snr:g}"
            pts = sorted((r["channel_uses"], 100 * r["top1_awgn"][key]) for r in rows
                         if r["kind"] == "analog" and key in r["top1_awgn"])
            if pts:
                left.plot(*zip(*pts), marker=marker, color="tab:blue", label=f"(a) analog bnpp (joint), AWGN {snr:g} dB")
            for scheme, color in (("entropy", "tab:red"), ("8-bit", "tab:green"), ("jpeg", "tab:purple"),
                                  ("label", "k")):
                sel = sorted((r["channel_uses"], 100 * r["top1_error_free"]) for r in rows
                             if r["scheme"].startswith(scheme) and r["design_snr_db"] == snr)
                if sel:
                    left.plot(*zip(*sel), marker=marker, ls="--" if snr == 20 else ":", color=color,
                              label=f"{scheme} + ideal code, {snr:g} dB")
        left.set_xscale("log")
        left.set_xlabel("channel uses per image (real symbols)")
        left.set_ylabel("top-1 (%) at that SNR")
        left.set_title(f"resnet18 / CIFAR-10 @ {split}: at equal channel uses (true SNR = design SNR)")
        left.grid(alpha=0.3)
        left.legend(fontsize=6)
        for r in sorted((r for r in rows if r["kind"] == "analog"), key=lambda r: r["ratio"]):
            xs = [float(k) for k in r["top1_awgn"]]
            right.plot(xs, [100 * v for v in r["top1_awgn"].values()], marker="o", ms=3,
                       color=plt.cm.Blues(0.45 + 0.18 * RATIOS.index(r["ratio"]) if r["ratio"] in RATIOS else 0.9),
                       label=f"analog {r['ratio']:g}x ({r['channel_uses']:.0f} uses), AWGN, measured")
        ent = [r for r in rows if r["scheme"].startswith("entropy")]
        head = min(ent, key=lambda r: r["bits_per_image"]) if ent else None
        for r in ent:
            if r["source"] != head["source"]:
                continue
            ls = "-" if r["design_snr_db"] == 20 else "--"
            xs = [float(k) for k in r["top1_awgn"]]
            right.plot(xs, [100 * v for v in r["top1_awgn"].values()], color="tab:red", ls=ls,
                       label=f"{r['scheme']} {r['bits_per_image']:.1f} bits, code for {r['design_snr_db']:g} dB "
                             f"({r['channel_uses']:.0f} uses), AWGN")
            right.plot(xs, [100 * v for v in r["top1_rayleigh_mean_snr"].values()], color="tab:orange", ls=ls,
                       label="same, Rayleigh block fading (mean SNR)")
        right.set_xlabel("true channel SNR (dB; analog: PSNR)")
        right.set_ylabel("top-1 (%)")
        right.set_title("the cliff: an ideal code below its design SNR; the analog code degrades")
        right.grid(alpha=0.3)
        right.legend(fontsize=6)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
