"""Fit a codec, evaluate it, export the two halves and run them - the whole path from Python.

    python examples/fit_and_deploy.py            # works in a temporary directory
    python examples/fit_and_deploy.py runs/demo  # or keeps everything in this one

A tiny random-weight model (timm's test_resnet) and made-up images, so it needs no network and
runs in seconds on a CPU; swap in a real BackboneConfig(..., checkpoint=...) and --data for real
figures.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bnpp_cli import (BackboneConfig, ChannelConfig, EvalConfig, FitConfig, evaluate_run, export_halves, fit_codec,
                      load_device, load_edge)


def main(work: Path) -> None:
    rng = np.random.default_rng(0)
    images = work / "images.npz"  # x: uint8 (N, H, W, 3), y: int labels
    np.savez(images, x=rng.integers(0, 256, (48, 32, 32, 3), dtype=np.uint8), y=np.arange(48) % 10)

    backbone = BackboneConfig("test_resnet", num_classes=10, img_size=32)
    fitted = fit_codec(FitConfig(backbone=backbone, split="layer2", data=str(images), out=str(work / "run"),
                                 channel=ChannelConfig("awgn", 20.0), ratio=4, codec_epochs=1, batch_size=16))
    print(f"fitted {fitted.run} in {fitted.seconds:.1f} s")

    result = evaluate_run(EvalConfig(run=fitted.run, data=str(images), conditions=[10, 20], draws=1))
    print(f"backbone top-1 {result.backbone_top1:.2%}, noiseless {result.noiseless_top1:.2%}, "
          + ", ".join(f"{r['label']}: {r['top1_mean']:.2%}" for r in result.results))

    halves = export_halves(fitted.run, work / "deploy")
    device, edge = load_device(halves.device_path), load_edge(halves.edge_path)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        frame = device.payload(device(x))  # the bytes that cross the link
        logits = edge(edge.receive(frame))
    print(f"{len(frame)} bytes on the wire -> class {int(logits.argmax())}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
