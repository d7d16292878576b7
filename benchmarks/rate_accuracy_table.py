"""Print the rate-accuracy results (benchmarks/results/rate_accuracy.json) as Markdown tables.

    python benchmarks/rate_accuracy_table.py [RESULTS.json] [--all]   (--all: every row, too)

The README's tables are this script's output, so every figure there comes from the results file.
"""

import json
import sys
from pathlib import Path

args = [a for a in sys.argv[1:] if not a.startswith("--")]
path = Path(args[0] if args else Path(__file__).parent / "results" / "rate_accuracy.json")
d = json.loads(path.read_text())
rows, base = d["rows"], 100 * d["backbone_top1"]
splits = list(dict.fromkeys(r["split"] for r in rows))
m = d["machine"]
used = sorted({r["train_images"] for r in rows if "train_images" in r})  # what the fits really saw
if not used:  # results files from before rows recorded it: the limit asked for
    images = f"{d['train_limit']} training images"
else:
    images = f"{used[0]}{'' if used[0] == used[-1] else f'-{used[-1]}'} training images"
reused = f"; {len(d['reused_fits'])} fits reused from an earlier invocation" if d.get("reused_fits") else ""
print(f"Backbone top-1 {base:.2f} % on {d['test_images']} test images; commit {d['commit']}; {m['cores']} cores, "
      f"torch {m['torch']}; seeds {d['seeds']}; {images}, {d['epochs']} epochs per fit; "
      f"{d['draws']} noise draws; wall {d['wall_seconds'] / 60:.0f} min; complete: {d.get('complete', True)}{reused}.\n")


def cell(method, split, ratio, channel, cond):
    for r in rows:
        if (r["method"], r["split"], r["channel"], r["condition"]) == (method, split, channel, cond) and \
                (ratio is None or abs(r["ratio"] - ratio) < 1e-6):
            return r
    return None


print("Headline: top-1 drop (points) at 64x bandwidth; device MACs = head + encoder (AWGN 64x codec).\n")
print("| split | device MACs | method | AWGN 20 dB, 64x | AWGN 10 dB, 64x | BEC p=0.01, 256x bits | fit s (AWGN, BEC) |")
print("|---|---|---|---|---|---|---|")
for split in splits:
    for method in ("bottlenetpp-faithful", "bnpp-best"):
        vals = [cell(method, split, 64.0, ch, c) for ch, c in
                (("awgn", {"snr_db": 20.0}), ("awgn", {"snr_db": 10.0}), ("bec", {"erasure": 0.01}))]
        if any(vals):
            macs = next(v["device_macs"] for v in vals if v)
            txt = [f"{v['drop']:.2f}" if v else "not run" for v in vals]
            fit = ", ".join(f"{v['fit_seconds']:.0f}" if v else "-" for v in (vals[0], vals[2]))
            print(f"| {split} | {macs / 1e6:.1f} M | {method} | " + " | ".join(txt) + f" | {fit} |")

ratios = sorted({r["ratio"] for r in rows if r["method"] in ("bnpp-best", "bottlenetpp-faithful")})
print("\nTop-1 drop (points) at every ratio: AWGN 20 dB (bandwidth ratio) | BEC p=0.01 (bit ratio = 4x). "
      "sparse: error-free link at the same bits as an 8-bit code.\n")
heads = [f"AWGN {r:.0f}x" for r in ratios] + [f"BEC {4 * r:.0f}x bits" for r in ratios]
print("| split | method | " + " | ".join(heads) + " |")
print("|---|---|" + "---|" * len(heads))
for split in splits:
    for method in ("bottlenetpp-faithful", "bnpp-best", "sparse"):
        vals = [cell(method, split, r, "awgn", {"snr_db": 20.0}) for r in ratios]
        vals += [cell(method, split, r, "digital" if method == "sparse" else "bec",
                      {"erasure": 0.0} if method == "sparse" else {"erasure": 0.01}) for r in ratios]
        if any(vals):
            print(f"| {split} | {method} | " + " | ".join(f"{v['drop']:.2f}" if v else "-" for v in vals) + " |")
rows_all = rows if "--all" in sys.argv else []
print("\nBaselines without learning (drop, points): " + "; ".join(
    f"{split}: raw AWGN 20 dB {cell('raw-float32', split, None, 'awgn', {'snr_db': 20.0})['drop']:.2f}, "
    f"quant8 BEC {cell('quant8', split, None, 'bec', {'erasure': 0.01})['drop']:.2f}" for split in splits) + ".")
if rows_all:
    print("\nAll rows: top-1 (%) and drop (points); ratio = bandwidth, bits = bit compression vs float32.\n")
    print("| method | split | ratio | bits | channel | condition | top-1 | drop | fit s |")
    print("|---|---|---|---|---|---|---|---|---|")
for r in rows_all:
    (k, v), = r["condition"].items()
    cond = f"{v:g} dB" if k == "snr_db" else f"p={v:g}"
    print(f"| {r['method']} | {r['split']} | {r['ratio']:.0f}x | {r['bit_ratio']:.0f}x | {r['channel']} | {cond} | "
          f"{100 * r['top1']:.2f} | {r['drop']:.2f} | {r['fit_seconds']:.0f} |")

pairs = [(b, f) for b in rows if b["method"] == "bnpp-best" for f in rows if f["method"] == "bottlenetpp-faithful"
         and (f["split"], f["ratio"], f["channel"], f["condition"]) == (b["split"], b["ratio"], b["channel"], b["condition"])]
if pairs:
    gains = [100 * (b["top1"] - f["top1"]) for b, f in pairs]
    print(f"\nbnpp-best vs bottlenetpp-faithful over {len(pairs)} matched rows: higher at {sum(g > 0 for g in gains)}, "
          f"mean gain {sum(gains) / len(gains):+.2f} points, worst {min(gains):+.2f}, best {max(gains):+.2f}.")
