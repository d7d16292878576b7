"""Tiny data and tiny fitted runs for the tests (random images, timm test_* models, 1 epoch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnpp_cli.split.backbone import BackboneConfig
from bnpp_cli.link.config import ChannelConfig
from bnpp_cli.run.fit import FitConfig, fit_codec

CLASSES = [f"class{i}" for i in range(10)]


def tiny_npz(path: Path, n: int = 48, size: int = 32, seed: int = 0, classes: int = 10) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    y = np.arange(n, dtype=np.int64) % classes
    np.savez(path, x=x, y=y, class_names=np.array(CLASSES[:classes]))
    return path


def tiny_run(tmp: Path, model: str = "test_resnet", split: str = "layer2", channel: str = "awgn",
             condition=20.0, ratio: float = 4.0, preset: str = "bnpp", epochs: int = 1,
             backbone_checkpoint: str | None = None, **kw):
    tmp.mkdir(parents=True, exist_ok=True)
    data = tiny_npz(tmp / "train.npz")
    config = FitConfig(
        backbone=BackboneConfig(model, num_classes=10, img_size=32, checkpoint=backbone_checkpoint),
        split=split, data=str(data),
        out=str(tmp / "run"), channel=ChannelConfig(channel, condition), ratio=ratio, preset=preset,
        codec_epochs=epochs, batch_size=16, lr=1e-3, **kw,
    )
    return fit_codec(config), data
