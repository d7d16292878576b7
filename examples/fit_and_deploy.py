"""Fit a codec, evaluate it, export the two halves and run them - the whole path from Python.

    python examples/fit_and_deploy.py

It uses ../shared/data/cifar10 and ../shared/models/resnet18_cifar10.safetensors
when present (a real CIFAR-10 resnet18), else a tiny random model and random images.
"""

from pathlib import Path

import numpy as np
import torch

from bnpp_cli import (BackboneConfig, ChannelConfig, EvalConfig, FitConfig, evaluate_run, export_halves, fit_codec,
                      load_device, load_edge)

shared = Path(__file__).resolve().parents[1].parent / "shared"
work = Path("runs/example")
if (shared / "data" / "cifar10" / "train.npz").is_file():
    backbone = BackboneConfig("resnet18", checkpoint=str(shared / "models" / "resnet18_cifar10.safetensors"),
                              num_classes=10, img_size=32)
    train, test, split, limit = shared / "data/cifar10/train.npz", shared / "data/cifar10/test.npz", "layer3", 5000
else:
    backbone = BackboneConfig("test_resnet", num_classes=10, img_size=32)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.savez(work / "data.npz", x=rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8), y=np.arange(64) % 10)
    train = test = work / "data.npz"
    split, limit = "layer2", None

run = fit_codec(FitConfig(backbone=backbone, split=split, data=str(train), out=str(work / "run"),
                          channel=ChannelConfig("awgn", 20.0), ratio=64 if split == "layer3" else 4,
                          codec_epochs=1, limit=limit))
print(f"fitted in {run.seconds:.0f} s")
result = evaluate_run(EvalConfig(run=run.run, data=str(test), conditions=[10, 20], draws=2, limit=2000))
print(f"backbone {result.backbone_top1:.2%}, noiseless {result.noiseless_top1:.2%}, "
      + ", ".join(f"{r['condition']}: {r['top1_mean']:.2%}" for r in result.results))
halves = export_halves(run.run, work / "deploy")
device, edge = load_device(halves.device_path), load_edge(halves.edge_path)
x = torch.randn(1, 3, 32, 32)
with torch.no_grad():
    frame = device.payload(device(x))  # bytes for the link
    logits = edge(edge.receive(frame))
print(f"{len(frame)} bytes on the wire -> class {int(logits.argmax())}")
