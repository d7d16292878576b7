"""`bnpp export` / `bnpp predict`: halves that rebuild from their files alone and compose exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from bnpp_cli.link import wire
from bnpp_cli.cli import app
from bnpp_cli.errors import ExportError, WireError
from bnpp_cli.run.evaluate import EvalConfig, evaluate_run
from bnpp_cli.deploy.halves import check_pair, load_device, load_edge
from bnpp_cli.deploy.export import export_halves
from bnpp_cli.run.pipeline import load_run

runner = CliRunner()
CASES = [("test_resnet", "layer2", "awgn", 20.0), ("test_efficientnet", "blocks.2", "awgn", 20.0),
         ("test_convnext", "stages.1", "bec", 0.01)]


@pytest.mark.parametrize("model,split,channel,cond", CASES)
def test_composed_halves_reproduce_the_fitted_pipeline_exactly(tmp_path, fitted, model, split, channel, cond):
    fit = fitted(model=model, split=split, channel=channel, condition=cond, ratio=4)
    res = export_halves(fit.run, tmp_path / "deploy")
    device, edge = load_device(res.device_path), load_edge(res.edge_path)
    run = load_run(fit.run)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = run.pipeline(x, 0.0)
        received = edge.receive(device.payload(device(x)))  # through the wire format
        assert torch.equal(edge(received), reference)
    # noisy link, same seed on both sides: the same logits too
    param = device.param_from_condition(10.0 if channel == "awgn" else 0.05)
    with torch.no_grad():
        a = run.pipeline(x, param, torch.Generator().manual_seed(7))
        b = edge(edge.channel(device(x, param), param, generator=torch.Generator().manual_seed(7)), param)
    assert torch.equal(a, b)


def test_halves_hold_only_their_own_tensors(tmp_path, fitted):
    run_dir = fitted().run
    res = export_halves(run_dir, tmp_path / "deploy")
    with safe_open(res.device_path, "pt") as f:
        dev_keys, meta = list(f.keys()), f.metadata()
    with safe_open(res.edge_path, "pt") as f:
        edge_keys = list(f.keys())
    assert dev_keys and all(k.startswith(("head.", "encoder.")) for k in dev_keys)
    assert edge_keys and all(k.startswith(("decoder.", "tail.")) for k in edge_keys)
    run = load_run(run_dir)
    p = run.pipeline
    n_dev = sum(t.numel() for m in (p.head, p.codec.encoder) for t in m.parameters())
    n_edge = sum(t.numel() for m in (p.codec.decoder, p.tail) for t in m.parameters())
    assert (res.device_params, res.edge_params) == (n_dev, n_edge)
    assert n_dev + n_edge == sum(t.numel() for t in p.parameters())
    for key in ("format", "half", "pair_id", "bnpp_version", "timm_model", "timm_version", "run_config"):
        assert key in meta
    cfg = json.loads(meta["run_config"])
    for key in ("create_kwargs", "split", "codec", "channel", "data_config", "classes"):
        assert key in cfg
    assert cfg["data_config"]["input_size"] == [3, 32, 32] and len(cfg["data_config"]["mean"]) == 3


def test_payload_size_equals_eval_code_size(tmp_path, fitted):
    run_dir, data, _ = fitted(channel="bec", condition=0.01, ratio=16)
    res = export_halves(run_dir, tmp_path / "deploy")
    ev = evaluate_run(EvalConfig(run=str(run_dir), data=str(data), conditions=[0.0], draws=1))
    device = load_device(res.device_path)
    with torch.no_grad():
        frame = device.payload(device(torch.randn(1, 3, 32, 32)))
    assert res.payload_bytes == ev.payload_bytes == len(frame) - res.header_bytes
    f, levels = wire.decode(frame)
    assert f.kind == "digital" and f.bits == 8 and list(f.shape[1:]) == ev.code_shape


def test_bad_files_and_mismatched_pairs(tmp_path, fitted):
    a = export_halves(fitted().run, tmp_path / "da")
    b = export_halves(fitted(epochs=2).run, tmp_path / "db")
    assert a.pair_id != b.pair_id
    with pytest.raises(ExportError, match="two different exports"):
        check_pair(load_device(a.device_path), load_edge(b.edge_path))
    with torch.no_grad():
        frame = load_device(a.device_path).payload(torch.rand(1, *a.code_shape))
    with pytest.raises(WireError, match="does not match this edge half"):
        load_edge(b.edge_path).receive(frame)
    with pytest.raises(WireError):
        load_edge(a.edge_path).receive(frame[:-1])
    with pytest.raises(ExportError, match="expected the edge half"):
        load_edge(a.device_path)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(open(a.edge_path, "rb").read()[:1000])
    with pytest.raises(ExportError, match="corrupt or truncated"):
        load_edge(truncated)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ExportError, match="not a bnpp half"):
        load_device(foreign)


def test_export_is_atomic(tmp_path, fitted, monkeypatch):
    run_dir = fitted().run
    import safetensors.torch

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        export_halves(run_dir, tmp_path / "deploy")
    assert not any((tmp_path / "deploy").glob("*.safetensors"))
    assert not list((tmp_path / "deploy").iterdir())  # no temporary file left behind either


def test_cli_export_and_predict(tmp_path, fitted):
    run_dir, data, _ = fitted()
    r = runner.invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "deploy")])
    assert r.exit_code == 0, r.output
    assert "payload 768 bytes" in r.output  # code 12x4x4 float32
    x = np.load(data)["x"]
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(x[i]).save(paths[-1])
    out = tmp_path / "pred.json"
    r = runner.invoke(app, ["predict", str(tmp_path / "deploy"), *map(str, paths), "--snr", "10", "--json", str(out)])
    assert r.exit_code == 0, r.output
    preds = json.loads(out.read_text())["predictions"]
    assert len(preds) == 2 and len(preds[0]["top"]) == 5
    assert (preds[0]["payload_bytes"], preds[0]["frame_bytes"]) == (768, 768 + 48)  # code; + wire header
    # the CLI's classes and probabilities are the fitted pipeline's, with image i's noise from air_generator(0, i)
    from bnpp_cli.data.batching import BatchTransform
    from bnpp_cli.link.receiver import air_generator

    run = load_run(run_dir)
    dc = run.config.data_config
    xs = BatchTransform(dc["mean"], dc["std"], augment=False)(torch.from_numpy(x[:2]).permute(0, 3, 1, 2).contiguous())
    param = run.pipeline.channel.param_from_condition(10.0)
    for i, pred in enumerate(preds):
        with torch.no_grad():
            ref = run.pipeline(xs[i:i + 1], param, air_generator(0, i)).softmax(1)[0]
        p, k = ref.topk(5)
        assert [c for c, _ in pred["top"]] == [run.config.classes[j] for j in k.tolist()]
        assert [v for _, v in pred["top"]] == pytest.approx(p.tolist(), abs=1e-6)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    r = runner.invoke(app, ["predict", str(tmp_path / "deploy"), str(bad)])
    assert r.exit_code == 2 and "cannot decode image" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["predict", str(tmp_path / "nowhere"), str(paths[0])])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_predict_refuses_the_other_channels_condition(tmp_path, fitted):
    export_halves(fitted().run, tmp_path / "deploy")
    img = tmp_path / "i.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    r = runner.invoke(app, ["predict", str(tmp_path / "deploy"), str(img), "--erasure", "0.01"])
    assert r.exit_code == 2 and "--erasure does not apply to this export's channel 'awgn'" in r.output
    assert "use --snr" in r.output


def test_flip_flag_drives_bsc_and_erasure_is_refused_with_a_hint(tmp_path, fitted):
    export_halves(fitted(channel="bsc", condition=0.01).run, tmp_path / "deploy")
    img = tmp_path / "i.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    r = runner.invoke(app, ["predict", str(tmp_path / "deploy"), str(img), "--flip", "0.05"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["predict", str(tmp_path / "deploy"), str(img), "--erasure", "0.05"])
    assert r.exit_code == 2 and "--erasure does not apply to this export's channel 'bsc' (--erasure is for bec)" \
        in r.output and "Hint: use --flip" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["predict", str(tmp_path / "deploy"), str(img), "--snr", "10"])
    assert r.exit_code == 2 and "--snr does not apply to this export's channel 'bsc'" in r.output
    r = runner.invoke(app, ["predict", str(tmp_path / "deploy"), str(img), "--snr", "10", "--flip", "0.1"])
    assert r.exit_code == 2 and "give one condition, not --snr and --flip" in r.output


def test_predict_takes_paths_pil_images_and_tensors_alike(tmp_path, fitted):
    from bnpp_cli import PredictConfig, predict
    from bnpp_cli.data.batching import BatchTransform
    from bnpp_cli.errors import BnppError, ChannelError, DataError

    run_dir, data, _ = fitted()
    export_halves(run_dir, tmp_path / "deploy")
    x = np.load(data)["x"][:3]
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for p, image in zip(paths, x):
        Image.fromarray(image).save(p)
    config = PredictConfig(str(tmp_path / "deploy"), condition=10.0, condition_name="snr_db", top_k=3, seed=2)
    dc = load_run(run_dir).config.data_config
    normalised = BatchTransform(dc["mean"], dc["std"], augment=False)(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    by_file = predict(config, [str(tmp_path / "*.png")])
    assert [p.image for p in by_file.predictions] == [str(p) for p in paths]
    for images in ([Image.fromarray(image) for image in x], torch.from_numpy(x), x, normalised):
        other = predict(config, images)
        assert [p.image for p in other.predictions] == ["<image 0>", "<image 1>", "<image 2>"]
        for a, b in zip(other.predictions, by_file.predictions):
            assert [c for c, _ in a.top] == [c for c, _ in b.top]
            assert [v for _, v in a.top] == pytest.approx([v for _, v in b.top], abs=1e-6)
    with pytest.raises(DataError, match=r"expected uint8 \(N, H, W, 3\)"):
        predict(config, torch.zeros(2, 3, 8, 8))
    with pytest.raises(BnppError, match="`top_k` 0"):
        predict(PredictConfig(str(tmp_path / "deploy"), top_k=0), paths)
    with pytest.raises(ChannelError, match="`flip` does not apply to this export's channel 'awgn'"):
        predict(PredictConfig(str(tmp_path / "deploy"), condition=0.1, condition_name="flip"), paths)
