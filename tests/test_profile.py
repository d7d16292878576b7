"""MAC counting against timm's published figures, attention included; the profile contract."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from bnpp_cli.split.backbone import BackboneConfig
from bnpp_cli.split.macs import count_macs
from bnpp_cli.split.profile import Budget, ProfileConfig, profile_model

# timm's benchmark tables (GMACs at 224x224)
PUBLISHED_GMACS = {
    "resnet50": 4.11,
    "vit_tiny_patch16_224": 1.26,
    "efficientnet_b0": 0.40,
    "convnext_tiny": 4.47,
    "densenet121": 2.87,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_GMACS))
def test_total_macs_match_timm_published_within_3_percent(name):
    model = timm.create_model(name, pretrained=False).eval()
    gmacs = count_macs(model, torch.zeros(1, 3, 224, 224)) / 1e9
    assert abs(gmacs / PUBLISHED_GMACS[name] - 1) < 0.03, f"{name}: {gmacs:.4f} vs {PUBLISHED_GMACS[name]}"


def test_cpu_attention_kernel_is_counted():
    class Attn(torch.nn.Module):
        def forward(self, q):
            return F.scaled_dot_product_attention(q, q, q)

    heads, tokens, dim = 3, 50, 64
    q = torch.randn(1, heads, tokens, dim)
    # q @ k^T and attn @ v: two matmuls of heads * tokens * tokens * dim MACs each
    assert count_macs(Attn(), q) == 2 * heads * tokens * tokens * dim


def _tiny_profile(**kw) -> dict:
    cfg = ProfileConfig(backbone=BackboneConfig("test_resnet", img_size=64), repeats=2, samples=4, **kw)
    return profile_model(cfg).to_dict()


def test_profile_contract_and_accounting():
    d = _tiny_profile(verify=True)
    for key in ("model", "input_size", "weights", "total_macs", "total_params", "split_points", "recommendation"):
        assert key in d
    assert d["input_size"] == [3, 64, 64] and d["weights"] == "random"
    model = timm.create_model("test_resnet", pretrained=False)
    assert d["total_params"] == sum(p.numel() for p in model.parameters())
    assert d["total_macs"] == count_macs(model.eval(), torch.zeros(1, 3, 64, 64))
    prev = -1
    for p in d["split_points"]:
        for key in ("name", "shape", "elements", "bytes", "zero_fraction", "device_macs", "device_params",
                    "edge_macs", "edge_params", "latency_ms", "max_abs_diff"):
            assert key in p
        assert p["elements"] == torch.Size(p["shape"]).numel() and p["bytes"] == 4 * p["elements"]
        assert p["device_macs"] + p["edge_macs"] == d["total_macs"]
        assert p["device_params"] + p["edge_params"] == d["total_params"]
        assert p["device_macs"] >= prev  # execution order: cumulative compute never decreases
        prev = p["device_macs"]
        assert 0 <= p["zero_fraction"] <= p["near_zero_fraction"] <= 1
        assert p["latency_ms"] > 0 and p["max_abs_diff"] == 0.0
    rec = d["recommendation"]
    names = [p["name"] for p in d["split_points"]]
    assert rec["best"] in names and set(rec["pareto"]) <= set(names)
    best = min(d["split_points"], key=lambda p: p["est_latency_ms"])
    assert rec["best"] == best["name"]


def test_recommendation_follows_the_budget():
    # a very slow device pushes the split to the start; a very slow link pushes it to the end
    slow_device = _tiny_profile(budget=Budget(bandwidth_mbps=1e6, device_gmacs=1e-3, edge_gmacs=1e3, ratio=64))
    slow_link = _tiny_profile(budget=Budget(bandwidth_mbps=1e-3, device_gmacs=1e3, edge_gmacs=1e3, ratio=64))
    names = [p["name"] for p in slow_device["split_points"]]
    assert names.index(slow_device["recommendation"]["best"]) < names.index(slow_link["recommendation"]["best"])
    smallest = min(slow_link["split_points"], key=lambda p: p["elements"])
    assert slow_link["recommendation"]["best"] == smallest["name"]


def test_post_relu_feature_is_sparse_and_measured():
    d = _tiny_profile()
    act = next(p for p in d["split_points"] if p["name"] == "act1")
    assert 0.3 < act["zero_fraction"] < 0.7  # ReLU of a roughly symmetric pre-activation


def test_bits_per_image_budget_is_the_payload_at_every_point():
    # 100 bits per image wherever the cut is: the link term is the same everywhere, so with a slow
    # device and a fast edge the earliest point wins, whatever its feature size
    d = _tiny_profile(budget=Budget(bandwidth_mbps=1.0, device_gmacs=1e-3, edge_gmacs=1e3, ratio=None,
                                    bits_per_image=100))
    rows = d["split_points"]
    assert [p["payload_bits"] for p in rows] == [100] * len(rows)
    for p in rows:
        assert p["payload_ratio"] == pytest.approx(32 * p["elements"] / 100)
        link_ms = 1e3 * 100 / 1e6
        compute_ms = 1e3 * (p["device_macs"] / 1e6 + p["edge_macs"] / 1e12)
        assert p["est_latency_ms"] == pytest.approx(link_ms + compute_ms)
    rec = d["recommendation"]
    assert rec["best"] == min(rows, key=lambda p: p["device_macs"])["name"]
    assert rec["payload"] == {"bits_per_image": 100} and rec["budget"]["ratio"] is None
    assert "100 bits per image at every split point" in rec["note"]
    assert "bits_per_image/bandwidth" in rec["formula"]
    # the ratio form still gives 32 * elements / ratio bits
    r = _tiny_profile(budget=Budget(ratio=16))
    assert [p["payload_bits"] for p in r["split_points"]] == [round(2 * p["elements"]) for p in r["split_points"]]
    assert r["recommendation"]["payload"] == {"ratio": 16}


def test_bits_per_image_above_the_feature_is_noted():
    d = _tiny_profile(budget=Budget(ratio=None, bits_per_image=1e9))
    note = next(n for n in d["notes"] if "exceed the float32 feature" in n)
    assert all(p["name"] in note for p in d["split_points"])  # 1e9 bits: more than every float32 feature here


def test_budget_takes_ratio_or_bits_not_both():
    from bnpp_cli.errors import BnppError

    with pytest.raises(BnppError, match=r"both of ratio=64.0 and bits_per_image=80"):
        Budget(ratio=64.0, bits_per_image=80).validate()
    with pytest.raises(BnppError, match="neither"):
        Budget(ratio=None).validate()
    with pytest.raises(BnppError, match="bits_per_image=-5"):
        Budget(ratio=None, bits_per_image=-5).validate()


def test_cli_profile_bits_per_image(tmp_path):
    import json

    from typer.testing import CliRunner

    from bnpp_cli.cli import app

    runner = CliRunner()
    base = ["profile", "test_resnet", "--img-size", "64", "--repeats", "1", "--samples", "2"]
    out = tmp_path / "p.json"
    r = runner.invoke(app, base + ["--bits-per-image", "75", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["recommendation"]["budget"]["bits_per_image"] == 75
    assert {p["payload_bits"] for p in d["split_points"]} == {75}
    assert "payload 75 bits per image at every point" in r.output
    assert "ASSUMED 75 bits per image at every point" in r.output
    r = runner.invoke(app, base + ["--ratio", "16", "--bits-per-image", "75", "--json", str(tmp_path / "no.json")])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and not (tmp_path / "no.json").exists()
    assert "give --ratio (16) or --bits-per-image (75), not both" in r.output
    r = runner.invoke(app, base)  # neither: the 64x default
    assert r.exit_code == 0 and "codec ratio 64x" in r.output
