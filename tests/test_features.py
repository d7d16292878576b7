"""The feature cache (run.features): the same fit as the image path, keyed by what determines it,
shared by the candidates of a split, refused where the inputs or the head change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bnpp_cli.cli import app
from bnpp_cli.errors import BnppError
from bnpp_cli.link.config import ChannelConfig
from bnpp_cli.run.config import FitConfig
from bnpp_cli.run.features import cache_key, data_digest, weights_digest
from bnpp_cli.run.fit import fit_codec
from bnpp_cli.run.rundir import RunDir
from bnpp_cli.run.search import SearchConfig, search_split_rate
from bnpp_cli.split.backbone import BackboneConfig, load_backbone
from bnpp_cli.data.datasets import load_dataset

from .helpers import tiny_npz


def _fit(tmp: Path, data: Path, name: str, cache, split: str = "layer2", ratio: float = 4.0, limit: int = 64,
         **kw):
    config = FitConfig(backbone=BackboneConfig("test_resnet", num_classes=10, img_size=32), split=split, data=str(data),
                       out=str(tmp / name), channel=ChannelConfig("awgn", 20.0), ratio=ratio, codec_epochs=2,
                       batch_size=16, augment=False, feature_cache=cache, limit=limit, **kw)
    result = fit_codec(config)
    return RunDir(tmp / name).read_codec(), result


@pytest.fixture(scope="module")
def three_fits(tmp_path_factory):
    """The same fit (augment off, seed 0) through the images, the in-memory cache, the directory cache."""
    tmp = tmp_path_factory.mktemp("features")
    data = tiny_npz(tmp / "train.npz", n=96)
    return tmp, data, {name: _fit(tmp, data, name, cache)
                       for name, cache in (("images", False), ("memory", True), ("dir", str(tmp / "cache")))}


def test_cached_fit_equals_the_image_path(three_fits):
    _, _, fits = three_fits
    (ref, r_ref), (mem, r_mem), (disk, r_disk) = fits["images"], fits["memory"], fits["dir"]
    assert r_ref.features is None and r_mem.features["where"] == "memory" and r_disk.features["built"] is True
    assert set(ref) == set(mem) == set(disk) and len(ref) > 10
    for k in ref:  # the same batches, noise draws and optimizer steps: the same codec weights
        torch.testing.assert_close(mem[k], ref[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(disk[k], ref[k], rtol=1e-5, atol=1e-6)
    for a, b, c in zip(r_ref.epochs, r_mem.epochs, r_disk.epochs):  # 2 epochs x 4 batches of 16
        assert a["images"] == b["images"] == c["images"] == 64
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5) == pytest.approx(c["train_loss"], rel=1e-5)
        assert a["val_top1_worst"] == b["val_top1_worst"] == c["val_top1_worst"]


@pytest.mark.slow
def test_directory_cache_is_shared_and_holds_plain_arrays(three_fits):
    tmp, data, fits = three_fits
    first = fits["dir"][1].features
    # another candidate at the same split (another rate; the search test has two): the entry is
    # reused, not rebuilt, here with fewer rows (a prefix); more rows: the entry extended
    _, fewer = _fit(tmp, data, "dir-32", str(tmp / "cache"), ratio=8.0, limit=32)
    assert fewer.features["built"] is False and fewer.features["key"] == first["key"]
    extended, more = _fit(tmp, data, "dir-72", str(tmp / "cache"), limit=72)
    assert more.features["built"] is True and more.features["key"] == first["key"]
    assert more.features["computed_rows"] == 8  # only the rows the entry lacked
    plain, _ = _fit(tmp, data, "images-72", False, limit=72)
    for k in plain:  # the extended entry trains the same codec as the images do
        torch.testing.assert_close(extended[k], plain[k], rtol=1e-5, atol=1e-6)
    meta = json.loads((tmp / "cache" / f"{first['key']}.json").read_text())
    assert meta["rows"] == 72 and meta["feature_shape"] == [48, 4, 4] and meta["dtype"] == "float32"
    feats = np.load(tmp / "cache" / f"{first['key']}.features.npy", allow_pickle=False)
    teacher = np.load(tmp / "cache" / f"{first['key']}.teacher.npy", allow_pickle=False)
    assert feats.shape == (72, 48, 4, 4) and feats.dtype == np.float32 and teacher.shape == (72, 10)
    assert len(list((tmp / "cache").glob("*.json"))) == 1  # another split: another entry (the search test)


def test_a_broken_entry_is_rebuilt(three_fits, tmp_path):
    tmp, data, fits = three_fits
    cache = tmp_path / "cache"
    shutil.copytree(tmp / "cache", cache)
    key = fits["dir"][1].features["key"]
    (cache / f"{key}.teacher.npy").write_bytes(b"not an array")
    _, again = _fit(tmp_path, data, "rebuilt", str(cache))
    assert again.features["built"] is True
    assert np.load(cache / f"{key}.teacher.npy", allow_pickle=False).shape[1] == 10


def test_key_changes_with_what_determines_the_features(tmp_path):
    model = load_backbone(BackboneConfig("test_resnet", num_classes=10, img_size=32)).model
    data = tiny_npz(tmp_path / "a.npz", n=20, seed=0)
    other = tiny_npz(tmp_path / "b.npz", n=20, seed=1)
    ds = load_dataset(str(data), input_size=(32, 32), train=True)
    base = dict(model="test_resnet", create_kwargs={"num_classes": 10}, weights=weights_digest(model), split="layer2",
                shape=[24, 8, 8], data=data_digest(ds), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), device="cpu",
                amp=True)
    key = cache_key(**base)
    assert cache_key(**base) == key and len(key) == 24
    assert data_digest(load_dataset(str(data), input_size=(32, 32), train=True)) == base["data"]
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    changed = {"weights": weights_digest(model), "split": "layer3", "model": "test_vit",
               "data": data_digest(load_dataset(str(other), input_size=(32, 32), train=True)),
               "mean": (0.4, 0.5, 0.5), "std": (0.25, 0.25, 0.3), "device": "cuda", "amp": False}
    keys = {name: cache_key(**{**base, name: value}) for name, value in changed.items()}
    assert key not in keys.values() and len(set(keys.values())) == len(keys)
    # a different order of the same images is other data (the rows are stored in order)
    flipped = torch.utils.data.Subset(ds, list(range(19, -1, -1)))
    assert data_digest(flipped) != base["data"]


def test_cache_refused_where_inputs_or_head_change(tmp_path):
    data = tiny_npz(tmp_path / "d.npz", n=48)
    base = dict(backbone=BackboneConfig("test_resnet", num_classes=10, img_size=32), split="layer2", data=str(data),
                out=str(tmp_path / "r"), feature_cache=True)
    with pytest.raises(BnppError, match="cannot be combined with --augment"):
        fit_codec(FitConfig(**base))
    with pytest.raises(BnppError, match="not --joint-epochs 1"):
        fit_codec(FitConfig(**base, augment=False, joint_epochs=1))
    assert not (tmp_path / "r").exists()  # refused before anything is written
    common = ["fit", "test_resnet", "--num-classes", "10", "--img-size", "32", "--split", "layer2", "--data", str(data),
              "--out", str(tmp_path / "c"), "--codec-epochs", "1", "--batch-size", "16"]
    r = CliRunner().invoke(app, common + ["--cache-features"])
    assert r.exit_code == 2 and "cannot be combined with --augment" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, common + ["--cache-features", "--no-augment", "--joint-epochs", "1"])
    assert r.exit_code == 2 and "--joint-epochs 1" in r.output
    assert not (tmp_path / "c").exists()
    r = CliRunner().invoke(app, common + ["--no-augment", "--cache-dir", str(tmp_path / "fc")])
    assert r.exit_code == 0, r.output
    assert "Feature cache: computed for 43 images" in r.output  # 48 less the 5 held out (10 %)
    assert len(list((tmp_path / "fc").glob("*.features.npy"))) == 1
    saved = json.loads((tmp_path / "c" / "config.json").read_text())
    assert saved["fit"]["feature_cache"] == str(tmp_path / "fc")


@pytest.mark.slow
def test_search_without_augmentation_shares_one_entry_per_split(tmp_path):
    data = tiny_npz(tmp_path / "train.npz", n=64)
    config = SearchConfig(backbone=BackboneConfig("test_resnet", num_classes=10, img_size=32), data=str(data),
                          out=str(tmp_path / "s"), channel=ChannelConfig("awgn", 20.0), splits=["layer1", "layer4"],
                          rates=[4.0, 8.0], first_images=32, first_epochs=1, eta=2, rounds=1, batch_size=16,
                          max_drop=100.0, draws=1, val_fraction=0.25, augment=False)
    result = search_split_rate(config)
    entries = list((tmp_path / "s" / "features").glob("*.json"))
    assert len(entries) == 2 and len(result.candidates) == 4  # 2 splits x 2 rates, one cache per split
    paid = {c["name"]: c["features_s"] for c in result.candidates}
    assert paid["layer1-r4-n32-e1"] > 0 and paid["layer4-r4-n32-e1"] > 0  # the first at a split builds it
    with pytest.raises(BnppError, match="cannot be combined with --augment"):
        search_split_rate(SearchConfig(**{**config.__dict__, "augment": True, "feature_cache": True,
                                          "out": str(tmp_path / "t")}))
