"""A fit that did not learn says so: in its summary and in metrics.json (validation.learned)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bnpp_cli.cli import app
from bnpp_cli.run.checks import learned_check


def test_learned_check_flags_chance_and_a_lost_margin():
    ok = learned_check(0.85, 0.87, 10)
    assert ok["learned"] and ok["reason"] is None and ok["chance"] == pytest.approx(0.1)
    chance = learned_check(0.0992, 0.94, 10)  # the finding: a 1-epoch fit at chance, the backbone at 94 %
    assert not chance["learned"] and "near chance" in chance["reason"]
    far = learned_check(0.40, 0.94, 10)  # lost 54 of the uncut model's 84 points above chance
    assert not far["learned"] and "far below" in far["reason"]
    assert learned_check(0.60, 0.94, 10)["learned"]  # lost 34 of 84: a poor codec, but it learned
    assert learned_check(0.1, 0.1, 10)["learned"]  # an untrained backbone is at chance too: nothing to judge


@pytest.mark.slow
def test_a_fit_too_short_to_learn_warns(tmp_path, cifar10_dir, resnet18_cifar10):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, [
        "fit", "resnet18", "--checkpoint", str(resnet18_cifar10), "--num-classes", "10", "--img-size", "32",
        "--split", "layer3", "--ratio", "64", "--data", str(cifar10_dir / "train.npz"), "--out", str(out),
        "--limit", "1000", "--codec-epochs", "1", "--no-augment"])
    assert r.exit_code == 0, r.output
    learned = json.loads((out / "metrics.json").read_text())["validation"]["learned"]
    assert not learned["learned"] and learned["uncut_top1"] > 0.8, learned
    assert "Warning: the codec did not learn" in " ".join(r.output.split())


# ---- the inputs' normalisation: taken from the checkpoint, stated, and a wrong one flagged ----------
def _checkpoint_with_metadata(path, **metadata):
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("test_resnet", num_classes=10, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    return path


def test_a_checkpoints_recorded_normalisation_is_used_and_a_given_one_wins(tmp_path):
    from bnpp_cli.split.backbone import BackboneConfig, load_backbone

    ckpt = _checkpoint_with_metadata(tmp_path / "m.safetensors", mean="0.485,0.456,0.406",
                                     std="[0.229, 0.224, 0.225]", top1="61.89")
    dc = load_backbone(BackboneConfig("test_resnet", num_classes=10, img_size=32, checkpoint=str(ckpt))).data_config
    assert dc["mean"] == [0.485, 0.456, 0.406] and dc["std"] == [0.229, 0.224, 0.225]
    assert dc["normalisation"] == "the checkpoint's metadata (mean and std)" and dc["recorded_top1"] == pytest.approx(0.6189)
    given = load_backbone(BackboneConfig("test_resnet", num_classes=10, img_size=32, checkpoint=str(ckpt),
                                         mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])).data_config
    assert given["mean"] == [0.5, 0.5, 0.5] and given["normalisation"] == "given (`mean`, `std`)"
    plain = load_backbone(BackboneConfig("test_resnet", num_classes=10, img_size=32)).data_config
    assert plain["normalisation"] == "timm's data config for test_resnet" and "recorded_top1" not in plain
    bad = _checkpoint_with_metadata(tmp_path / "bad.safetensors", mean="a,b", std="0,0,0")  # unusable: timm's
    assert load_backbone(BackboneConfig("test_resnet", num_classes=10, img_size=32,
                                        checkpoint=str(bad))).data_config["normalisation"].startswith("timm's")


def test_input_checks_flag_a_cut_model_above_the_uncut_one_and_a_backbone_below_its_record():
    from bnpp_cli.run.checks import input_checks

    # the finding: the shared ViT fed timm's 0.5 normalisation, uncut 31.03 %, cut 49.56 %, record 61.89 %
    found = input_checks(0.4956, 0.3103, 2500, 10, recorded_top1=0.6189, normalisation="timm's data config")
    assert len(found) == 2 and "beats the uncut one" in found[0] and "far below the 61.89%" in found[1]
    assert "`mean`, `std` (now from timm's data config)" in found[0]
    assert input_checks(0.8650, 0.8669, 10000, 10, recorded_top1=0.8669) == []  # a good fit
    assert input_checks(0.30, 0.29, 200, 10) == []  # 1 point over on 200 images is noise
    assert input_checks(0.55, 0.56, 10000, 10, recorded_top1=0.6189) == []  # another test set, a few points off


def test_eval_states_the_normalisation_and_flags_a_backbone_far_below_its_record(tmp_path):
    from bnpp_cli.run.evaluate import EvalConfig, evaluate_run
    from .helpers import tiny_npz, tiny_run

    ckpt = _checkpoint_with_metadata(tmp_path / "m.safetensors", mean="0.4,0.4,0.4", std="0.2,0.2,0.2", top1="0.99")
    fit, data = tiny_run(tmp_path, backbone_checkpoint=str(ckpt))  # random weights: ~chance, far below 99 %
    assert fit.config.data_config["normalisation"] == "the checkpoint's metadata (mean and std)"
    assert any("far below the 99.00%" in w for w in fit.validation["input_checks"])
    test = tiny_npz(tmp_path / "test.npz", n=32, seed=3)
    result = evaluate_run(EvalConfig(fit.run, str(test), conditions=[20.0], draws=1))
    assert result.normalisation == {"mean": [0.4] * 3, "std": [0.2] * 3,
                                    "source": "the checkpoint's metadata (mean and std)"}
    assert any("far below the 99.00% its checkpoint records" in w for w in result.warnings), result.warnings
    r = CliRunner().invoke(app, ["eval", fit.run, "--data", str(test), "--snr", "20", "--draws", "1"])
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "Inputs normalised with mean 0.4,0.4,0.4, std 0.2,0.2,0.2 (the checkpoint's" in text
    assert "Warning: the uncut model scores" in text and "(--mean, --std" in text, text


def test_eval_repeats_that_the_fit_did_not_learn(tmp_path, fitted):
    import shutil

    from bnpp_cli.run.evaluate import EvalConfig, evaluate_run

    run = tmp_path / "run"
    shutil.copytree(fitted().run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["validation"]["learned"] = {"learned": False, "reason": "the cut model's validation top-1 9.92% is near "
                                        "chance (10.00%); the uncut model scores 94.32% on the same images"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    result = evaluate_run(EvalConfig(str(run), str(fitted().data), conditions=[20.0], draws=1))
    assert result.warnings[0].startswith("the codec did not learn at the fit: the cut model's validation top-1 9.92%")
