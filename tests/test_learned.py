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
