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
