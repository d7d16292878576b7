"""The CLI: exit codes, JSON output, one-line errors with no traceback, an instant --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typer.testing import CliRunner

from bnpp_cli.cli import app

runner = CliRunner()


def test_help_does_not_import_torch():
    code = "import sys, bnpp_cli.cli; assert 'torch' not in sys.modules and 'timm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_profile_json(tmp_path):
    out = tmp_path / "p.json"
    r = runner.invoke(app, ["profile", "test_resnet", "--img-size", "64", "--repeats", "1", "--samples", "2",
                            "--verify", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert d["model"] == "test_resnet" and d["input_size"] == [3, 64, 64]
    assert all(p["max_abs_diff"] == 0.0 for p in d["split_points"])
    assert "Recommended split" in r.output and "weights are random" in r.output


def _error(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    return r.output


def test_errors_are_one_line_without_traceback(tmp_path):
    out = _error(["profile", "resnet5O"])
    assert "Error: unknown timm model 'resnet5O'" in out and "resnet50" in out
    assert "Error: checkpoint" in _error(["profile", "test_resnet", "--checkpoint", str(tmp_path / "nope.pth")])
    assert "--img-size -3" in _error(["profile", "test_resnet", "--img-size", "-3"])
    assert "bandwidth_mbps=0.0" in _error(["profile", "test_resnet", "--bandwidth-mbps", "0"])
    assert "no such file or directory" in _error(["profile", "test_resnet", "--data", str(tmp_path / "missing.npz")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in _error(["profile", "test_resnet", "--data", str(empty)])


def test_pretrained_offline_is_a_clear_error():
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-m", "bnpp_cli", "profile", "test_resnet", "--pretrained"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "could not fetch pretrained weights for 'test_resnet'" in r.stderr
    assert "Traceback" not in r.stderr


def test_bsc_takes_flip_and_refuses_erasure_with_a_hint(tmp_path):
    base = ["fit", "test_resnet", "--split", "layer2", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "r")]
    out = _error(base + ["--channel", "bsc", "--erasure", "0.01"])
    assert "Error: --erasure does not apply to the channel 'bsc' (--erasure is for bec)" in out
    assert "Hint: use --flip" in out
    out = _error(base + ["--channel", "bec", "--flip", "0.01"])
    assert "Error: --flip does not apply to the channel 'bec' (--flip is for bsc)" in out and "Hint: use --erasure" in out
    assert "--flip '0.1:0.01': a range A:B goes from low to high" in _error(base + ["--channel", "bsc", "--flip",
                                                                                    "0.1:0.01"])
    assert "flip probability 0.9 is out of range for bsc" in _error(base + ["--channel", "bsc", "--flip", "0.9"])
    assert "give one condition, not --snr and --flip" in _error(base + ["--snr", "10", "--flip", "0.01"])
    assert not (tmp_path / "r").exists()


def test_library_errors_name_settings_and_the_cli_shows_flags():
    from bnpp_cli import BackboneConfig, load_backbone
    from bnpp_cli.cli.options import FLAGS, render
    from bnpp_cli.errors import ModelError

    try:
        load_backbone(BackboneConfig("test_resnet", img_size=-3))
    except ModelError as e:
        assert str(e) == "`img_size` -3 is out of range" and render(str(e)) == "--img-size -3 is out of range"
    assert render("`top_k` 0 and `snr_db`, `flip`, `erasure`; `not_a_setting`") == \
        "--top 0 and --snr, --flip, --erasure; `not_a_setting`"
    assert all(flag.startswith("--") for flag in FLAGS.values())
