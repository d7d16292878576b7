"""ONNX halves: export checked with ONNX Runtime, predict on either runtime, the int8 device half,
--reparam, and the errors a user meets (a mismatched pair, a corrupt file, no onnxruntime)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="the onnx extra (pip install 'bnpp[onnx]') is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra (pip install 'bnpp[onnx]') is not installed")

import onnx  # noqa: E402

from bnpp_cli.cli import app  # noqa: E402
from bnpp_cli.deploy import onnx as bnpp_onnx  # noqa: E402
from bnpp_cli.deploy.export import ExportConfig, export_halves  # noqa: E402
from bnpp_cli.deploy.halves import load_pair  # noqa: E402
from bnpp_cli.deploy.onnx import OPSET, OnnxEdgeHalf, load_onnx_pair  # noqa: E402
from bnpp_cli.deploy.predict import PredictConfig, expand_images, predict  # noqa: E402
from bnpp_cli.errors import DataError, ExportError  # noqa: E402
from bnpp_cli.split.backbone import BackboneConfig, load_backbone  # noqa: E402

runner = CliRunner()


def _pngs(data, folder, n=4):
    folder.mkdir(parents=True, exist_ok=True)
    x = np.load(data)["x"]
    paths = []
    for i in range(n):
        paths.append(str(folder / f"img{i}.png"))
        Image.fromarray(x[i]).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, fitted):
    """The default tiny run exported as safetensors + ONNX + int8 (calibrated on its training images)."""
    fit = fitted()
    out = tmp_path_factory.mktemp("onnx_deploy")
    res = export_halves(fit.run, out, format="all", calib_data=str(fit.data), calib_images=32)
    return out, res, fit


def _ort_vs_torch(deploy, x, param):
    pt_dev, pt_edge = load_pair(deploy)
    ort_dev, ort_edge = load_onnx_pair(deploy)
    with torch.inference_mode():
        z_t, z_o = pt_dev(x, param), ort_dev(x, param)
        z_hat = pt_edge.receive(pt_dev.payload(z_t))
        return z_t, z_o, pt_edge(z_hat, param), ort_edge(z_hat, param)


def test_export_onnx_matches_pytorch_and_carries_the_metadata(deployed):
    deploy, res, fit = deployed
    check = res.onnx["check"]
    assert res.onnx["opset"] == OPSET == 18
    assert check["images"] == 32 and "train.npz" in check["inputs"]  # the calibration images
    assert check["code_max_abs_diff"] < 1e-5 and check["logits_max_abs_diff"] < 1e-4
    assert check["top1_agreement"] == 1.0
    # dynamic batch: batch 1 and batch 5 run the file exported at batch 2
    for n in (1, 5):
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        z_t, z_o, l_t, l_o = _ort_vs_torch(deploy, x, 0.1)
        assert z_o.shape == (n, *res.code_shape) and l_o.shape == (n, 10)
        assert torch.allclose(z_t, z_o, atol=1e-5, rtol=0) and torch.allclose(l_t, l_o, atol=1e-4, rtol=0)
    model = onnx.load(str(deploy / "device.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["half"] == "device" and props["pair_id"] == res.pair_id and props["opset"] == "18"
    assert json.loads(props["code_shape"]) == res.code_shape and json.loads(props["feature_shape"]) == [48, 4, 4]
    run_config = json.loads(props["run_config"])
    assert json.loads(props["mean"]) == run_config["data_config"]["mean"] and len(json.loads(props["std"])) == 3
    assert json.loads(props["classes"]) == [f"class{i}" for i in range(10)]
    assert run_config["split"] == "layer2" and json.loads(props["input_size"]) == [3, 32, 32]
    assert [i.name for i in model.graph.input] == ["image", "param"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert {op.version for op in model.opset_import if op.domain in ("", "ai.onnx")} == {18}


def test_the_condition_input_is_live(deployed):
    """The graph takes the channel parameter per image: two params give two codes, as in PyTorch."""
    deploy, _, _ = deployed
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dev, _ = load_onnx_pair(deploy)
    pt_dev, _ = load_pair(deploy)
    z = dev(x, torch.tensor([0.0, 0.3]))
    with torch.inference_mode():
        ref = torch.cat([pt_dev(x[:1], 0.0), pt_dev(x[1:], 0.3)])
    assert torch.allclose(z, ref, atol=1e-5, rtol=0)
    assert float((dev(x, 0.3) - dev(x, 0.0)).abs().max()) > 1e-3


def test_predict_onnxruntime_gives_the_torch_answers(deployed, tmp_path):
    deploy, _, fit = deployed
    paths = _pngs(fit.data, tmp_path / "imgs")
    results = {rt: predict(PredictConfig(str(deploy), condition=10.0, condition_name="snr_db", top_k=3, seed=5,
                                         runtime=rt), [str(tmp_path / "imgs")]) for rt in ("torch", "onnxruntime")}
    t, o = results["torch"].predictions, results["onnxruntime"].predictions
    assert [p.image for p in t] == paths  # the folder, sorted
    assert [[c for c, _ in p.top] for p in o] == [[c for c, _ in p.top] for p in t]
    assert np.allclose([[v for _, v in p.top] for p in o], [[v for _, v in p.top] for p in t], atol=1e-5, rtol=0)
    assert results["onnxruntime"].runtime == "onnxruntime" and (t[0].payload_bytes, t[0].frame_bytes) == (768, 816)
    # batching changes neither the noise (per image index) nor the answer
    batched = predict(PredictConfig(str(deploy), condition=10.0, condition_name="snr_db", top_k=3, seed=5,
                                    runtime="onnxruntime", batch_size=3), paths).predictions
    assert np.allclose([[v for _, v in p.top] for p in batched], [[v for _, v in p.top] for p in o], atol=1e-5, rtol=0)


def test_cli_predict_json_names_the_bytes_and_refuses_top_0(deployed, tmp_path):
    deploy, _, fit = deployed
    _pngs(fit.data, tmp_path / "imgs", n=3)
    out = tmp_path / "p.json"
    r = runner.invoke(app, ["predict", str(deploy), str(tmp_path / "imgs" / "*.png"), "--runtime", "onnxruntime",
                            "--top", "2", "--batch-size", "2", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert len(d["predictions"]) == 3 and len(d["predictions"][0]["top"]) == 2
    assert (d["payload_bytes"], d["wire_header_bytes"], d["frame_bytes"]) == (768, 48, 816)
    assert d["batch_size"] == 2 and set(d["latency_ms"]["device"]) == {"median", "min", "max", "runs", "threads", "load",
                                                                       "cores", "warning"}
    assert d["latency_ms"]["device"]["threads"] == 1 and d["latency_ms"]["device"]["runs"] == 2  # 3 images in 2 batches
    assert "payload 768 B + 48 B wire header = 816 B frame" in r.output and "warm-up" in r.output
    r = runner.invoke(app, ["predict", str(deploy), str(tmp_path / "imgs"), "--top", "0"])
    assert r.exit_code == 2 and "--top 0" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["predict", str(deploy), str(tmp_path / "imgs"), "--runtime", "tflite"])
    assert r.exit_code == 2 and "unknown runtime 'tflite'" in r.output and "onnxruntime" in r.output


def test_expand_images_folders_and_globs(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("2.png", "1.jpg", "notes.txt"):
        (tmp_path / "a" / name).write_bytes(b"x")
    assert expand_images([tmp_path / "a"]) == [str(tmp_path / "a" / "1.jpg"), str(tmp_path / "a" / "2.png")]
    assert expand_images([str(tmp_path / "a" / "*.png")]) == [str(tmp_path / "a" / "2.png")]
    with pytest.raises(DataError, match="no file matches"):
        expand_images([str(tmp_path / "a" / "*.webp")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no image files"):
        expand_images([tmp_path / "empty"])


def test_int8_device_half(deployed, tmp_path):
    deploy, res, fit = deployed
    q = res.onnx["int8"]
    assert q["calib_images"] == 32 and q["top1_agreement_calib"] >= 0.9
    assert q["file_bytes"] < 0.5 * q["float_file_bytes"]  # int8 weights: about a quarter, plus QDQ nodes
    props = {p.key: p.value for p in onnx.load(q["path"]).metadata_props}
    assert props["precision"] == "int8-qdq" and props["pair_id"] == res.pair_id and "32 images" in props["calibration"]
    ops = {n.op_type for n in onnx.load(q["path"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    dev_q, edge = load_onnx_pair(deploy, int8=True)
    dev_f, _ = load_onnx_pair(deploy)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    diff = float((dev_q(x) - dev_f(x)).abs().max())
    assert 0 < diff < 0.1  # quantised, and close: z in [0, 1]
    paths = _pngs(fit.data, tmp_path / "imgs", n=2)
    preds = predict(PredictConfig(str(deploy), runtime="onnxruntime-int8", top_k=1), paths).predictions
    assert len(preds) == 2 and preds[0].frame_bytes == 816  # the same wire frame as the float halves


def test_mismatched_pair_corrupt_file_and_missing_runtime(deployed, fitted, tmp_path, monkeypatch):
    deploy, res, _ = deployed
    other = export_halves(fitted(epochs=2).run, tmp_path / "other", format="onnx")
    assert other.pair_id != res.pair_id and other.device_path is None  # ONNX only: no safetensors written
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(deploy / "device.onnx", mixed / "device.onnx")
    shutil.copy(tmp_path / "other" / "edge.onnx", mixed / "edge.onnx")
    with pytest.raises(ExportError, match="two different exports"):
        load_onnx_pair(mixed)
    (mixed / "edge.onnx").write_bytes((deploy / "edge.onnx").read_bytes()[:5000])
    with pytest.raises(ExportError, match="not a readable ONNX file"):
        load_onnx_pair(mixed)
    with pytest.raises(ExportError, match="expected the edge half"):
        OnnxEdgeHalf(deploy / "device.onnx")
    r = runner.invoke(app, ["predict", str(tmp_path / "other"), "x.png"])  # torch runtime, no safetensors
    assert r.exit_code == 2 and "does not exist" in r.output
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ExportError, match="ONNX needs onnxruntime, which is not installed") as e:
        load_onnx_pair(deploy)
    assert "pip install 'bnpp[onnx]'" in e.value.hint


def test_export_options_are_validated_and_unexportable_ops_are_named(fitted, tmp_path, monkeypatch):
    run = str(fitted().run)
    with pytest.raises(ExportError, match="unknown `format` 'tflite'"):
        ExportConfig(run, str(tmp_path), format="tflite")
    with pytest.raises(ExportError, match="`reparam` needs `format` onnx"):
        ExportConfig(run, str(tmp_path), format="all", reparam=True)
    with pytest.raises(ExportError, match="`calib_data` makes the int8"):
        ExportConfig(run, str(tmp_path), calib_data="x.npz")

    def refuse(*args, **kwargs):
        raise RuntimeError("Failed to convert: no ONNX function for aten::unique_consecutive.default")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(ExportError, match=r"opset 18: op aten::unique_consecutive.default is not supported"):
        export_halves(run, tmp_path / "d", format="onnx")
    assert not (tmp_path / "d" / "device.onnx").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model,split,channel,cond", [("test_efficientnet", "blocks.2", "awgn", 20.0),
                                                      ("test_convnext", "stages.1", "bec", 0.01),
                                                      ("test_vit", "blocks.0", "awgn", 20.0)])
def test_onnx_parity_across_families(fitted, tmp_path, model, split, channel, cond):
    fit = fitted(model=model, split=split, channel=channel, condition=cond, ratio=4)
    res = export_halves(fit.run, tmp_path / "d", format="onnx")
    c = res.onnx["check"]
    assert c["code_max_abs_diff"] < 1e-4 and c["logits_max_abs_diff"] < 1e-3 and c["top1_agreement"] == 1.0
    param = 0.05 if channel == "bec" else 0.1
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    ort_dev, ort_edge = load_onnx_pair(tmp_path / "d")
    z = ort_dev(x, param)
    assert z.shape == (3, *res.code_shape) and float(z.min()) >= 0 and float(z.max()) <= 1
    frame = ort_dev.payload(z)
    assert len(frame) == res.frame_bytes + (3 - 1) * res.payload_bytes  # one header, three codes
    assert ort_edge(ort_edge.air(ort_edge.receive(frame), param, seed=1), param).shape == (3, 10)


@pytest.mark.slow
def test_reparam_fuses_before_the_cut(tmp_path):
    """repvgg_a0: --reparam gives timm's published MACs (fewer params) and the same function."""
    from .helpers import tiny_run

    plain = load_backbone(BackboneConfig("repvgg_a0", num_classes=10, img_size=32))
    fused = load_backbone(BackboneConfig("repvgg_a0", num_classes=10, img_size=32, reparam=True))
    n_plain = sum(p.numel() for p in plain.model.parameters())
    assert sum(p.numel() for p in fused.model.parameters()) < n_plain
    tiny_run(tmp_path, model="repvgg_a0", split="stages.2", ratio=4)
    res = export_halves(tmp_path / "run", tmp_path / "d", format="onnx", reparam=True)
    assert res.onnx["reparam"] and res.onnx["reparam_logits_max_abs_diff"] < 1e-3
    assert res.onnx["check"]["logits_max_abs_diff"] < 1e-3
    ops = [n.op_type for n in onnx.load(res.onnx["device_path"]).graph.node]
    unfused = export_halves(tmp_path / "run", tmp_path / "u", format="onnx")
    assert ops.count("Conv") < [n.op_type for n in onnx.load(unfused.onnx["device_path"]).graph.node].count("Conv")
    assert res.device_params < unfused.device_params


def test_an_entropy_coded_run_is_refused_before_anything_is_written(fitted, tmp_path):
    fit = fitted(preset="entropy", channel="none", condition=None, ratio=8)
    with pytest.raises(ExportError, match="entropy-coded code") as e:
        export_halves(fit.run, tmp_path / "d", format="all")
    assert "`format` safetensors" in e.value.hint and not (tmp_path / "d").exists()


def test_export_says_each_long_step_before_it_runs(fitted, tmp_path):
    from bnpp_cli.deploy.export import export_run

    fit = fitted()
    steps: list[str] = []
    export_run(ExportConfig(str(fit.run), str(tmp_path / "d"), "onnx", calib_data=str(fit.data), calib_images=16),
               steps.append)
    assert [s.split(" on ")[0] for s in steps] == [
        "exporting the device half to ONNX", "exporting the edge half to ONNX",
        "checking the ONNX halves against PyTorch with ONNX Runtime", "calibrating and checking the int8 device half"]
    assert steps[2].endswith(f"on 16 images of {fit.data}")
    r = runner.invoke(app, ["export", str(fit.run), "--out", str(tmp_path / "cli"), "--format", "onnx"])
    assert r.exit_code == 0 and "export: checking the ONNX halves against PyTorch" in r.output, r.output
