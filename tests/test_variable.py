"""Variable-length code (preset variable, codec.variable): every prefix decodes, the length per condition
comes from the table chosen on validation images, and frames of different lengths cross the wire and
batch through the edge server's backend."""

from __future__ import annotations

import math

import pytest
import torch

from bnpp_cli.codec.config import plan_codec
from bnpp_cli.codec.model import build_codec
from bnpp_cli.codec.variable import (TABLE_ENTRIES, LengthTable, allowed_lengths, pad_prefix, prefix_mask,
                                     take_prefix)
from bnpp_cli.errors import CodecError
from bnpp_cli.link import wire
from bnpp_cli.link.registry import create_channel
from bnpp_cli.codec.calibrate import choose_lengths, length_grid

PAIR = "ab" * 16


def test_allowed_lengths():
    assert allowed_lengths(64) == list(range(4, 65, 4))
    assert allowed_lengths(5) == [1, 2, 3, 4, 5]
    assert allowed_lengths(100) == [7 * i for i in range(1, 15)] + [100]  # step ceil(100 / 16) = 7, and K
    with pytest.raises(CodecError, match="0 symbols"):
        allowed_lengths(0)


def test_length_table_lookup_and_state():
    table = LengthTable(64)
    assert not table.calibrated and table.length(0.3) == 64  # uncalibrated: the whole code
    table.set([(0.3, 16), (0.1, 8)])
    assert table.entries() == [(pytest.approx(0.1), 8), (pytest.approx(0.3), 16)]
    # a parameter gets the entry of the nearest grid point at least as bad; beyond the worst, K
    assert [table.length(p) for p in (0.0, 0.05, 0.1, 0.2, 0.3, 0.31, 1.0)] == [8, 8, 8, 16, 16, 64, 64]
    assert table.lookup(torch.tensor([0.0, 0.2, 0.5])).tolist() == [8, 16, 64]
    assert table.lookup(0.2, 3).tolist() == [16, 16, 16]
    other = LengthTable(64)
    other.load_state_dict(table.state_dict(), strict=True)  # fixed size: loads strictly
    assert other.length(0.2) == 16 and other.params.shape == (TABLE_ENTRIES,)
    with pytest.raises(CodecError, match="lengths 1 to 64"):
        table.set([(0.1, 65)])


def test_choose_lengths_smallest_within_tolerance_and_monotone():
    top1 = {0.1: {4: 0.80, 8: 0.846, 16: 0.85},  # best condition: 8 is within 0.5 pt of 0.85
            0.3: {4: 0.60, 8: 0.70, 16: 0.72},  # only 16 is within 0.5 pt
            0.2: {4: 0.70, 8: 0.77, 16: 0.775}}  # 8 within 0.5 pt
    assert choose_lengths(top1, 0.005) == {0.1: 8, 0.2: 8, 0.3: 16}
    assert choose_lengths(top1, 0.06) == {0.1: 4, 0.2: 8, 0.3: 8}
    # a worse condition never gets fewer symbols than a better one, even where a shorter prefix measured well
    assert choose_lengths({0.1: {4: 0.5, 8: 0.8}, 0.2: {4: 0.79, 8: 0.79}}, 0.0) == {0.1: 8, 0.2: 8}


def test_length_grid_follows_the_training_range():
    awgn = create_channel("awgn", train_condition=(5.0, 25.0))
    grid = length_grid(awgn)
    assert [round(awgn.condition_from_param(p), 6) for p in grid] == [float(d) for d in range(5, 26)]
    open_range = length_grid(create_channel("awgn", train_condition=20.0))  # 20 dB to noiseless: 20 .. 50 dB
    assert len(open_range) == 31 and max(open_range) == pytest.approx(0.1)
    bec = length_grid(create_channel("bec", train_condition=0.01))
    assert bec[0] == pytest.approx(0.01) and bec[-1] == 0.0 and len(bec) <= TABLE_ENTRIES
    assert length_grid(create_channel("none")) == [0.0]


def _codec():
    cfg = plan_codec((16, 8, 8), ratio=4, preset="variable")
    torch.manual_seed(0)
    return build_codec(cfg).eval()


def test_prefix_decodes_like_the_masked_code():
    codec = _codec()
    total = codec.config.code_symbols
    assert codec.config.variable_length and total == 256 and codec.config.code_shape == (4, 8, 8)
    f = torch.rand(3, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = codec.encoder(f, 0.1)
        for k in (16, 100, 256):
            sent = take_prefix(z, k)
            assert sent.shape == (3, k) and torch.equal(sent, z.flatten(1)[:, :k])
            masked = prefix_mask(z, torch.full((3,), k))
            assert torch.equal(pad_prefix(sent, codec.config.code_shape), masked)
            assert int((masked.flatten(1)[:, k:] != 0).sum()) == 0
            # the decoder takes the (N, k) prefix itself: the same restored feature as the zero-padded code
            assert torch.equal(codec.decoder(sent, 0.1), codec.decoder(masked, 0.1))
        # shorter prefixes restore the feature less well, but every one is a code of the feature's shape
        f_hat = codec.decoder(take_prefix(z, 16), 0.1)
        assert f_hat.shape == f.shape and bool(torch.isfinite(f_hat).all())
    with pytest.raises(CodecError, match="neither a prefix"):
        codec.decoder(torch.zeros(3, 257), 0.1)


def test_training_keeps_a_random_allowed_prefix_per_image():
    codec = _codec().train()
    z = torch.rand(64, *codec.config.code_shape) + 0.5  # no zeros of its own
    torch.manual_seed(3)
    kept = codec.keep_prefix(z, 0.1).flatten(1)
    lengths = (kept != 0).sum(1)
    assert set(lengths.tolist()) <= set(allowed_lengths(256)) and len(set(lengths.tolist())) >= 8
    for row, k in zip(kept, lengths.tolist()):  # a prefix: everything before k kept, nothing after
        assert bool((row[:k] != 0).all()) and bool((row[k:] == 0).all())
    codec.eval()
    codec.encoder.lengths.set([(0.1, 32)])
    assert codec.symbols(0.1) == 32 and codec.symbols(0.5) == 256
    assert (codec.keep_prefix(z, 0.1).flatten(1) != 0).sum(1).tolist() == [32] * 64


def test_variable_frames_on_the_wire():
    codec = _codec()
    channel = create_channel("awgn", train_condition=(5.0, 25.0))
    codec.encoder.lengths.set([(channel.param_from_condition(20.0), 48), (channel.param_from_condition(10.0), 160)])
    f = torch.rand(2, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    for cond, k in ((25.0, 48), (20.0, 48), (15.0, 160), (5.0, 256)):
        param = channel.param_from_condition(cond)
        frame = codec.compress(f, param, channel, PAIR)
        head, _ = wire.decode(frame)
        assert head.shape == (2, k) and head.payload_bytes == 2 * k * 4  # float32 symbols: k per image
        z_hat = codec.receive(frame, 0.0, channel, PAIR)  # noiseless air: the prefix as sent
        with torch.no_grad():
            assert torch.equal(z_hat, codec.encoder(f, param).flatten(1)[:, :k])
    with pytest.raises(wire.WireError, match="or a prefix"):
        from bnpp_cli.link.transmit import decode_code
        decode_code(wire.encode_analog(torch.zeros(1, 257), PAIR), channel, PAIR, (4, 8, 8), prefix=True)


def test_power_normalised_channel_is_refused(tmp_path):
    from .helpers import tiny_run

    with pytest.raises(CodecError, match="awgn-power"):
        tiny_run(tmp_path, preset="variable", channel="awgn-power", condition=10.0)


def test_no_validation_images_is_refused(tmp_path):
    """The length table is chosen on validation images: without any, the fit stops before it starts
    (a 'variable' code that silently always sends the whole code would be a success not earned)."""
    from bnpp_cli.errors import BnppError

    from .helpers import tiny_run

    with pytest.raises(BnppError, match=r"the fit holds none out"):
        tiny_run(tmp_path, preset="variable", condition=(5.0, 25.0), val_fraction=0.0)
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def variable_run(fitted):
    return fitted(preset="variable", condition=(5.0, 25.0), ratio=2.0, val_fraction=0.25)


def test_fit_stores_a_table_chosen_on_validation(variable_run):
    from bnpp_cli.run.pipeline import load_run
    from bnpp_cli.run.rundir import RunDir

    run = load_run(variable_run.run)
    codec = run.pipeline.codec
    record = RunDir(variable_run.run).read_metrics()["validation"]["length_table"]
    total = codec.config.code_symbols
    assert record["symbols"] == total and record["lengths"] == allowed_lengths(total)
    assert [row["snr_db"] for row in record["rows"]] == pytest.approx([float(d) for d in range(5, 26)])
    # the stored table is what the validation figures choose, and the table the loaded codec uses
    chosen = choose_lengths({run.pipeline.channel.param_from_condition(row["snr_db"]):
                             {int(k): a for k, a in row["top1"].items()} for row in record["rows"]}, record["tolerance"])
    assert [k for _, k in sorted(chosen.items())] == [k for _, k in codec.encoder.lengths.entries()]
    assert [row["symbols_per_image"] for row in record["rows"]] == [chosen[p] for p in sorted(chosen, reverse=True)]


def test_eval_reports_symbols_per_condition(variable_run):
    from bnpp_cli.run.evaluate import EvalConfig, evaluate_run
    from bnpp_cli.run.pipeline import load_run

    run = load_run(variable_run.run)
    channel, codec = run.pipeline.channel, run.pipeline.codec
    # a table with three lengths, so that the conditions differ (the tiny run's own may be flat)
    codec.encoder.lengths.set([(channel.param_from_condition(20.0), 2), (channel.param_from_condition(10.0), 6)])
    result = evaluate_run(EvalConfig(run=str(variable_run.run), data=str(variable_run.data),
                                     conditions=[5.0, 10.0, 15.0, 25.0], draws=1), run=run)
    total = codec.config.code_symbols
    assert result.variable_length and result.code_symbols == total
    # 15 dB lies between the grid points: it gets the entry of 10 dB (the nearest at least as bad)
    assert [r["symbols_per_image"] for r in result.results] == [total, 6, 6, 2]
    assert result.symbols_per_image_mean == pytest.approx((total + 6 + 6 + 2) / 4)
    assert [e["symbols_per_image"] for e in result.length_table] == [2, 6]
    # top-1 at 15 dB is that of the 6-symbol prefix: recomputed here by hand with the same noise draw
    from bnpp_cli.data.batching import BatchTransform, make_loader
    from bnpp_cli.data.datasets import load_dataset

    ds = load_dataset(str(variable_run.data), input_size=(32, 32), train=False)
    ((x, y),) = list(make_loader(ds, 256, shuffle=False, seed=0))
    dc = run.config.data_config
    with torch.no_grad():
        f = run.pipeline.head(BatchTransform(dc["mean"], dc["std"], augment=False)(x))
        param = channel.param_from_condition(15.0)
        z_hat = channel(codec.encoder(f, param), param, generator=torch.Generator().manual_seed(0))
        logits = run.pipeline.tail(codec.decoder(take_prefix(z_hat, 6), param))
    assert result.results[2]["top1_mean"] == pytest.approx(int((logits.argmax(1) == y).sum()) / len(y))


def test_frames_of_two_lengths_batch_through_the_backend(variable_run, tmp_path):
    from bnpp_cli.deploy.backend import BnppBackend, compute_batch
    from bnpp_cli.deploy.export import export_halves
    from bnpp_cli.deploy.halves import load_pair
    from bnpp_cli.deploy.protocol import Request

    export_halves(variable_run.run, tmp_path / "deploy")
    device, edge = load_pair(tmp_path / "deploy")
    channel = device.channel
    device.encoder.lengths.set([(channel.param_from_condition(20.0), 2), (channel.param_from_condition(10.0), 6)])
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    requests = [(x[:2], Request(condition=25.0, seed=7)), (x[2:], Request(condition=8.0, seed=9, first_index=2)),
                (x[:1], Request(condition=12.0, seed=1))]
    bodies, expected = [], []
    with torch.no_grad():
        for images, req in requests:
            param = channel.param_from_condition(req.condition)
            frame = device.compress(images, param)
            bodies.append((frame, req))
            # alone: receive, air over the k symbols sent, pad, decoder + tail
            z_hat = edge.air(edge.receive(frame), param, req.seed, req.first_index)
            expected.append(edge(edge.pad(z_hat), param).softmax(1))
    total = device.codec_config.code_symbols
    assert [wire.decode(b)[0].shape for b, _ in bodies] == [(2, 2), (1, total), (1, 6)]
    answers, images, _ = compute_batch(BnppBackend(edge, max_images=8), bodies)
    assert images == 4 and all(a["ok"] for a in answers)
    for answer, probs in zip(answers, expected):  # batched with padding == each request alone
        got = torch.tensor([[p for _, p in row] for row in answer["predictions"]])
        assert torch.allclose(got, probs.topk(5, dim=1).values, atol=1e-5)
    # the halves equal the pipeline at a noiseless condition (same table, same prefix)
    from bnpp_cli.run.pipeline import load_run

    run = load_run(variable_run.run)
    run.pipeline.codec.encoder.lengths.set(device.encoder.lengths.entries())
    with torch.no_grad():
        frame = device.compress(x, channel.param_from_condition(30.0))
        assert wire.decode(frame)[0].shape == (3, 2)
        halves = edge(edge.receive(frame), channel.param_from_condition(30.0))
        f = run.pipeline.head(x)  # the device half's input as given
        param = channel.param_from_condition(30.0)
        z = run.pipeline.codec.keep_prefix(run.pipeline.codec.encoder(f, param), param)
        pipe = run.pipeline.tail(run.pipeline.codec.decoder(z, param))
    assert torch.allclose(halves, pipe, atol=1e-5)


def test_cli_eval_shows_the_symbols_per_condition(variable_run, tmp_path):
    import json

    from typer.testing import CliRunner

    from bnpp_cli.cli import app
    from bnpp_cli.run.pipeline import load_run

    run = load_run(variable_run.run)
    codec, channel = run.pipeline.codec, run.pipeline.channel
    want = [codec.symbols(channel.param_from_condition(c)) for c in (5.0, 25.0)]
    res = CliRunner().invoke(app, ["eval", str(variable_run.run), "--data", str(variable_run.data), "--snr", "5,25",
                                   "--draws", "1"])
    assert res.exit_code == 0, res.output
    assert "symbols/image" in res.output and f"{sum(want) / 2:.1f} symbols/image on average" in res.output
    assert "frame bytes" in res.output  # each condition's measured batch-1 frame
    res = CliRunner().invoke(app, ["eval", str(variable_run.run), "--data", str(variable_run.data), "--snr", "5,25",
                                   "--draws", "1", "--json", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert [r["symbols_per_image"] for r in doc["results"]] == want and doc["variable_length"] is True


def _two_lengths(run, hi_db: float = 20.0, lo_db: float = 10.0, short: int = 2, long: int = 6):
    """Give a loaded run's table two lengths (the tiny run's own may be flat): short from hi_db, long from lo_db."""
    channel = run.pipeline.channel
    run.pipeline.codec.encoder.lengths.set([(channel.param_from_condition(hi_db), short),
                                            (channel.param_from_condition(lo_db), long)])
    return run


def test_eval_measures_each_conditions_prefix_frames(variable_run):
    from bnpp_cli.link.transmit import header_bytes, payload_bytes
    from bnpp_cli.run.evaluate import EvalConfig, evaluate_run
    from bnpp_cli.run.pipeline import load_run

    run = _two_lengths(load_run(variable_run.run))
    result = evaluate_run(EvalConfig(run=str(variable_run.run), data=str(variable_run.data), conditions=[5.0, 10.0, 25.0],
                                     draws=1), run=run)
    total, channel = result.code_symbols, run.pipeline.channel
    assert [r["symbols_per_image"] for r in result.results] == [total, 6, 2]
    for row in result.results:  # float32 symbols: 4 bytes each, and the (N, k) frame's header
        k = row["symbols_per_image"]
        assert row["payload_bytes"] == payload_bytes((k,), channel) == 4 * k
        assert row["frame_bytes"] == header_bytes((k,)) + 4 * k and row["payload_bits"] is None
    assert result.results[2]["frame_bytes"] < result.results[0]["frame_bytes"]


def test_digital_variable_bits_are_measured_from_frames(fitted):
    from bnpp_cli.run.evaluate import EvalConfig, evaluate_run
    from bnpp_cli.run.pipeline import load_run

    tiny = fitted(channel="bec", condition=0.01, preset="variable")
    run = load_run(tiny.run)
    channel = run.pipeline.channel
    run.pipeline.codec.encoder.lengths.set([(0.001, 3), (0.01, 5)])  # p <= 0.001: 3 symbols; <= 0.01: 5
    result = evaluate_run(EvalConfig(run=str(tiny.run), data=str(tiny.data), conditions=[0.0005, 0.005, 0.05],
                                     draws=1), run=run)
    total = result.code_symbols
    assert [r["symbols_per_image"] for r in result.results] == [3, 5, total]
    with torch.no_grad():  # one image's real frame at each condition
        f = run.pipeline.head(torch.zeros(1, 3, 32, 32))
        frames = [run.pipeline.codec.compress(f, p, channel, PAIR) for p in (0.0005, 0.005, 0.05)]
    for row, frame in zip(result.results, frames):
        k = row["symbols_per_image"]
        assert wire.decode(frame)[0].shape == (1, k)
        assert row["payload_bytes"] == wire.decode(frame)[0].payload_bytes == k  # 8-bit levels: a byte each
        assert row["payload_bits"] == 8 * k and row["frame_bytes"] == len(frame)


def test_export_announces_the_frame_per_condition(variable_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bnpp_cli.cli import app
    from bnpp_cli.deploy import export as export_module
    from bnpp_cli.deploy.halves import load_pair
    from bnpp_cli.run.pipeline import load_run

    run = _two_lengths(load_run(variable_run.run))
    monkeypatch.setattr(export_module, "load_run", lambda path: run)
    res = export_module.export_halves(variable_run.run, tmp_path / "deploy")
    device, _ = load_pair(tmp_path / "deploy")
    total = device.codec_config.code_symbols
    assert [e["symbols_per_image"] for e in res.frames_per_condition] == [2, 6]
    assert [e["label"] for e in res.frames_per_condition] == ["PSNR 20 dB", "PSNR 10 dB"]
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for entry in res.frames_per_condition:  # what a real frame at that entry's condition holds
            frame = device.compress(x, entry["param"])
            assert len(frame) == entry["frame_bytes"] == entry["header_bytes"] + entry["payload_bytes"]
            assert entry["payload_bytes"] == wire.decode(frame)[0].payload_bytes
        whole = device.compress(x, device.param_from_condition(5.0))  # beyond the table: the whole code
    assert len(whole) == res.frame_bytes and wire.decode(whole)[0].shape == (1, total)
    out = CliRunner().invoke(app, ["export", str(variable_run.run), "--out", str(tmp_path / "cli")])
    assert out.exit_code == 0, out.output
    flat = " ".join(out.output.split())
    assert "variable-length" in flat and "PSNR 20 dB: 2 symbols" in flat and f"{res.frame_bytes}-byte frame" in flat


@pytest.mark.slow
def test_onnx_halves_send_the_tables_prefix(variable_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import json

    from bnpp_cli.deploy import export as export_module
    from bnpp_cli.deploy.halves import load_pair
    from bnpp_cli.deploy.onnx import load_onnx_pair
    from bnpp_cli.run.pipeline import load_run

    run = _two_lengths(load_run(variable_run.run))
    monkeypatch.setattr(export_module, "load_run", lambda path: run)
    res = export_module.export_halves(variable_run.run, tmp_path / "deploy", format="all",
                                      calib_data=str(variable_run.data), calib_images=16)
    device, edge = load_pair(tmp_path / "deploy")
    onnx_device, onnx_edge = load_onnx_pair(tmp_path / "deploy")
    int8_device, _ = load_onnx_pair(tmp_path / "deploy", int8=True)
    props = onnx_device.session.get_modelmeta().custom_metadata_map
    assert json.loads(props["length_table"]) == [[pytest.approx(p), k] for p, k in device.encoder.lengths.entries()]
    assert res.onnx["check"]["top1_agreement"] == 1.0  # export's own check went through the noisiest prefix
    assert res.onnx["int8"]["calib_images"] == 16 and res.onnx["int8"]["top1_agreement_calib"] >= 0.9  # 1.0 here
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    total = device.codec_config.code_symbols
    with torch.no_grad():
        for db, k in ((25.0, 2), (12.0, 6), (5.0, total)):
            param = device.param_from_condition(db)
            frame = onnx_device.compress(x, param)
            assert wire.decode(frame)[0].shape == (3, k) and onnx_device.symbols(param) == k
            assert len(frame) == len(device.compress(x, param))  # the same frame size as the safetensors half
            # the int8 device half carries the same table: the same prefix, the same frame size
            assert wire.decode(int8_device.compress(x, param))[0].shape == (3, k) and int8_device.symbols(param) == k
            assert len(int8_device.compress(x, param)) == len(frame)
            got = onnx_edge.decompress(frame, param, seed=4)
            want = edge.decompress(device.compress(x, param), param, seed=4)  # same prefix, same noise draws
            assert torch.allclose(got, want, atol=1e-3)
