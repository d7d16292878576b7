"""Fit durability: checkpoints within an epoch, resume after SIGKILL or Ctrl-C to the same weights,
--overwrite, and the fit's plain progress lines in a log."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bnpp_cli.cli import app
from bnpp_cli.errors import DataError, RunError
from bnpp_cli.link.config import ChannelConfig
from bnpp_cli.run.fit import FitConfig, fit_codec
from bnpp_cli.split.backbone import BackboneConfig
from bnpp_cli.split.checkpoint import read_state_dict

from .conftest import REPO
from .helpers import tiny_npz

runner = CliRunner()
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))


@contextmanager
def _one_thread():
    """The killed fit ran in a one-thread child: the same arithmetic here gives bitwise-equal weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _config(data: Path, out: Path, **kw) -> FitConfig:
    base = dict(backbone=BackboneConfig("test_resnet", num_classes=10, img_size=32), split="layer2", data=str(data),
                out=str(out), channel=ChannelConfig("awgn", 20.0), ratio=4.0, codec_epochs=2, batch_size=8, lr=1e-3)
    return FitConfig(**{**base, **kw})


_CHILD = """
import sys, time, torch
torch.set_num_threads(1)
from pathlib import Path
from tests.test_durability import _config
from bnpp_cli.run.fit import fit_codec
def slow(event, info):
    if event == "batch":
        print("batch", info["epoch"], info["step"], flush=True)
        time.sleep(0.4)  # room for the parent to kill us mid-epoch
fit_codec(_config(Path(sys.argv[1]), Path(sys.argv[2]), checkpoint_steps=1), callback=slow)
"""


@pytest.mark.slow
def test_fit_killed_with_sigkill_mid_epoch_resumes_to_the_same_weights(tmp_path):
    data = tiny_npz(tmp_path / "train.npz")  # 43 training images: 5 batches of 8 per epoch
    out, ref = tmp_path / "run", tmp_path / "ref"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(data), str(out)], cwd=REPO, env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        for line in child.stdout:  # "batch EPOCH STEP"
            if line.split()[1:] == ["0", "3"] or time.monotonic() > deadline:
                break
        child.send_signal(signal.SIGKILL)  # during epoch 0: batches 1-2 checkpointed, 3 may be mid-write
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 0 and state["position"]["batch"] in (2, 3)  # mid-epoch 0 of 2
    assert not (out / "codec.safetensors").exists()
    with _one_thread():
        resumed = fit_codec(_config(data, out, resume=True))
        uninterrupted = fit_codec(_config(data, ref))
    a, b = read_state_dict(out / "codec.safetensors"), read_state_dict(ref / "codec.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # the epoch records too: the running sums of the killed epoch were part of the checkpoint
    strip = lambda e: {k: v for k, v in e.items() if k != "seconds"}
    assert [strip(e) for e in resumed.epochs] == [strip(e) for e in uninterrupted.epochs]
    assert [e["images"] for e in resumed.epochs] == [40, 40]


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_resume_ends_as_an_uninterrupted_run(tmp_path):
    data = tiny_npz(tmp_path / "train.npz", n=640)  # 576 training images: 144 batches of 4
    out, ref = tmp_path / "run", tmp_path / "ref"
    args = ["fit", "test_resnet", "--img-size", "32", "--num-classes", "10", "--split", "layer2", "--ratio", "4",
            "--data", str(data), "--codec-epochs", "1", "--batch-size", "4", "--checkpoint-minutes", "0"]
    child = subprocess.Popen([sys.executable, "-m", "bnpp_cli", *args, "--out", str(out), "--log-interval", "10"],
                             cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        for line in child.stderr:  # stderr is a pipe: plain progress lines, one per 10 batches
            lines.append(line)
            if line.startswith("codec epoch 1: batch 20/144") or time.monotonic() > deadline:
                break
        child.send_signal(signal.SIGINT)
        rest = child.communicate(timeout=60)[1]
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, "".join(lines) + rest
    assert lines[0].startswith("codec epoch 1: batch 10/144, 40 images, loss ") and "img/s, ETA " in lines[0]
    stopped = [ln for ln in rest.splitlines() if ln.startswith("Stopped after batch")]
    assert len(stopped) == 1 and "checkpoint saved in" in stopped[0] and "--resume" in stopped[0], rest
    batch = int(stopped[0].split()[3])
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state["position"]["batch"] == batch and 20 <= batch < 144
    with _one_thread():
        r = runner.invoke(app, args + ["--out", str(out), "--resume"])
        assert r.exit_code == 0, r.output
        assert runner.invoke(app, args + ["--out", str(ref)]).exit_code == 0
    a, b = read_state_dict(out / "codec.safetensors"), read_state_dict(ref / "codec.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (out, ref))
    assert ma["epochs"][0]["train_loss"] == mb["epochs"][0]["train_loss"]


def test_an_interrupted_run_can_be_restarted_with_overwrite_and_nothing_else_is_deleted(tmp_path):
    data = tiny_npz(tmp_path / "train.npz")
    out = tmp_path / "run"

    class Kill(Exception):
        pass

    def die(event, info):
        if event == "epoch_start":
            raise Kill  # before the first batch: the run has its config, no checkpoint

    with pytest.raises(Kill):
        fit_codec(_config(data, out), callback=die)
    assert (out / "config.json").is_file() and not (out / "checkpoint").exists()
    with pytest.raises(RunError, match="stopped before its first checkpoint") as e:
        fit_codec(_config(data, out, resume=True))
    assert "--overwrite" in e.value.hint
    with pytest.raises(RunError, match="already exists and is not empty") as e:
        fit_codec(_config(data, out))
    assert "--overwrite" in e.value.hint
    with pytest.raises(RunError, match="not both"):
        fit_codec(_config(data, out, resume=True, overwrite=True))
    result = fit_codec(_config(data, out, overwrite=True, codec_epochs=1))
    assert [e["epoch"] for e in result.epochs] == [0] and (out / "codec.safetensors").is_file()
    # a directory with anything a run does not write is never deleted
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RunError, match="notes.txt") as e:
        fit_codec(_config(data, mine, overwrite=True))
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_fewer_images_than_a_batch_fails_before_anything_is_written(tmp_path):
    data = tiny_npz(tmp_path / "train.npz", n=48)  # 43 after the validation share
    out = tmp_path / "run"
    r = runner.invoke(app, ["fit", "test_resnet", "--img-size", "32", "--num-classes", "10", "--split", "layer2",
                            "--ratio", "4", "--data", str(data), "--batch-size", "64", "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "43 training images give no full batch of 64: nothing would train" in r.output
    assert "--batch-size 43" in r.output and not out.exists()
    with pytest.raises(DataError, match="10 training images give no full batch of 16"):
        fit_codec(_config(data, out, batch_size=16, limit=10))
    assert not out.exists()


def test_a_missing_data_file_fails_before_the_model_is_built(tmp_path, monkeypatch):
    import bnpp_cli.run.fit as fit_module

    def no_model(*a, **k):
        raise AssertionError("the model was built before the data path was checked")

    monkeypatch.setattr(fit_module, "load_backbone", no_model)
    with pytest.raises(DataError, match="--data .*missing.npz: no such file or directory"):
        fit_codec(_config(tmp_path / "missing.npz", tmp_path / "run"))
    with pytest.raises(DataError, match="--val-data .*nope: no such file or directory"):
        fit_codec(_config(Path("cifar10"), tmp_path / "run", val_data=str(tmp_path / "nope")))
    assert not (tmp_path / "run").exists()


def test_progress_in_a_log_is_one_plain_line_every_n_batches():
    from rich.console import Console

    from bnpp_cli.cli.fit import FitProgress

    buf = io.StringIO()
    progress = FitProgress(log_interval=2, log_seconds=1e9, console=Console(file=buf, width=300))
    assert progress.plain  # a StringIO is not a terminal
    progress("epoch_start", {"phase": "codec", "epoch": 0, "batches": 5, "start": 0})
    for step in range(1, 6):
        progress("batch", {"phase": "codec", "epoch": 0, "step": step, "batches": 5, "images": 8 * step,
                           "loss": 2.0 / step, "acc": 0.1 * step, "images_per_s": 4.0})
    progress("epoch", {"phase": "codec", "epoch": 0, "train_loss": 0.4, "train_top1": 0.5, "seconds": 0.5,
                       "val_top1_noiseless": 0.25, "val_top1_worst": 0.2, "val_worst_label": "PSNR 20 dB"})
    lines = buf.getvalue().splitlines()
    assert lines == [
        "codec epoch 1: batch 2/5, 16 images, loss 1.000 acc 20.0% 4 img/s, ETA 0m06s",
        "codec epoch 1: batch 4/5, 32 images, loss 0.500 acc 40.0% 4 img/s, ETA 0m02s",
        "codec epoch 1: batch 5/5, 40 images, loss 0.400 acc 50.0% 4 img/s, ETA 0m00s",
        "codec epoch 1: loss 0.4000, train top-1 50.00%, val top-1 25.00% noiseless, 20.00% at PSNR 20 dB (0 s)",
    ]
