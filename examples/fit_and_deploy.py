"""Fit a codec, evaluate it, export the two halves and run them - the whole path from Python.

    python examples/fit_and_deploy.py

A tiny random test_resnet and 64 made-up 32x32 images in a temporary directory, so it runs in
seconds; for a real run give BackboneConfig a timm name and checkpoint, and FitConfig your data.
"""

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bnpp_cli import (BackboneConfig, ChannelConfig, EvalConfig, FitConfig, PredictConfig, evaluate_run,
                      export_halves, fit_codec, predict)

with tempfile.TemporaryDirectory() as tmp:
    work = Path(tmp)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    np.savez(work / "data.npz", x=pixels, y=np.arange(64) % 10)

    backbone = BackboneConfig("test_resnet", num_classes=10, img_size=32)
    run = fit_codec(FitConfig(backbone=backbone, split="layer2", data=str(work / "data.npz"), out=str(work / "run"),
                              channel=ChannelConfig("awgn", 20.0), ratio=4, codec_epochs=1, batch_size=16))
    print(f"fitted in {run.seconds:.1f} s")
    result = evaluate_run(EvalConfig(run=run.run, data=str(work / "data.npz"), conditions=[10, 20], draws=1))
    print(f"backbone {result.backbone_top1:.2%}, noiseless {result.noiseless_top1:.2%}, "
          + ", ".join(f"{r['label']}: {r['top1_mean']:.2%}" for r in result.results))

    export_halves(run.run, work / "deploy")
    Image.fromarray(pixels[0]).save(work / "cat.png")
    config = PredictConfig(str(work / "deploy"), condition=10.0, condition_name="snr_db", top_k=3)
    for images in ([work / "cat.png"], [Image.fromarray(pixels[1])], torch.from_numpy(pixels[2:4])):
        answer = predict(config, images)
        for p in answer.predictions:
            print(f"{Path(p.image).name}: {p.top[0][0]} ({p.top[0][1]:.1%}), {p.frame_bytes} bytes on the wire")
