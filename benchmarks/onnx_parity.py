"""ONNX halves vs the PyTorch halves on a whole test set, and the int8 device half's cost and gain.

    bnpp export RUN --out DEPLOY --format all --calib-data TRAIN.npz      # device/edge .safetensors + .onnx,
                                                                          # device.int8.onnx
    python benchmarks/onnx_parity.py --deploy DEPLOY --data TEST.npz --snr 10 \
        --out benchmarks/results/onnx_r18_l3_64.json

For every test image, through the wire format (link.transmit) and, with --snr, the simulated air
interface of the same seed (link.receiver) on all sides:
- PyTorch pair vs ONNX Runtime pair: max |diff| of the code z and of the logits, top-1 agreement;
- int8 device half + float edge half: top-1 against the labels and the float halves;
- batch-1 device latency of the PyTorch, ONNX float and ONNX int8 device halves, interleaved in one
  run (median and quartiles of --repeats runs each), and the files' sizes;
- `bnpp predict` vs `bnpp predict --runtime onnxruntime` (the CLI, --seed 0) on the first
  --cli-images test images written as PNG: the same classes?
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from bnpp_cli import BatchTransform, load_dataset, load_onnx_pair, load_pair
from harness import Results, add_options, save_png


def logits_through_wire(device, edge, x, param, seed, first):
    z = device(x, param)
    z_hat = edge.air(edge.receive(device.payload(z)), param, seed, first)
    return z, edge(z_hat, param)


def quartiles(values):
    q = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2], "min": min(values), "repeats": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deploy", required=True)
    ap.add_argument("--data", required=True, help="test images (.npz)")
    ap.add_argument("--snr", type=float, default=None, help="PSNR dB of the simulated link (default noiseless)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=200, help="timed batch-1 runs per device half")
    ap.add_argument("--cli-images", type=int, default=10000)
    add_options(ap, out=None, out_required=True, out_help="results file (JSON)", device=False)
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    pt_dev, pt_edge = load_pair(args.deploy)
    ort_dev, ort_edge = load_onnx_pair(args.deploy)
    q_dev, _ = load_onnx_pair(args.deploy, int8=True)
    dc = pt_dev.meta["data_config"]
    param = pt_dev.param_from_condition(args.snr) if args.snr is not None else 0.0
    data = load_dataset(args.data, input_size=tuple(dc["input_size"][1:]), train=False)
    images, labels = data.tensors()
    norm = BatchTransform(dc["mean"], dc["std"], augment=False)

    code_diff = logit_diff = 0.0
    top1 = {"torch": 0, "onnx": 0, "int8": 0}
    agree = {"onnx_vs_torch": 0, "int8_vs_torch": 0, "int8_vs_onnx": 0}
    t0 = time.time()
    with torch.inference_mode():
        for first in range(0, len(images), args.batch):
            x = norm(images[first:first + args.batch])
            y = labels[first:first + args.batch]
            z_t, l_t = logits_through_wire(pt_dev, pt_edge, x, param, args.seed, first)
            z_o, l_o = logits_through_wire(ort_dev, ort_edge, x, param, args.seed, first)
            _, l_q = logits_through_wire(q_dev, ort_edge, x, param, args.seed, first)
            code_diff = max(code_diff, float((z_t - z_o).abs().max()))
            logit_diff = max(logit_diff, float((l_t - l_o).abs().max()))
            p_t, p_o, p_q = l_t.argmax(1), l_o.argmax(1), l_q.argmax(1)
            for k, p in (("torch", p_t), ("onnx", p_o), ("int8", p_q)):
                top1[k] += int((p == y).sum())
            agree["onnx_vs_torch"] += int((p_o == p_t).sum())
            agree["int8_vs_torch"] += int((p_q == p_t).sum())
            agree["int8_vs_onnx"] += int((p_q == p_o).sum())
    n = len(images)
    eval_s = time.time() - t0

    # batch-1 device latency, the three halves interleaved so that load on the machine hits all alike
    x1 = norm(images[:1])
    times = {"torch": [], "onnx_float": [], "onnx_int8": []}
    halves = {"torch": pt_dev, "onnx_float": ort_dev, "onnx_int8": q_dev}
    with torch.inference_mode():
        for h in halves.values():
            for _ in range(10):  # warm-up
                h(x1, param)
        for _ in range(args.repeats):
            for name, h in halves.items():
                t = time.perf_counter()
                h(x1, param)
                times[name].append(1e3 * (time.perf_counter() - t))
    deploy = Path(args.deploy)
    sizes = {name: (deploy / f).stat().st_size for name, f in
             (("device.safetensors", "device.safetensors"), ("device.onnx", "device.onnx"),
              ("device.int8.onnx", "device.int8.onnx"), ("edge.onnx", "edge.onnx"))}

    cli = cli_same_classes(args, images, data)
    result = {
        "onnxruntime": __import__("onnxruntime").__version__, "seed": args.seed, "deploy": str(deploy), "data": args.data, "images": n,
        "condition": {"snr_db": args.snr} if args.snr is not None else "noiseless",
        "pair_id": pt_dev.pair_id,
        "code_max_abs_diff": code_diff, "logits_max_abs_diff": logit_diff,
        "top1": {k: v / n for k, v in top1.items()},
        "top1_agreement": {k: v / n for k, v in agree.items()},
        "int8_top1_drop_points": 100 * (top1["torch"] - top1["int8"]) / n,
        "device_latency_ms_batch1": {k: quartiles(v) for k, v in times.items()},
        "file_bytes": sizes, "eval_seconds": eval_s, "cli_predict": cli,
    }
    Results(Path(args.out)).write(result)
    print(json.dumps({k: result[k] for k in ("top1", "top1_agreement", "logits_max_abs_diff", "code_max_abs_diff",
                                              "int8_top1_drop_points", "file_bytes")}, indent=2))
    print({k: round(v["median"], 3) for k, v in result["device_latency_ms_batch1"].items()}, cli)


def cli_same_classes(args, images, data) -> dict:
    """`bnpp predict` with each runtime on the first --cli-images test images (PNG files), --seed."""
    k = min(args.cli_images, len(images))
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(k):
            save_png(images[i].permute(1, 2, 0).numpy(), f"{tmp}/test{i:05d}.png")
        classes = {}
        for runtime in ("torch", "onnxruntime", "onnxruntime-int8"):
            out = Path(tmp) / f"{runtime}.json"
            cmd = ["bnpp", "predict", args.deploy, tmp, "--runtime", runtime, "--top", "1", "--seed", str(args.seed),
                   "--batch-size", "250", "--json", str(out)]
            if args.snr is not None:
                cmd += ["--snr", str(args.snr)]
            subprocess.run(cmd, check=True, capture_output=True)
            classes[runtime] = [p["top"][0][0] for p in json.loads(out.read_text())["predictions"]]
    names = list(data.classes) if data.classes else None
    truth = [names[int(y)] if names else str(int(y)) for y in data.labels[:k]]
    return {
        "images": k, "seed": args.seed,
        "same_classes_onnxruntime_vs_torch": sum(a == b for a, b in zip(classes["onnxruntime"], classes["torch"])) / k,
        "same_classes_int8_vs_torch": sum(a == b for a, b in zip(classes["onnxruntime-int8"], classes["torch"])) / k,
        "top1": {r: sum(a == b for a, b in zip(c, truth)) / k for r, c in classes.items()},
    }


if __name__ == "__main__":
    main()
