"""Split points: exactness of tail(head(x)) == model(x), disjoint halves, naming, errors."""

from __future__ import annotations

import pytest
import timm
import torch

from bnpp_cli.errors import ModelError, SplitError
from bnpp_cli.split.graph import split_model, trace_model

TINY = ["test_resnet", "test_efficientnet", "test_convnext", "test_vit", "test_byobnet"]
FULL = ["resnet18", "resnet50", "efficientnet_b0", "mobilenetv3_large_100", "convnext_tiny", "regnetx_002",
        "densenet121", "vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"]


def _check_every_point(name: str, size: int, all_points: bool) -> int:
    model = timm.create_model(name, pretrained=False).eval()
    traced = trace_model(model, (3, size, size), name)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x)
    points = traced.list_points(all_points)
    assert points, name
    for p in points:
        head, tail = split_model(traced, p)
        with torch.no_grad():
            f = head(x)
            out = tail(f)
        assert tuple(f.shape[1:]) == p.shape, (name, p.name)
        assert torch.equal(out, ref), f"{name} @ {p.name}: max diff {(out - ref).abs().max()}"
        head_ids = {t.data_ptr() for t in head.parameters()}
        tail_ids = {t.data_ptr() for t in tail.parameters()}
        assert not head_ids & tail_ids, f"{name} @ {p.name}: halves share parameters"
        n_head = sum(t.numel() for t in head.parameters())
        n_tail = sum(t.numel() for t in tail.parameters())
        assert n_head + n_tail == sum(t.numel() for t in model.parameters())
    return len(points)


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_split_exactly_at_every_point(name):
    assert _check_every_point(name, 64, all_points=True) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL)
def test_full_models_split_exactly_at_every_point(name):
    assert _check_every_point(name, 224, all_points=True) >= 5


def test_resnet_points_are_named_by_the_coarsest_module():
    model = timm.create_model("resnet18", pretrained=False).eval()
    traced = trace_model(model, (3, 64, 64), "resnet18")
    names = [p.name for p in traced.list_points()]
    assert names == ["conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4", "global_pool"]
    layer3 = traced.find("layer3")
    assert "layer3.1" in layer3.aliases and layer3.shape == (256, 4, 4)
    assert traced.find("layer3.1") is layer3  # aliases resolve to the same point
    # inside a residual block nothing is valid: the skip connection crosses too
    assert not any(p.name.startswith("layer3.0.") for p in traced.list_points(all_points=True))


def test_vit_blocks_are_valid_points():
    model = timm.create_model("test_vit", pretrained=False).eval()
    traced = trace_model(model, (3, 160, 160), "test_vit")
    names = {p.name for p in traced.list_points()} | {a for p in traced.list_points() for a in p.aliases}
    assert {"blocks.0", "blocks.1"} <= names
    # attn_mask=None is a constant, not a crossing tensor: the traced graph has one input
    assert sum(n.op == "placeholder" for n in traced.graph_module.graph.nodes) == 1


def test_unknown_split_lists_valid_names():
    model = timm.create_model("test_resnet", pretrained=False).eval()
    traced = trace_model(model, (3, 64, 64), "test_resnet")
    with pytest.raises(SplitError) as e:
        traced.find("layer9")
    assert "'layer9'" in str(e.value)
    assert "layer" in e.value.hint


def test_untraceable_model_is_a_clear_error():
    class Dynamic(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow cannot be traced
                return x
            return -x

    with pytest.raises(ModelError, match="cannot be traced with torch.fx"):
        trace_model(Dynamic(), (3, 8, 8), "dynamic")
