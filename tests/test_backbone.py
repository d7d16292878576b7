"""Model loading: checkpoints (safetensors, weights-only .pth, nesting, prefixes) and clear errors."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from bnpp_cli.split.backbone import BackboneConfig, load_backbone
from bnpp_cli.errors import ModelError


def _reference(num_classes=7):
    torch.manual_seed(3)
    return timm.create_model("test_resnet", pretrained=False, num_classes=num_classes).eval()


@pytest.mark.parametrize("fmt", ["safetensors", "pth-nested-module", "pt-model-key"])
def test_checkpoint_formats_load_exactly(tmp_path, fmt):
    ref = _reference()
    state = ref.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "pth-nested-module":
        path = tmp_path / "w.pth"
        torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, path)
    else:
        path = tmp_path / "w.pt"
        torch.save({"model": state}, path)
    bb = load_backbone(BackboneConfig("test_resnet", checkpoint=str(path), num_classes=7, img_size=64))
    assert bb.weights == str(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(bb.model(x), ref(x))
    assert bb.input_size == (3, 64, 64)


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(ModelError, match="holds pickled Python objects besides tensors .*never unpickles"):
        load_backbone(BackboneConfig("test_resnet", checkpoint=str(path)))


def test_mismatched_classifier_hints_num_classes(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in _reference(num_classes=10).state_dict().items()}, str(path))
    with pytest.raises(ModelError) as e:
        load_backbone(BackboneConfig("test_resnet", checkpoint=str(path)))
    assert "does not match the model" in str(e.value) and "`num_classes` 10" in e.value.hint


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown timm model 'resnet5O'") as e:
        load_backbone(BackboneConfig("resnet5O"))
    assert "resnet50" in e.value.hint
    with pytest.raises(ModelError, match="does not exist"):
        load_backbone(BackboneConfig("test_resnet", checkpoint=str(tmp_path / "missing.safetensors")))
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelError, match="cannot be read"):
        load_backbone(BackboneConfig("test_resnet", checkpoint=str(bad)))
    with pytest.raises(ModelError, match="`img_size` 0"):
        load_backbone(BackboneConfig("test_resnet", img_size=0))
    txt = tmp_path / "w.txt"
    txt.write_text("weights")
    with pytest.raises(ModelError, match="unsupported suffix '.txt'"):
        load_backbone(BackboneConfig("test_resnet", checkpoint=str(txt)))


def test_img_size_reaches_vits_and_the_data_config():
    bb = load_backbone(BackboneConfig("test_vit", img_size=64))
    assert bb.input_size == (3, 64, 64)
    assert bb.create_kwargs["img_size"] == 64  # ViTs take it as a constructor argument
    cnn = load_backbone(BackboneConfig("test_resnet", img_size=48))
    assert cnn.input_size == (3, 48, 48) and "img_size" not in cnn.create_kwargs


def test_model_kwargs_parse_like_timm_train_and_reach_the_model():
    from bnpp_cli.split.backbone import parse_model_kwargs

    assert parse_model_kwargs(["patch_size=4", "depth=6", "drop_rate=0.1", "class_token=false", "act=gelu"]) == {
        "patch_size": 4, "depth": 6, "drop_rate": 0.1, "class_token": False, "act": "gelu"}
    with pytest.raises(ModelError, match="'depth' is not key=value"):
        parse_model_kwargs(["depth"])
    bb = load_backbone(BackboneConfig("test_vit", img_size=32, model_kwargs=parse_model_kwargs(["patch_size=4"])))
    assert bb.create_kwargs["patch_size"] == 4 and tuple(bb.model.patch_embed.grid_size) == (8, 8)


def test_mean_and_std_override_timms_data_config_and_are_checked():
    bb = load_backbone(BackboneConfig("test_vit", img_size=32, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]))
    assert bb.data_config["mean"] == [0.485, 0.456, 0.406] and bb.data_config["std"] == [0.229, 0.224, 0.225]
    assert load_backbone(BackboneConfig("test_vit", img_size=32)).data_config["mean"] == [0.5, 0.5, 0.5]
    with pytest.raises(ModelError, match="`std` 0.2,0,0.2 is not valid: give 3 numbers"):
        load_backbone(BackboneConfig("test_vit", img_size=32, std=[0.2, 0.0, 0.2]))
    with pytest.raises(ModelError, match="`mean` 0.5,0.5 is not valid"):
        load_backbone(BackboneConfig("test_vit", img_size=32, mean=[0.5, 0.5]))
