"""bnpp search: the halving and recommendation rules on numbers whose answer is known by
construction, the baselines' figures, and a tiny real search (interrupted, resumed, re-budgeted)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bnpp_cli.cli import app
from bnpp_cli.errors import BnppError, RunError
from bnpp_cli.link.config import ChannelConfig
from bnpp_cli.run.baselines import baselines, measure_images, validation_images, write_images_npz
from bnpp_cli.run.candidates import (Measured, choose_splits, latency_ms, latest, pareto, promote, rate_to_ratio,
                                     recommend, round_budget)
from bnpp_cli.run.search import SearchConfig, read_search, search_split_rate
from bnpp_cli.split.backbone import BackboneConfig
from bnpp_cli.split.profile import Budget

from .helpers import tiny_npz


def _m(name, device_macs, bits, drop, rnd=0, images=100, split=None, rate=64.0, budget=Budget()):
    return Measured(name=name, split=split or name, rate=rate, round=rnd, images=images, epochs=1,
                    device_macs=device_macs, edge_macs=1_000_000, symbols=bits // 32, bits_per_image=bits,
                    bandwidth_ratio=rate, val_top1=0.9, val_drop=drop, fit_seconds=1.0, run=f"runs/{name}",
                    latency_ms=latency_ms(device_macs, bits, 1_000_000, budget))


# ---- the rules, on numbers with a known answer -----------------------------------------------
def test_latency_is_profiles_formula():
    b = Budget(bandwidth_mbps=10, device_gmacs=10, edge_gmacs=1000)
    # 10 M MACs on 10 GMAC/s = 1 ms; 1,000 bits on 10 Mbit/s = 0.1 ms; 1 G MACs on 1000 GMAC/s = 1 ms
    assert latency_ms(10e6, 1000, 1e9, b) == pytest.approx(2.1)


def test_choose_splits_spreads_over_device_macs():
    names = ["conv1", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    macs = [2, 2, 12, 20, 28, 37]
    assert choose_splits(names, macs, 37, 4) == ["layer1", "layer2", "layer3", "layer4"]
    assert choose_splits(names, macs, 37, 1) == ["layer4"]
    assert choose_splits(names, macs, 37, 10) == names  # never more points than there are
    with pytest.raises(BnppError, match="--auto-splits 0"):
        choose_splits(names, macs, 37, 0)


def test_rate_to_ratio_and_round_budget():
    assert rate_to_ratio(64, 1024, None, per_image=False) == 64.0
    assert rate_to_ratio(128, 1024, 8, per_image=True) == 64.0  # 1024 elements x 8 bits / 128 bits
    with pytest.raises(BnppError, match="digital channel"):
        rate_to_ratio(128, 1024, None, per_image=True)
    # eta 3 from 2,000 images x 1 epoch, 22,464 training images: more images first, then epochs
    assert [round_budget(r, 2000, 1, 3, 22464) for r in range(4)] == [(2000, 1), (6000, 1), (18000, 1), (22464, 3)]


def test_promote_keeps_the_feasible_fastest_and_faster_ones_by_drop():
    ms = [_m("a", 10e6, 512, 9.0), _m("b", 12e6, 512, 3.0), _m("c", 20e6, 512, 1.5),
          _m("d", 30e6, 512, 0.5), _m("e", 40e6, 512, 0.2), _m("f", 11e6, 512, 2.5)]
    kept = [m.name for m in promote(ms, eta=2, max_drop=2.0)]
    # c is the fastest within 2 points; of the faster ones (a, b, f) the lowest drops go on; d, e cannot win
    assert kept == ["c", "f", "b"]
    assert [m.name for m in promote(ms, eta=3, max_drop=0.1)] == ["e", "d"]  # none feasible: lowest drops
    assert [m.name for m in promote(ms, eta=100, max_drop=2.0)] == ["c"]


def test_recommend_never_over_tolerance_and_says_when_a_baseline_wins():
    b = Budget()
    ms = [_m("early", 10e6, 512, 2.01, budget=b), _m("mid", 20e6, 512, 1.99, budget=b),
          _m("late", 30e6, 256, 0.3, budget=b)]
    slow_image = {"name": "image-to-edge", "device_macs": 0, "bits_per_image": 1e6, "val_drop": 0.0,
                  "latency_ms": latency_ms(0, 1e6, 37e6, b)}
    label = {"name": "label-on-device", "device_macs": 37e6, "bits_per_image": math.log2(10), "val_drop": 0.0,
             "latency_ms": latency_ms(37e6, math.log2(10), 0, b)}
    rec = recommend(ms, [label, slow_image], 2.0)
    assert rec["candidate"]["split"] == "mid" and rec["winner"] == "mid"  # 'early' is 0.01 over: never picked
    assert rec["candidate"]["run"] == "runs/mid" and rec["candidate"]["val_drop"] == 1.99
    fast_image = dict(slow_image, bits_per_image=8000, latency_ms=latency_ms(0, 8000, 37e6, b))
    rec = recommend(ms, [label, fast_image], 2.0)
    assert rec["winner"] == "image-to-edge" and rec["candidate"]["split"] == "mid"
    assert "image-to-edge baseline wins" in rec["note"] and "mid" in rec["note"]
    lossy_image = dict(fast_image, val_drop=5.0)  # over the tolerance: cannot win
    rec = recommend([_m("x", 10e6, 512, 9.0)], [label, lossy_image], 2.0)
    assert rec["candidate"] is None and rec["winner"] == "label-on-device"
    assert "no split candidate is within tolerance" in rec["note"]


def test_pareto_and_latest():
    pts = [{"name": "a", "device_macs": 1, "bits_per_image": 10, "val_drop": 5},
           {"name": "b", "device_macs": 2, "bits_per_image": 10, "val_drop": 1},
           {"name": "c", "device_macs": 2, "bits_per_image": 20, "val_drop": 1},  # b beats it on bits
           {"name": "d", "device_macs": 9, "bits_per_image": 3, "val_drop": 0}]
    assert pareto(pts) == ["a", "b", "d"]
    ms = [_m("l3-r0", 1, 32, 3.0, rnd=0, split="layer3"), _m("l3-r1", 1, 32, 1.0, rnd=1, split="layer3", images=300),
          _m("l2-r0", 1, 32, 4.0, rnd=0, split="layer2")]
    assert sorted(m.name for m in latest(ms)) == ["l2-r0", "l3-r1"]


# ---- the baselines' figures -------------------------------------------------------------------
class _Constant(torch.nn.Module):
    """Always class 3, whatever the pixels: every encoding keeps its top-1."""

    def forward(self, x):
        return torch.nn.functional.one_hot(torch.full((len(x),), 3), 10).float()


def test_baselines_figures():
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.tensor([3, 3, 3, 3, 1, 2, 3, 4])
    b = Budget(bandwidth_mbps=1, device_gmacs=1, edge_gmacs=100)
    dc = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    out = baselines(measure_images(_Constant(), x, y, dc), total_macs=5_000_000, num_classes=10, budget=b,
                    max_drop=1.0)
    assert out["backbone_val_top1"] == 5 / 8 and out["images"] == 8
    label = out["label_on_device"]
    assert label["bits_per_image"] == pytest.approx(math.log2(10))
    assert label["latency_ms"] == pytest.approx(5.0 + 1e3 * math.log2(10) / 1e6)  # 5 M MACs at 1 GMAC/s
    enc = {(e["format"], e["quality"]): e for e in out["image_to_edge"]["encodings"]}
    buf = io.BytesIO()
    Image.fromarray(x[0].permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=90)
    first = buf.tell()
    sizes = [first]
    for img in x[1:]:
        buf = io.BytesIO()
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=90)
        sizes.append(buf.tell())
    assert enc[("jpeg", 90)]["bytes_per_image"] == pytest.approx(sum(sizes) / 8)
    assert all(e["val_drop"] == 0.0 for e in enc.values())
    # every encoding within tolerance: the smallest one is sent
    smallest = min(enc.values(), key=lambda e: e["bytes_per_image"])
    image = out["image_to_edge"]
    assert image["bits_per_image"] == pytest.approx(8 * smallest["bytes_per_image"])
    assert enc[("jpeg", 10)]["bytes_per_image"] < enc[("jpeg", 90)]["bytes_per_image"]
    assert image["latency_ms"] == pytest.approx(1e3 * image["bits_per_image"] / 1e6 + 1e3 * 5e6 / 100e9)


def test_validation_images_are_the_fits_held_out_ones(tmp_path):
    from bnpp_cli.data.datasets import load_dataset, split_train_val

    data = tiny_npz(tmp_path / "d.npz", n=40)
    x, y, classes, source, n_train = validation_images(str(data), None, 0.25, 7, (32, 32), 10)
    _, val = split_train_val(load_dataset(str(data), input_size=(32, 32), train=True), 0.25, 7)
    assert n_train == 30 and len(y) == 10 and "held out" in source
    assert torch.equal(x, torch.stack([val[i][0] for i in range(10)]))
    write_images_npz(tmp_path / "v.npz", x, y, classes)
    again = load_dataset(str(tmp_path / "v.npz"), input_size=(32, 32), train=False)
    assert torch.equal(again.tensors()[0], x) and torch.equal(again.labels, y) and again.classes == classes


# ---- a tiny real search: interrupted, resumed, re-budgeted ------------------------------------
def _config(tmp: Path, data: Path, **kw) -> SearchConfig:
    opts = dict(backbone=BackboneConfig("test_resnet", num_classes=10, img_size=32), data=str(data), out=str(tmp / "s"),
                channel=ChannelConfig("awgn", 20.0), splits=["layer1", "layer4"], rates=[4.0], first_images=32,
                first_epochs=1, eta=2, rounds=2, batch_size=16, max_drop=100.0, draws=1, val_fraction=0.25)
    opts.update(kw)
    return SearchConfig(**opts)


@pytest.fixture(scope="module")
def tiny_search(tmp_path_factory):
    """One search, stopped before its second fit (Ctrl-C), then resumed: (config, events, result)."""
    tmp = tmp_path_factory.mktemp("search")
    data = tiny_npz(tmp / "train.npz", n=96)
    config = _config(tmp, data)
    first: list[tuple[str, dict]] = []

    def stop_at_second_fit(event, info):
        first.append((event, info))
        if event == "fit" and sum(e == "fit" for e, _ in first) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search_split_rate(config, stop_at_second_fit)
    events: list[tuple[str, dict]] = []
    result = search_split_rate(config, lambda e, i: events.append((e, i)))
    return config, first, events, result


@pytest.mark.slow
def test_interrupted_search_resumes_without_refitting(tiny_search):
    config, first, events, result = tiny_search
    fitted_first = [i["name"] for e, i in first if e == "fit"]
    fitted_then = [i["name"] for e, i in events if e == "fit"]
    assert fitted_first == ["layer1-r4-n32-e1", "layer4-r4-n32-e1"]
    assert fitted_then[0] == "layer4-r4-n32-e1"  # layer1's finished fit (and its measurement) reused
    assert "layer1-r4-n32-e1" not in fitted_then
    # round 1 (64 images) goes to the one candidate halving keeps; everything within 100 points:
    # the fastest (latency_ms) is kept
    round0 = [c for c in result.candidates if c["round"] == 0]
    best0 = min(round0, key=lambda c: c["latency_ms"])
    assert fitted_then[1:] == [f"{best0['split']}-r4-n64-e1"]
    saved = json.loads((Path(config.out) / "search.json").read_text())
    assert saved["status"] == "done" and len(saved["candidates"]) == 3
    assert saved["recommendation"] == result.recommendation
    assert read_search(config.out) == result  # what `bnpp profile --search DIR` would read


@pytest.mark.slow
def test_search_figures_are_measured(tiny_search):
    config, _, _, result = tiny_search
    by_name = {c["name"]: c for c in result.candidates}
    l1, l4 = by_name["layer1-r4-n32-e1"], by_name["layer4-r4-n32-e1"]
    # test_resnet at 32x32: layer1 32x8x8, layer4 96x1x1; ratio 4 -> 512 and 24 analog symbols (float32)
    assert (l1["symbols"], l1["bits_per_image"]) == (512, 512 * 32)
    assert (l4["symbols"], l4["bits_per_image"]) == (24, 24 * 32)
    heads = {s["name"]: s["head_macs"] for s in result.splits}
    assert l1["device_macs"] > heads["layer1"] and l4["device_macs"] > heads["layer4"]  # the encoder counts too
    assert result.validation["images"] == 24  # 25 % of 96
    for c in result.candidates:  # the drop is against the uncut model on the same images
        assert c["val_drop"] == pytest.approx(100 * (result.validation["backbone_top1"] - c["val_top1"]))
        assert Path(c["run"], "codec.safetensors").is_file()
    rec = result.recommendation
    final = [c for c in result.candidates if c["name"] in result.final]
    assert rec["candidate"]["name"] == min(final, key=lambda c: c["latency_ms"])["name"]


@pytest.mark.slow
def test_search_rebudgets_without_fitting(tiny_search):
    config, _, _, _ = tiny_search
    events = []
    # one round: round 0's measurements are all there (a new budget may promote another candidate)
    # a huge link, a slow device: sending the image and running everything on the edge wins
    again = search_split_rate(_config(Path(config.out).parent, Path(config.data), rounds=1,
                                      budget=Budget(bandwidth_mbps=1e6, device_gmacs=0.01, edge_gmacs=1000)),
                              lambda e, i: events.append(e))
    assert "fit" not in events
    assert again.recommendation["winner"] == "image-to-edge"
    assert "image-to-edge baseline wins" in again.recommendation["note"]
    # a trickle of a link: sending the label (3.3 bits) wins
    slow = search_split_rate(_config(Path(config.out).parent, Path(config.data), rounds=1,
                                     budget=Budget(bandwidth_mbps=1e-3, device_gmacs=10, edge_gmacs=1000)))
    assert slow.recommendation["winner"] == "label-on-device"
    with pytest.raises(RunError, match="other seed"):
        search_split_rate(_config(Path(config.out).parent, Path(config.data), seed=1))


@pytest.mark.slow
def test_cli_search(tmp_path):
    data = tiny_npz(tmp_path / "train.npz", n=64)
    out = tmp_path / "s"
    args = ["search", "test_resnet", "--num-classes", "10", "--img-size", "32", "--data", str(data), "--out", str(out),
            "--snr", "20", "--splits", "layer4", "--ratios", "4", "--rounds", "1", "--first-images", "32",
            "--batch-size", "16", "--max-drop", "100", "--draws", "1", "--json", str(tmp_path / "s.json")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "Recommended split: layer4, rate 4" in r.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["recommendation"]["candidate"]["run"] == str(out / "candidates" / "layer4-r4-n32-e1")
    bad = CliRunner().invoke(app, args[:-2] + ["--eta", "1"])
    assert bad.exit_code == 2 and "--eta 1 is out of range" in bad.output


def test_cli_search_errors(tmp_path):
    data = tiny_npz(tmp_path / "train.npz", n=32)
    r = CliRunner().invoke(app, ["search", "test_resnet", "--data", str(data), "--out", str(tmp_path / "s"),
                                 "--ratios", "64", "--max-drop", "-1"])
    assert r.exit_code == 2 and "--max-drop -1.0 is out of range" in r.output and "Traceback" not in r.output
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    r = CliRunner().invoke(app, ["search", "test_resnet", "--data", str(data), "--out", str(tmp_path / "busy")])
    assert r.exit_code == 2 and "not a bnpp search" in r.output
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(RunError, match="holds no bnpp search"):
        read_search(tmp_path / "busy")


@pytest.mark.slow
def test_cli_search_digital_bits_per_image(tmp_path):
    data = tiny_npz(tmp_path / "train.npz", n=64)
    r = CliRunner().invoke(app, ["search", "test_resnet", "--num-classes", "10", "--img-size", "32", "--data", str(data),
                                 "--out", str(tmp_path / "s"), "--channel", "bec", "--erasure", "0.01",
                                 "--splits", "layer4", "--bits-per-image", "192", "--rounds", "1",
                                 "--first-images", "32", "--batch-size", "16", "--max-drop", "100", "--draws", "1",
                                 "--json", str(tmp_path / "s.json")])
    assert r.exit_code == 0, r.output
    (c,) = json.loads((tmp_path / "s.json").read_text())["candidates"]
    # layer4 96x1x1, 8-bit symbols: 192 bits per image = 24 symbols = ratio 4
    assert (c["name"], c["symbols"], c["bits_per_image"], c["bandwidth_ratio"]) == ("layer4-b192-n32-e1", 24, 192, 4.0)


def test_profile_says_its_ratio_is_assumed_and_shows_a_measured_search(tiny_search, tmp_path):
    from bnpp_cli.run.search import read_search

    config = tiny_search[0]
    expected = read_search(config.out).recommendation  # as the search dir holds it now (other tests re-budget it)
    out = tmp_path / "p.json"
    r = CliRunner().invoke(app, ["profile", "test_resnet", "--img-size", "32", "--repeats", "1", "--samples", "2",
                                 "--search", str(config.out), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "ASSUMED 64x codec at every point, accuracy NOT measured" in r.output and "bnpp search MODEL" in r.output
    d = json.loads(out.read_text())
    assert d["recommendation"]["ratio_assumed"] is True
    measured = d["measured_recommendation"]
    assert measured == expected and "Measured (bnpp search " in r.output
    r = CliRunner().invoke(app, ["profile", "test_resnet", "--search", str(tmp_path / "none")])
    assert r.exit_code == 2 and "holds no bnpp search" in r.output


def test_cli_search_bsc_takes_flip_not_erasure(tmp_path):
    data = tiny_npz(tmp_path / "train.npz", n=32)
    out = tmp_path / "s"
    base = ["search", "test_resnet", "--data", str(data), "--out", str(out), "--channel", "bsc"]
    r = CliRunner().invoke(app, base + ["--erasure", "0.01"])
    assert r.exit_code == 2 and "--erasure does not apply to the channel 'bsc'" in r.output
    assert "Hint: use --flip" in r.output and not out.exists()
    # --flip is bsc's condition: the channel is accepted, and the next check (entropy over bsc) refuses
    r = CliRunner().invoke(app, base + ["--flip", "0.01", "--preset", "entropy"])
    assert r.exit_code == 2 and "not channel 'bsc'" in r.output and "--flip" not in r.output and not out.exists()
