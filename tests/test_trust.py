"""Numbers and runs a user can trust. Each test here failed before its fix: text lost to
Rich markup, tracebacks on unwritable outputs, 0600 files, NaN in answers, a plain HTTP request left
waiting, misleading figures (validation source, training range, units, latency spread), options
checked after a model was built, a wrong --num-classes hint, a reversed range taken silently."""

from __future__ import annotations

import json
import math
import os
import socket
import stat
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bnpp_cli.cli import app
from bnpp_cli.errors import BnppError, DataError, ModelError

from .helpers import tiny_npz, tiny_run

runner = CliRunner()


def _fails(args, *needles) -> str:
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    text = " ".join(r.output.split())
    for n in needles:
        assert n in text, r.output
    return text


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A fitted tiny run whose backbone came from a checkpoint (so it 'may have seen' --data)."""
    import timm
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(3)
    ckpt = root / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=10).state_dict().items()},
              str(ckpt))
    result, data = tiny_run(root, backbone_checkpoint=str(ckpt))
    return root / "run", data, result


# ---- text that Rich used to eat ----------------------------------------------------------------
def test_help_keeps_text_in_square_brackets():
    text = " ".join(runner.invoke(app, ["fit", "--help"]).output.split())
    assert "Adam learning rate, phase codec [preset's: bnpp 1e-3, bottlenetpp 1e-4]." in text
    assert "Mini-batch size per process [preset's: 64 / 32]." in text
    assert "[preset's: bnpp cosine, bottlenetpp constant]" in text


def test_missing_matplotlib_is_said_before_the_evaluation_with_its_bracketed_hint(tmp_path, monkeypatch):
    import bnpp_cli.run.evaluate as evaluate

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(evaluate, "evaluate_run", lambda *a, **k: pytest.fail("evaluated before the check"))
    text = _fails(["eval", str(tmp_path), "--data", "cifar10", "--plot", str(tmp_path / "p.png")],
                  "Error: --plot needs matplotlib, which is not installed", "Hint: pip install 'bnpp[plot]'")
    assert "'bnpp'" not in text


# ---- files -------------------------------------------------------------------------------------
def test_written_files_get_the_umask_mode_not_0600(tiny, tmp_path):
    from bnpp_cli.deploy.export import export_halves
    from bnpp_cli.files import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        export_halves(tiny[0], tmp_path / "deploy")
    finally:
        os.umask(old)
    for path in (tmp_path / "a.json", tmp_path / "deploy" / "device.safetensors", tmp_path / "deploy" / "edge.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    for path in tiny[0].iterdir():  # the fit's files too
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path


def test_an_output_path_that_cannot_be_written_is_one_line(tiny, tmp_path):
    from bnpp_cli.deploy.export import export_halves
    from bnpp_cli.files import write_bytes

    existing = tmp_path / "existing.txt"
    existing.write_text("keep")
    with pytest.raises(BnppError, match=f"'{existing}' is a file, not a directory"):
        export_halves(tiny[0], existing)
    assert existing.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["existing.txt"]
    with pytest.raises(BnppError, match="cannot write '/proc/dep/edge.bin': no such file or directory"):
        write_bytes("/proc/dep/edge.bin", b"x")
    with pytest.raises(BnppError, match="it is a directory"):
        write_bytes(tmp_path, b"x")
    # through the CLI: one error line, exit 2, before the evaluation runs (no table: no work was done)
    run, data, _ = tiny
    r = runner.invoke(app, ["eval", str(run), "--data", str(data), "--snr", "20", "--draws", "1",
                            "--json", str(existing / "eval.json")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "uncut backbone" not in r.output and "is a file, not a directory" in r.output


# ---- honest figures ----------------------------------------------------------------------------
def test_fit_says_where_its_validation_images_come_from_and_names_the_condition_unit(tiny):
    from bnpp_cli.cli.render import console, render_fit

    run, _, result = tiny
    validation = dict(result.validation)
    learned = validation.pop("learned")  # 5 images of a tiny backbone: 1 in 5 either way, nothing to flag
    assert learned["learned"] and learned["reason"] is None and learned["uncut_top1"] == learned["cut_top1"]
    assert validation.pop("input_checks") == []
    assert validation == {"source": "held out of --data", "images": 5, "backbone_may_have_seen": True}
    assert json.loads((run / "metrics.json").read_text())["validation"] == result.validation
    last = result.epochs[-1]
    assert last["val_worst_label"] == "PSNR 20 dB" and last["val_images"] == 5
    with console.capture() as out:
        render_fit(result)
    text = " ".join(out.get().split())
    assert "at the worst training condition (PSNR 20 dB)" in text
    assert "Validation images: 5 images, held out of --data. The backbone came with weights and may have been " \
           "trained on these images" in text


def test_eval_shows_the_training_range_and_marks_conditions_outside_it(tiny):
    from bnpp_cli.cli.render import console, render_eval
    from bnpp_cli.run.evaluate import EvalConfig, evaluate_run

    run, data, _ = tiny
    result = evaluate_run(EvalConfig(run=str(run), data=str(data), conditions=[5, 20, 30], draws=1))
    assert result.train_condition == "PSNR 20 dB to noiseless" and result.train_range == [20.0, None]
    json.dumps(result.to_dict(), allow_nan=False)  # strict JSON: no Infinity for "noiseless"
    with console.capture() as out:
        render_eval(result)
    rows = [line for line in out.get().splitlines() if "PSNR" in line and "│" in line]
    assert "Trained for: PSNR 20 dB to noiseless" in out.get()
    assert [("*" in row) for row in rows] == [True, False, False]  # 5 dB is outside [20 dB, noiseless]


def test_eval_checks_its_data_before_rebuilding_the_model(tiny, tmp_path, monkeypatch):
    import bnpp_cli.run.evaluate as evaluate

    monkeypatch.setattr(evaluate, "load_run", lambda *a: pytest.fail("the model was rebuilt before the data check"))
    with pytest.raises(DataError, match="no such file or directory"):
        evaluate.evaluate_run(evaluate.EvalConfig(run=str(tiny[0]), data=str(tmp_path / "missing.npz")))
    with pytest.raises(BnppError, match="SNR 99.0 dB is out of range"):
        evaluate.evaluate_run(evaluate.EvalConfig(run=str(tiny[0]), data=str(tiny[1]), conditions=[99.0]))


def test_profile_latencies_come_with_their_spread():
    from bnpp_cli.cli.render import console, render_profile
    from bnpp_cli.split.backbone import BackboneConfig
    from bnpp_cli.split.profile import ProfileConfig, profile_model

    p = profile_model(ProfileConfig(BackboneConfig("test_resnet", img_size=32), repeats=3, samples=2))
    assert p.latency_repeats == 3
    lo, hi = p.latency_range_ms
    assert lo <= p.latency_ms <= hi
    for row in p.split_points:
        assert len(row.latency_range_ms) == 2 and row.latency_range_ms[0] <= row.latency_ms <= row.latency_range_ms[1]
    with console.capture() as out:
        render_profile(p)
    assert "median of 3 runs after a warm-up" in out.get() and "head ms (min-max)" in out.get()


# ---- the edge server ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    from bnpp_cli.deploy.export import export_halves
    from bnpp_cli.deploy.server import ServeConfig, ServerThread

    deploy = tmp_path_factory.mktemp("deploy")
    export_halves(tiny[0], deploy)
    with ServerThread(ServeConfig(deploy_dir=str(deploy), port=0, read_timeout_s=10.0)) as s:
        yield s, deploy


def _strict(body: bytes):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(body, parse_constant=refuse)


def test_nan_and_inf_payloads_are_refused_with_strict_json(server):
    from bnpp_cli.deploy.client import EdgeClient
    from bnpp_cli.deploy.halves import load_edge_dir
    from bnpp_cli.deploy.protocol import ANSWER_LENGTH, Request, encode_request
    from bnpp_cli.link import wire

    s, deploy = server
    edge = load_edge_dir(deploy)
    for bad in (math.nan, math.inf, -math.inf):
        z = torch.full((1, *edge.code_shape), 0.5)
        z[0, 0, 0, 0] = bad
        data = encode_request(wire.encode_analog(z, edge.pair_id), Request(topk=3))
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
            sock.sendall(data)
            (n,) = ANSWER_LENGTH.unpack(sock.recv(4, socket.MSG_WAITALL))
            answer = _strict(sock.recv(n, socket.MSG_WAITALL))
        assert answer == {"ok": False, "error": "frame holds 1 non-finite symbols (NaN or Inf): a code is finite by "
                                                 "construction", "queue_ms": answer["queue_ms"],
                          "edge_ms": answer["edge_ms"]}
    # a finite frame on the same server still gets its answer
    good = wire.encode_analog(torch.full((1, *edge.code_shape), 0.5), edge.pair_id)
    with EdgeClient("127.0.0.1", s.port) as client:
        assert len(client.send(good, Request(topk=3)).predictions[0]) == 3


def test_plain_http_and_bad_magic_are_refused_at_once(server):
    s, _ = server
    for request in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HEAD / HTTP/1.0\r\n\r\n"):
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
            sock.sendall(request)
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert time.perf_counter() - t0 < 2.0  # not the 10 s read timeout
        assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"bnpp infer" in reply
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.sendall(b"XYZW")  # 4 bytes of another protocol, then silence
        n = int.from_bytes(sock.recv(4, socket.MSG_WAITALL), "little")
        answer = _strict(sock.recv(n, socket.MSG_WAITALL))
    assert time.perf_counter() - t0 < 2.0
    assert answer["ok"] is False and answer["error"].startswith("bad request magic b'XYZW'")


# ---- fail fast, and the right hint --------------------------------------------------------------
def test_offline_pretrained_fails_in_seconds_before_any_model_is_built(monkeypatch):
    import bnpp_cli.split.backbone as backbone

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there: refused at once
    monkeypatch.setattr(backbone, "_cached", lambda hub_id, url: False)
    monkeypatch.setattr(backbone, "create_timm_model", lambda *a, **k: pytest.fail("a model was built"))
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match=r"could not fetch pretrained weights for 'resnet18' \(offline\?\): "
                                         r"127.0.0.1:9 cannot be reached"):
        backbone.load_backbone(backbone.BackboneConfig("resnet18", pretrained=True, img_size=32))
    assert time.perf_counter() - t0 < 5.0


def test_a_checkpoint_of_another_architecture_does_not_hint_num_classes(tmp_path):
    import timm
    from safetensors.torch import save_file

    from bnpp_cli.split.backbone import BackboneConfig, load_backbone

    path = tmp_path / "r10.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet10t", num_classes=10).state_dict().items()},
              str(path))
    with pytest.raises(ModelError) as e:
        load_backbone(BackboneConfig("test_resnet", checkpoint=str(path), num_classes=10, img_size=32))
    assert "--num-classes" not in e.value.hint and "is it a checkpoint of this model" in e.value.hint


def test_a_refused_pickle_leaks_no_torch_warning(tmp_path):
    import numpy as np

    from bnpp_cli.split.checkpoint import read_state_dict

    path = tmp_path / "pickled.pth"
    torch.save({"w": torch.zeros(2), "extra": np.zeros(3)}, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ModelError, match=r"holds pickled Python objects besides tensors \(e.g. numpy"):
            read_state_dict(path)
    assert [str(w.message) for w in caught] == []


def test_a_reversed_range_is_refused_before_anything_is_built(tmp_path):
    data = tiny_npz(tmp_path / "d.npz")
    _fails(["fit", "test_resnet", "--split", "layer2", "--data", str(data), "--snr", "30:10", "--out",
            str(tmp_path / "run")], "--snr '30:10': a range A:B goes from low to high (A < B)", "Hint: --snr 10:30")
    _fails(["fit", "test_resnet", "--split", "layer2", "--data", str(data), "--channel", "bec", "--erasure",
            "0.1:0.01", "--out", str(tmp_path / "run")], "--erasure '0.1:0.01'")
    assert not (tmp_path / "run").exists()


# ---- bnpp models --------------------------------------------------------------------------------
def test_models_lists_timm_names_with_wildcards_and_the_pretrained_filter(tmp_path):
    import timm

    r = runner.invoke(app, ["models", "test_res*", "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    assert [ln for ln in r.stdout.splitlines() if ln] == timm.list_models("test_res*")
    assert json.loads((tmp_path / "m.json").read_text())["models"] == timm.list_models("test_res*")
    r = runner.invoke(app, ["models", "test_resnet*", "--pretrained"])
    assert "test_resnet.r160_in1k" in r.stdout.splitlines()
    _fails(["models", "resnt50"], "no timm model matches 'resnt50'", "did you mean: resnet50")
