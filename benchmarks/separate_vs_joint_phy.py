"""Separate vs joint over a real radio link: analog bnpp over OFDM against an entropy code over 5G NR LDPC + QAM.

At equal channel uses per image (resource elements of whole OFDM slots, pilots counted), for each
analog run given (`--analog NAME=EVAL.json`, its `bnpp eval --json` over `--channel ofdm`):
  (a) joint: the analog code's top-1 against SNR, MEASURED by that eval (channel uses from its rows);
  (b) separate: the entropy-coded run (`--entropy RUN`, fitted with --channel none) over the same
      slots: each test image's range-coded stream (MEASURED: its batch-1 wire payload, the length
      prefix included) zero-padded to the longest one's k - CRC16 bits, one 5G NR LDPC block of n =
      m x the slots' data resource elements (at most 5 k, the code's lowest rate 1/5), 2^m-QAM, the same OFDM grid, TDL profile, speed and
      LS/LMMSE receiver as the analog run; an image whose block fails its CRC is lost (top-1 scored as
      chance, 1 / classes), else its noiseless prediction stands; one channel draw per image and SNR;
  (a') with --speeds: each faded analog run re-evaluated at other UE speeds (bnpp_cli.evaluate_run on
      the run with its channel rebuilt at that speed; one draw, --images test images);
  (c) the bound: the same streams under an ideal code at capacity on the data resource elements of
      AWGN, log2(1 + SNR) bits each (pilots are overhead here too): lost when the longest stream
      does not fit.

    python benchmarks/separate_vs_joint_phy.py --analog tdl-c=E1.json --analog awgn=E2.json --entropy RUN \
        [--data ../shared/data/cifar10/test.npz --images 1000 --qam 2,4 --speeds 3,120]

Writes benchmarks/results/separate_vs_joint_phy.json (command, commit, machine, inputs, rows, the
markdown table) and the plot beside it; prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from bnpp_cli import (BatchTransform, BlockPlan, EvalConfig, LDPCLink, PhyConfig, RunDir, create_channel, evaluate_run,
                      load_dataset, load_run)
from harness import SHARED, Results, add_options, floats, pyplot, save_figure

SNRS_DB = tuple(float(s) for s in range(-5, 31, 5))
CRC = "CRC16"
FRAME_HEADER = 48  # wire header of an (N, C', H', W') frame; the payload is each image's stream and its length prefix


def entropy_streams(run_path: str, data: str, images: int) -> dict:
    """Per test image: the stream's payload bits (batch-1 frame) and whether the noiseless prediction is right."""
    run = load_run(run_path)
    pipeline = run.pipeline.eval()
    dc = run.config.data_config
    ds = load_dataset(data, input_size=tuple(dc["input_size"][1:]), train=False)
    n = min(images, len(ds))
    transform = BatchTransform(dc["mean"], dc["std"], augment=False)
    bits, right, streams = [], [], []
    with torch.no_grad():
        for start in range(0, n, 100):
            idx = range(start, min(n, start + 100))
            x = transform(torch.stack([ds[i][0] for i in idx]))
            y = torch.tensor([int(ds[i][1]) for i in idx])
            f = pipeline.head(x)
            right += (pipeline.from_features(f, 0.0, None).argmax(1) == y).tolist()
            for j in range(len(idx)):
                frame = pipeline.codec.compress(f[j:j + 1], 0.0, pipeline.channel, "0" * 32)
                payload = frame[FRAME_HEADER:]
                streams.append(payload)
                bits.append(8 * len(payload))
    return {"bits": bits, "right": right, "streams": streams, "classes": run.config.num_classes,
            "ratio": run.codec_config.bandwidth_ratio, "run": run_path}


def stream_bits(streams: list[bytes], length: int) -> torch.Tensor:
    """(N, length) bits, most significant first, each stream zero-padded to ``length``."""
    out = torch.zeros(len(streams), length, dtype=torch.int64)
    for i, s in enumerate(streams):
        b = torch.tensor(list(s), dtype=torch.int64)
        planes = ((b.unsqueeze(1) >> torch.arange(7, -1, -1)) & 1).flatten()
        out[i, :planes.numel()] = planes
    return out


def separate_rows(name: str, phy: PhyConfig, uses: int, ent: dict, qams: list[int], seed: int) -> list[dict]:
    """The entropy streams over LDPC + QAM on the analog run's slots, top-1 per SNR (one draw)."""
    slots = uses // phy.slot_res
    data_res = slots * phy.data_res
    payload = max(ent["bits"])
    bits = stream_bits(ent["streams"], payload)
    right = torch.tensor(ent["right"], dtype=torch.float64)
    rows = []
    for m in qams:
        k = payload + 16
        rate = k / (m * data_res) * (1 + 1e-9)  # n = m x the data resource elements exactly
        if rate > 0.95:
            continue
        rate = max(rate, 0.2)  # 5G NR LDPC's lowest rate: a shorter codeword leaves the rest of the slots idle
        link_phy = dataclasses.replace(phy, modulation_bits=m, code_rate=rate, block_bits=max(k, 12), crc=CRC,
                                       link="ofdm")
        plan = BlockPlan(payload, link_phy)
        link = LDPCLink(plan, link_phy)
        top1, bler = {}, {}
        for snr in SNRS_DB:
            g = torch.Generator().manual_seed(seed * 1000 + int(snr * 10))
            n0 = torch.full((bits.shape[0],), 10 ** (-snr / 10))
            _, ok = link.transmit(bits, n0, g)
            ok = ok.all(1).double()
            top1[f"{snr:g}"] = float((ok * right + (1 - ok) / ent["classes"]).mean())
            bler[f"{snr:g}"] = float(1 - ok.mean())
        rows.append({"link": name, "scheme": f"entropy {ent['ratio']:g}x + LDPC {2 ** m}-QAM", "kind": "separate",
                     "channel_uses": link.channel_uses(), "qam_bits": m, "ldpc_k": plan.k, "ldpc_n": plan.n,
                     "code_rate": plan.rate, "bits_per_image_max": payload,
                     "bits_per_image_mean": sum(ent["bits"]) / len(ent["bits"]), "top1": top1,
                     "block_error_rate": bler, "images": len(ent["bits"]), "source": ent["run"]})
    return rows


def bound_row(name: str, phy: PhyConfig, uses: int, ent: dict) -> dict:
    """The streams under an ideal code on the data resource elements of AWGN (the longest must fit)."""
    data_res = (uses // phy.slot_res) * phy.data_res
    top1_free = sum(ent["right"]) / len(ent["right"])
    top1 = {f"{s:g}": top1_free if max(ent["bits"]) <= data_res * math.log2(1 + 10 ** (s / 10)) else 1 / ent["classes"]
            for s in SNRS_DB}
    return {"link": name, "scheme": f"entropy {ent['ratio']:g}x + ideal code (AWGN capacity)", "kind": "bound",
            "channel_uses": uses, "top1": top1, "top1_error_free": top1_free}


def speed_rows(name: str, ev: dict, data: str, images: int, speeds: list[float], seed: int) -> list[dict]:
    """The analog run at other UE speeds than it was trained for (its channel rebuilt at each speed)."""
    rows = []
    for speed in speeds:
        run = load_run(ev["run"])
        cfg = run.config.channel
        phy = dataclasses.replace(cfg.phy, speed_mps=speed)
        cond = tuple(cfg.train_condition) if isinstance(cfg.train_condition, list) else cfg.train_condition
        run.pipeline.channel = create_channel(cfg.name, cond, phy=phy)
        res = evaluate_run(EvalConfig(ev["run"], data, conditions=list(SNRS_DB[1:]), draws=1, limit=images, seed=seed),
                           run=run)
        rows.append({"link": name, "scheme": f"analog bnpp {res.bandwidth_ratio:g}x at {speed:g} m/s", "kind": "speed",
                     "speed_mps": speed, "trained_speed_mps": cfg.phy.speed_mps,
                     "channel_uses": res.results[0]["channel_uses_per_image"], "images": res.images,
                     "top1": {f"{next(iter(r['condition'].values())):g}": r["top1_mean"] for r in res.results}})
    return rows


def table(rows: list[dict]) -> str:
    head = "| link | scheme | channel uses | " + " | ".join(f"{s:g} dB" for s in SNRS_DB) + " |"
    lines = [head, "|" + "---|" * (3 + len(SNRS_DB))]
    for r in rows:
        cells = [f"{100 * r['top1'][f'{s:g}']:.1f}" if f"{s:g}" in r["top1"] else "-" for s in SNRS_DB]
        lines.append(f"| {r['link']} | {r['scheme']} | {r['channel_uses']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--analog", action="append", default=[], help="NAME=EVAL.json of an ofdm run (repeatable)")
    ap.add_argument("--entropy", help="the entropy-coded run directory (fitted over --channel none)")
    ap.add_argument("--data", default=str(SHARED / "data" / "cifar10" / "test.npz"), help="test images (.npz)")
    ap.add_argument("--images", type=int, default=1000, help="test images the separate scheme sends")
    ap.add_argument("--qam", default="2,4", help="bits per QAM symbol to try (2 QPSK, 4 16-QAM, 6 64-QAM)")
    ap.add_argument("--speeds", default="", help="UE speeds (m/s) to re-evaluate the faded analog runs at, e.g. 3,120")
    add_options(ap, out="benchmarks/results/separate_vs_joint_phy.json", out_help="results file (JSON; the plot beside it)",
                device=False, plot_only=True)
    args = ap.parse_args()
    if args.plot_only:
        plot(json.loads(Path(args.out).read_text()), Path(args.out).with_suffix(".png"))
        return
    if not args.analog or not args.entropy:
        ap.error("give --analog NAME=EVAL.json (at least once) and --entropy RUN")
    t0 = time.time()
    ent = entropy_streams(args.entropy, args.data, args.images)
    rows: list[dict] = []
    for item in args.analog:
        name, _, path = item.partition("=")
        ev = json.loads(Path(path).read_text())
        phy = RunDir(ev["run"]).read_config().channel.phy
        uses = ev["results"][0]["channel_uses_per_image"]
        rows.append({"link": name, "scheme": f"analog bnpp {ev['bandwidth_ratio']:g}x (joint)", "kind": "analog",
                     "channel_uses": uses, "code_symbols": ev["code_symbols"], "trained_for": ev["train_condition"],
                     "top1": {f"{next(iter(r['condition'].values())):g}": r["top1_mean"] for r in ev["results"]},
                     "top1_noiseless": ev["noiseless_top1"], "images": ev["images"], "draws": ev["results"][0]["draws"],
                     "channel_definition": ev["channel_definition"], "source": ev["run"]})
        if phy.profile != "none" and args.speeds:
            rows += speed_rows(name, ev, args.data, args.images, floats(args.speeds), args.seed)
        rows += separate_rows(name, phy, uses, ent, [int(q) for q in floats(args.qam)], args.seed)
        rows.append(bound_row(name, phy, uses, ent))
    out = {"snrs_db": SNRS_DB, "entropy_run": args.entropy, "images": len(ent["bits"]),
           "definitions": {"channel_use": "one OFDM resource element (a complex symbol), whole slots, pilots counted",
                           "snr": "Es/N0 per resource element, Es = 1 (data and pilots); N0 per complex symbol",
                           "separate": "the longest stream sets one LDPC block (k = its bits + CRC16) for every image; "
                                       "a failed CRC loses the image (chance)",
                           "bound": "ideal code at AWGN capacity on the data resource elements"},
           "wall_seconds": time.time() - t0, "table_md": table(rows), "rows": rows}
    Results(Path(args.out)).write(out)
    plot(out, Path(args.out).with_suffix(".png"))
    print(out["table_md"])


def plot(out: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    links = list(dict.fromkeys(r["link"] for r in out["rows"]))
    fig, axes = plt.subplots(1, len(links), figsize=(6.5 * len(links), 4.6), dpi=110, squeeze=False)
    for ax, link in zip(axes[0], links):
        for r in (r for r in out["rows"] if r["link"] == link):
            xs = [float(k) for k in r["top1"]]
            style = {"analog": dict(marker="o", color="tab:blue"), "bound": dict(ls=":", color="k"),
                     "speed": dict(marker=".", ls="-.", alpha=0.7)}.get(r["kind"], dict(marker="s", ls="--"))
            ax.plot(xs, [100 * v for v in r["top1"].values()], label=f"{r['scheme']} ({r['channel_uses']} uses)", **style)
        ax.set_xlabel("SNR (dB, Es/N0 per resource element)")
        ax.set_ylabel("top-1 (%)")
        ax.set_title(f"resnet18 / CIFAR-10, {link}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
