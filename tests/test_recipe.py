"""Defaults that follow from the task: the bnpp codec's inner width grows with the number of classes
(docs/defaults.md: resnet18 / CIFAR-100 at layer3 16x), and leaves 10-class codecs as they were."""

from __future__ import annotations

import numpy as np

from bnpp_cli.codec.config import plan_codec
from bnpp_cli.codec.presets import CLASS_WIDTH_CAP, default_hidden_channels
from bnpp_cli.link.config import ChannelConfig
from bnpp_cli.run.fit import FitConfig, fit_codec
from bnpp_cli.split.backbone import BackboneConfig


def test_the_width_floor_is_four_per_class_up_to_256_and_never_above_c():
    assert CLASS_WIDTH_CAP == 256
    assert default_hidden_channels(256, 16) == 64  # classes unknown: the rule as before
    assert default_hidden_channels(256, 16, 10) == 64  # 4 x 10 = 40 < 64: 10-class codecs unchanged
    assert default_hidden_channels(256, 16, 16) == 64
    assert default_hidden_channels(256, 16, 20) == 80
    assert default_hidden_channels(256, 16, 100) == 256  # CIFAR-100 at resnet18's layer3
    assert default_hidden_channels(128, 8, 100) == 128  # capped at C (layer2)
    assert default_hidden_channels(2048, 32, 1000) == 256  # capped at 256, not C
    assert default_hidden_channels(2048, 128, 1000) == 512  # 4 C' beats the class floor
    assert default_hidden_channels(16, 1, 100) == 16  # a narrow feature keeps its width


def test_plan_codec_passes_the_classes_to_the_width_and_an_explicit_width_wins():
    assert plan_codec((256, 2, 2), ratio=16).hidden_channels == 64
    assert plan_codec((256, 2, 2), ratio=16, num_classes=10).hidden_channels == 64
    assert plan_codec((256, 2, 2), ratio=16, num_classes=100).hidden_channels == 256
    assert plan_codec((256, 2, 2), ratio=16, num_classes=100, hidden_channels=32).hidden_channels == 32
    assert plan_codec((256, 2, 2), ratio=16, num_classes=100, preset="bottlenetpp").hidden_channels is None


def _npz(path, n, classes):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    np.savez(path, x=x, y=np.arange(n, dtype=np.int64) % classes)
    return path


def test_a_fit_plans_its_width_from_the_backbones_classes(tmp_path):
    data = _npz(tmp_path / "train.npz", 40, 10)  # labels 0-9: a class of both models
    widths = {}
    for classes in (10, 40):
        cfg = FitConfig(backbone=BackboneConfig("test_resnet", num_classes=classes, img_size=32), split="layer3",
                        data=str(data), out=str(tmp_path / f"run{classes}"), channel=ChannelConfig("awgn", 20.0),
                        ratio=16.0, codec_epochs=1, batch_size=16, val_fraction=0.2)
        result = fit_codec(cfg)
        assert result.config.feature_shape[0] == 192  # test_resnet's layer3
        widths[classes] = result.config.codec.hidden_channels
    assert widths == {10: 64, 40: 160}  # 10 classes: the floor of 64; 40 classes: 4 x 40
