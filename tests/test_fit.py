"""`bnpp fit` / `bnpp eval`: run directories, resume, exact noiseless path, contracts, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from bnpp_cli.cli import app
from bnpp_cli.run.evaluate import EvalConfig, evaluate_run
from bnpp_cli.run.pipeline import load_run

from .helpers import tiny_npz, tiny_run

runner = CliRunner()


def test_fit_writes_a_complete_run_and_eval_reports_the_contract(fitted):
    run, data, result = fitted(epochs=2)
    assert sorted(p.name for p in run.iterdir()) == ["backbone.safetensors", "codec.safetensors", "config.json",
                                                      "metrics.json"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "done" and [e["epoch"] for e in metrics["epochs"]] == [0, 1]
    # validation top-1 is a count of hits over the 5 held-out images (10 % of 48)
    assert all(round(5 * e["val_top1_noiseless"], 9) == int(round(5 * e["val_top1_noiseless"]))
               for e in metrics["epochs"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["split"] == "layer2" and cfg["feature_shape"] == [48, 4, 4] and cfg["classes"][0] == "class0"

    ev = evaluate_run(EvalConfig(run=str(run), data=str(data), conditions=[5, 20], draws=3)).to_dict()
    for key in ("run", "model", "split", "channel", "feature_shape", "code_shape", "bandwidth_ratio", "bit_ratio",
                "backbone_top1", "noiseless_top1", "results"):
        assert key in ev
    assert ev["code_shape"] == [12, 4, 4] and ev["bandwidth_ratio"] == 4.0 and ev["bit_ratio"] is None
    assert [r["condition"] for r in ev["results"]] == [{"snr_db": 5.0}, {"snr_db": 20.0}]
    assert all(r["draws"] == 3 and len(r["top1"]) == 3 for r in ev["results"])
    assert all(r["top1_mean"] == pytest.approx(sum(r["top1"]) / 3) for r in ev["results"])
    assert all(round(48 * a, 9) == int(round(48 * a)) for r in ev["results"] for a in r["top1"])  # hits / 48
    # the backbone figure is the uncut model's own accuracy
    loaded = load_run(run)
    from bnpp_cli.data.batching import BatchTransform
    from bnpp_cli.data.datasets import load_dataset

    ds = load_dataset(str(data), input_size=(32, 32), train=False)
    x, y = ds.tensors()
    dc = loaded.config.data_config
    with torch.no_grad():
        logits = loaded.model(BatchTransform(dc["mean"], dc["std"], augment=False)(x))
    assert ev["backbone_top1"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    # eval is reproducible: the same seed gives the same noise
    again = evaluate_run(EvalConfig(run=str(run), data=str(data), conditions=[5, 20], draws=3)).to_dict()
    assert again["results"] == ev["results"]


def test_digital_run_reports_bit_ratio(fitted):
    run_dir, data, _ = fitted(channel="bec", condition=0.01, ratio=16)
    ev = evaluate_run(EvalConfig(run=str(run_dir), data=str(data), conditions=[0.0, 0.05], draws=2))
    assert ev.bandwidth_ratio == 16 and ev.bit_ratio == 64 and ev.bits == 8
    assert ev.payload_bytes == ev.code_symbols  # 8 bits per symbol
    assert ev.results[0]["draws"] == 1 and ev.results[0]["top1_mean"] == ev.noiseless_top1


def test_frozen_backbone_is_untouched_by_codec_phase(tmp_path):
    import timm
    from safetensors.torch import save_file

    from bnpp_cli.split.checkpoint import read_state_dict

    torch.manual_seed(5)
    ref = timm.create_model("test_resnet", num_classes=10).state_dict()
    ckpt = tmp_path / "backbone_in.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(ckpt))
    result, data = tiny_run(tmp_path, epochs=2, backbone_checkpoint=str(ckpt))
    saved = read_state_dict(tmp_path / "run" / "backbone.safetensors")
    # weights AND BatchNorm running statistics are exactly as given: frozen means eval-mode BN
    assert set(saved) == set(ref) and all(torch.equal(saved[k], ref[k]) for k in ref)
    # and the finished run cannot be resumed: there is nothing left to do
    from bnpp_cli.errors import RunError
    from bnpp_cli.run.fit import fit_codec

    cfg = result.config.fit
    with pytest.raises(RunError, match="its fit finished, there is no checkpoint to go on from"):
        from bnpp_cli.split.backbone import BackboneConfig
        from bnpp_cli.link.config import ChannelConfig
        from bnpp_cli.run.fit import FitConfig

        fit_codec(FitConfig(backbone=cfg.backbone, split="layer2", data=str(data),
                            out=str(tmp_path / "run"), channel=ChannelConfig("awgn", 20.0), ratio=4.0,
                            codec_epochs=2, batch_size=16, resume=True))


def test_interrupted_run_resumes_without_losing_epochs(tmp_path):
    from bnpp_cli.split.backbone import BackboneConfig
    from bnpp_cli.link.config import ChannelConfig
    from bnpp_cli.run.fit import FitConfig, fit_codec

    data = tiny_npz(tmp_path / "train.npz")
    out = tmp_path / "run"

    def config(resume=False):
        return FitConfig(backbone=BackboneConfig("test_resnet", num_classes=10, img_size=32), split="layer2",
                         data=str(data), out=str(out), channel=ChannelConfig("awgn", 20.0), ratio=4.0,
                         codec_epochs=3, batch_size=16, lr=1e-3, resume=resume)

    class Kill(Exception):
        pass

    def kill_after_second_epoch(event, info):
        if event == "epoch" and info["epoch"] == 1:
            raise Kill

    with pytest.raises(Kill):
        fit_codec(config(), callback=kill_after_second_epoch)
    assert (out / "checkpoint" / "state.pt").is_file() and not (out / "codec.safetensors").exists()
    assert json.loads((out / "metrics.json").read_text())["status"] == "running"
    other = config(resume=True)
    other.encoder_blocks = 0  # another codec than the checkpoint's: refused, nothing touched
    from bnpp_cli.errors import RunError

    with pytest.raises(RunError, match="its codec has encoder_blocks 1, these options give 0"):
        fit_codec(other)
    events = []
    result = fit_codec(config(resume=True), callback=lambda e, i: events.append((e, i.get("epoch"))))
    assert [e["epoch"] for e in result.epochs] == [0, 1, 2]
    assert [i for e, i in events if e == "epoch"] == [2]  # only the missing epoch ran
    # an uninterrupted run with the same seed ends with the same codec weights
    uninterrupted = tmp_path / "ref"
    cfg = config()
    cfg.out = str(uninterrupted)
    fit_codec(cfg)
    from bnpp_cli.split.checkpoint import read_state_dict

    a, b = read_state_dict(out / "codec.safetensors"), read_state_dict(uninterrupted / "codec.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_noiseless_pipeline_equals_codec_then_tail(fitted):
    run = load_run(fitted().run)
    x = torch.randn(4, 3, 32, 32)
    p = run.pipeline
    with torch.no_grad():
        a = p(x, 0.0)
        b = p.tail(p.codec.decoder(p.codec.encoder(p.head(x), 0.0), 0.0))
    assert torch.equal(a, b)


def _cli_error(args, *needles):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for n in needles:
        assert n in r.output, r.output
    return r.output


def test_cosine_schedule_decays_to_zero_and_presets_pick_their_recipe(tmp_path):
    from bnpp_cli.run.fit import FitConfig, resolve_recipe
    from bnpp_cli.run.loop import scheduled_lr

    assert scheduled_lr(1e-3, "cosine", 0, 100) == 1e-3
    assert scheduled_lr(1e-3, "cosine", 50, 100) == pytest.approx(5e-4, rel=1e-12)
    assert scheduled_lr(1e-3, "cosine", 100, 100) == pytest.approx(0.0, abs=1e-18)
    assert scheduled_lr(1e-3, "constant", 77, 100) == 1e-3
    lrs = [scheduled_lr(1.0, "cosine", i, 10) for i in range(11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # strictly decreasing
    from bnpp_cli.split.backbone import BackboneConfig

    bb = BackboneConfig("test_resnet")
    best = resolve_recipe(FitConfig(backbone=bb, split="layer2", data="d", out="o"))
    paper = resolve_recipe(FitConfig(backbone=bb, split="layer2", data="d", out="o", preset="bottlenetpp"))
    assert (best.lr, best.batch_size, best.distill, best.lr_schedule) == (1e-3, 64, 1.0, "cosine")
    assert best.distill_temperature == 4.0
    assert (paper.lr, paper.batch_size, paper.distill, paper.lr_schedule) == (1e-4, 32, 0.0, "constant")
    mine = resolve_recipe(FitConfig(backbone=bb, split="layer2", data="d", out="o", lr_schedule="constant", lr=0.1))
    assert (mine.lr, mine.lr_schedule, mine.batch_size) == (0.1, "constant", 64)  # explicit values win


def test_distillation_loss_is_scaled_kl_and_zero_for_equal_logits():
    from bnpp_cli.run.loop import distillation_loss

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    assert distillation_loss(t, t, 4.0).abs() < 1e-6
    p, q = torch.softmax(t / 4, 1), torch.softmax(s / 4, 1)
    expected = 16 * (p * (p.log() - q.log())).sum(1).mean()
    assert torch.allclose(distillation_loss(s, t, 4.0), expected, rtol=1e-5)


def test_fit_bad_input_is_one_line_and_writes_nothing(tmp_path):
    data = tiny_npz(tmp_path / "d.npz")
    base = ["fit", "test_resnet", "--img-size", "32", "--num-classes", "10", "--data", str(data), "--codec-epochs", "1"]
    out = tmp_path / "runs" / "x"
    _cli_error(base + ["--split", "layer2", "--channel", "wifi", "--out", str(out)], "wifi", "awgn", "bec")
    _cli_error(base + ["--split", "layer2", "--snr", "99", "--out", str(out)], "99")
    _cli_error(base + ["--split", "layer2", "--channel", "bec", "--erasure", "0.9", "--out", str(out)], "0.9")
    _cli_error(base + ["--split", "layer2", "--channel", "bec", "--snr", "10", "--out", str(out)], "--erasure")
    _cli_error(base + ["--split", "layer9", "--out", str(out)], "'layer9'", "layer2")
    vit = ["fit", "test_vit_relpos", "--img-size", "32", "--num-classes", "10", "--data", str(data), "--codec-epochs", "1"]
    _cli_error(vit + ["--split", "flatten", "--out", str(out)], "flatten", "96 x 4", "will not guess")  # layout unknown
    _cli_error(base + ["--split", "layer4", "--ratio", "1000", "--out", str(out)], "ratio", "1000")
    _cli_error(base + ["--split", "layer2", "--lr-schedule", "step", "--out", str(out)], "'step'", "cosine", "constant")
    _cli_error(base + ["--split", "layer2", "--distill-temperature", "0", "--out", str(out)], "--distill-temperature 0")
    wrong = tiny_npz(tmp_path / "wrong.npz", classes=10)
    _cli_error(["fit", "test_resnet", "--img-size", "32", "--num-classes", "5", "--data", str(wrong), "--split",
                "layer2", "--out", str(out)], "num-classes")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    _cli_error(base[:-4] + ["--data", str(empty), "--split", "layer2", "--out", str(out)], str(empty))
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_eval_bad_input(tmp_path, fitted):
    _cli_error(["eval", str(tmp_path), "--data", "x.npz"], "not a bnpp run directory")
    run_dir, data, _ = fitted()
    run = str(run_dir)
    _cli_error(["eval", run, "--data", str(data), "--erasure", "0.1"], "--snr")
    _cli_error(["eval", run, "--data", str(data), "--snr", "ten"], "ten")
    _cli_error(["eval", run, "--data", str(data), "--snr", "100"], "100")
    r = runner.invoke(app, ["eval", run, "--data", str(data), "--snr", "10,20", "--draws", "2", "--json",
                            str(tmp_path / "e.json"), "--plot", str(tmp_path / "e.png")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e.json").read_text())["results"][1]["condition"] == {"snr_db": 20.0}
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_torchrun_two_processes_make_the_same_kind_of_run(tmp_path):
    data = tiny_npz(tmp_path / "d.npz", n=64)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "bnpp_cli", "fit", "test_resnet", "--img-size", "32", "--num-classes", "10", "--split", "layer2",
           "--ratio", "4", "--data", str(data), "--out", str(out), "--codec-epochs", "2", "--batch-size", "8"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["backbone.safetensors", "codec.safetensors", "config.json",
                                                      "metrics.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "done" and len(metrics["epochs"]) == 2
    # each process saw half of the data: the epoch counts all images once
    assert metrics["epochs"][0]["images"] == 2 * (int(64 * 0.9) // 2 // 8) * 8
    run = load_run(out)  # and it loads, with a codec of the asked shape
    assert run.codec_config.code_shape == (12, 4, 4) and run.codec_config.bandwidth_ratio == 4.0


def test_joint_phase_keeps_the_brought_backbone_for_reference(tmp_path):
    import timm
    from safetensors.torch import save_file

    from bnpp_cli.split.checkpoint import read_state_dict

    torch.manual_seed(5)
    ref = timm.create_model("test_resnet", num_classes=10).state_dict()
    ckpt = tmp_path / "in.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, str(ckpt))
    _, data = tiny_run(tmp_path, epochs=1, backbone_checkpoint=str(ckpt), joint_epochs=1, joint_lr=1e-2)
    run_dir = tmp_path / "run"
    brought = read_state_dict(run_dir / "backbone.safetensors")
    tuned = read_state_dict(run_dir / "finetuned.safetensors")
    assert all(torch.equal(brought[k], ref[k]) for k in ref)
    assert any(not torch.equal(tuned[k], ref[k]) for k in ref)  # joint really fine-tuned the backbone
    run = load_run(run_dir)
    assert run.finetuned and torch.equal(run.model.state_dict()["fc.weight"], tuned["fc.weight"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [e["phase"] for e in metrics["epochs"]] == ["codec", "joint"]
    # eval's backbone figure is the model as brought, not the fine-tuned one
    ev = evaluate_run(EvalConfig(run=str(run_dir), data=str(data), conditions=[20], draws=1), run=run)
    from bnpp_cli.data.batching import BatchTransform
    from bnpp_cli.data.datasets import load_dataset

    x, y = load_dataset(str(data), input_size=(32, 32), train=False).tensors()
    dc = run.config.data_config
    with torch.no_grad():
        logits = run.source_model()(BatchTransform(dc["mean"], dc["std"], augment=False)(x))
    assert ev.backbone_top1 * len(y) == pytest.approx(int((logits.argmax(1) == y).sum()))
