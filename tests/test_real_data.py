"""Real data (../shared): the CIFAR-10 resnet18 a user brings, fitted, evaluated and exported."""

from __future__ import annotations

import pytest
import torch

from bnpp_cli.split.backbone import BackboneConfig, load_backbone
from bnpp_cli.data.batching import BatchTransform, make_loader
from bnpp_cli.data.datasets import load_dataset
from bnpp_cli.run.evaluate import EvalConfig, evaluate_run
from bnpp_cli.deploy.export import export_halves
from bnpp_cli.deploy.halves import load_device, load_edge
from bnpp_cli.link.config import ChannelConfig
from bnpp_cli.run.fit import FitConfig, fit_codec

pytestmark = pytest.mark.slow


def _backbone_config(checkpoint):
    return BackboneConfig("resnet18", checkpoint=str(checkpoint), num_classes=10, img_size=32)


def test_shared_model_scores_its_published_accuracy(cifar10_dir, resnet18_cifar10):
    # ../shared/models/README.md: 86.69 % on the official test split, images fed as they are
    bb = load_backbone(_backbone_config(resnet18_cifar10))
    test = load_dataset(str(cifar10_dir / "test.npz"), input_size=(32, 32), train=False)
    tf = BatchTransform(bb.data_config["mean"], bb.data_config["std"], augment=False)
    hits = 0
    with torch.no_grad():
        for x, y in make_loader(test, 1000, shuffle=False, seed=0):
            hits += int((bb.model(tf(x)).argmax(1) == y).sum())
    assert hits == 8669


def test_fit_eval_export_on_real_data(tmp_path, cifar10_dir, resnet18_cifar10):
    run = tmp_path / "run"
    fit_codec(FitConfig(backbone=_backbone_config(resnet18_cifar10), split="layer3",
                        data=str(cifar10_dir / "train.npz"), out=str(run), channel=ChannelConfig("awgn", 20.0),
                        ratio=64, codec_epochs=1, limit=4000, lr=1e-3))
    ev = evaluate_run(EvalConfig(run=str(run), data=str(cifar10_dir / "test.npz"), conditions=[20.0], draws=2,
                                 limit=2000))
    assert ev.feature_shape == [256, 2, 2] and ev.code_shape == [4, 2, 2] and ev.bandwidth_ratio == 64
    # even one short epoch keeps most of the accuracy at 64x (the full recipe: see README)
    assert ev.backbone_top1 - ev.noiseless_top1 < 0.06
    assert ev.backbone_top1 - ev.results[0]["top1_mean"] < 0.08
    # the exported pair, composed, scores exactly eval's noiseless figure on the same images
    halves = export_halves(run, tmp_path / "deploy")
    device, edge = load_device(halves.device_path), load_edge(halves.edge_path)
    test = torch.utils.data.Subset(load_dataset(str(cifar10_dir / "test.npz"), input_size=(32, 32), train=False),
                                   range(2000))
    dc = device.meta["data_config"]
    tf = BatchTransform(dc["mean"], dc["std"], augment=False)
    hits = 0
    with torch.no_grad():
        for x, y in make_loader(test, 500, shuffle=False, seed=0):
            hits += int((edge(edge.receive(device.payload(device(tf(x))))).argmax(1) == y).sum())
    assert hits / 2000 == ev.noiseless_top1
