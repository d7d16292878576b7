"""The entropy-coded code (codec.entropy), its wire frames (version 2) and the ideal channel code
at capacity (link.capacity)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bnpp_cli.cli import app
from bnpp_cli.codec.config import plan_codec
from bnpp_cli.codec.entropy import (PRECISION, SUPPORT, EntropyError, FactorizedPrior, SymbolTables, decode_symbols,
                                    encode_symbols, find_prior, integer_tables, update_tables)
from bnpp_cli.codec.model import build_codec
from bnpp_cli.errors import CodecError, WireError
from bnpp_cli.link import capacity, wire
from bnpp_cli.link.registry import create_channel
from bnpp_cli.run.evaluate import EvalConfig, evaluate_run

from .helpers import tiny_npz

PAIR = "0123456789abcdef0123456789abcdef"


_PRIORS: dict = {}


def _trained_prior(channels: int = 3, steps: int = 150, seed: int = 0) -> tuple[FactorizedPrior, torch.Tensor]:
    """A prior fitted to codes drawn around 0 with per-channel scales 0.5, 1.5, 3 (its tables frozen);
    fitted once per session."""
    key = (channels, steps, seed)
    if key not in _PRIORS:
        _PRIORS[key] = _fit_prior(channels, steps, seed)
    return _PRIORS[key]


def _fit_prior(channels: int, steps: int, seed: int) -> tuple[FactorizedPrior, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([0.5, 1.5, 3.0][:channels]).reshape(1, -1, 1, 1)
    y = torch.randn(128, channels, 2, 2, generator=g) * scales
    prior = FactorizedPrior(channels)
    opt = torch.optim.Adam(prior.parameters(), lr=0.05)
    for _ in range(steps):
        prior.train()
        prior(y)
        loss = prior.rate_loss(0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior.eval()
    prior.update_tables()
    return prior, y


def test_integer_tables_sum_to_precision_with_every_symbol_codable():
    pmf = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1e-12, 0.25, 0.25, 0.5]], dtype=torch.float64)
    counts = integer_tables(pmf)
    assert counts.dtype == torch.int32
    assert counts.sum(1).tolist() == [2**PRECISION] * 2
    assert counts.min().item() == 1  # impossible symbols still codable, at 16 bits
    assert abs(counts[1, 3].item() / 2**PRECISION - 0.5) < 1e-3


def test_prior_pmf_sums_to_one_and_fits_the_scales():
    prior, y = _trained_prior()
    pmf = prior.pmf()
    assert pmf.shape == (3, 2 * SUPPORT + 1)
    assert torch.allclose(pmf.sum(1), torch.ones(3, dtype=torch.float64), atol=1e-9)
    # wider codes cost more: entropy per symbol grows with the channel's scale
    ent = -(pmf * torch.log2(pmf.clamp_min(1e-300))).sum(1)
    assert ent[0] < ent[1] < ent[2]
    # a unit-variance Gaussian rounded has ~2.1 bits; scale 3 ~ 3.6 bits
    assert 1.5 < ent[1].item() < 2.8 and 3.0 < ent[2].item() < 4.2


def test_forward_quantises_clamps_and_passes_gradients_straight_through():
    prior = FactorizedPrior(2).train()
    y = torch.tensor([[[-40.0, -1.4], [0.6, 2.5]], [[0.2, 33.0], [-0.5, 1.49]]]).reshape(1, 2, 2, 2).requires_grad_()
    z = prior(y)
    assert z.flatten().tolist() == [-31.0, -1.0, 1.0, 2.0, 0.0, 31.0, -0.0, 1.0]
    z.sum().backward()
    assert y.grad.flatten().tolist() == [1.0] * 8
    assert prior.bits().shape == (1,) and prior.bits().item() > 0


def test_rate_loss_trains_the_prior_but_moves_the_code_only_with_lmbda():
    prior = FactorizedPrior(1).train()
    y = torch.randn(8, 1, 2, 2, requires_grad=True)
    prior(y)
    prior.rate_loss(0.0).backward()
    assert y.grad is None or float(y.grad.abs().sum()) == 0.0
    assert float(prior.matrices[0].grad.abs().sum()) > 0
    y.grad = None
    prior(y)
    prior.rate_loss(0.1).backward()
    assert float(y.grad.abs().sum()) > 0


def test_measured_stream_is_near_the_estimate_and_round_trips():
    prior, y = _trained_prior()
    z = prior(y[:64]).detach()
    streams = encode_symbols(z, prior)
    est = prior.bits()
    measured = torch.tensor([8.0 * len(s) for s in streams])
    # the coder's flush costs at most a word (32 bits) over the estimate; never far below it
    assert (measured <= est + 40).all() and (measured >= est - 8).all()
    back = decode_symbols(streams, prior, (3, 2, 2))
    assert torch.equal(back, z)


def test_tables_unset_is_a_clear_error():
    with pytest.raises(CodecError, match="integer tables are not set"):
        encode_symbols(torch.zeros(1, 2, 2, 2), FactorizedPrior(2))


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend"])
def test_corrupted_streams_raise_never_a_silent_code(damage):
    prior, y = _trained_prior()
    z = prior(y[:32]).detach()
    streams = encode_symbols(z, prior)
    failures = 0
    for i, s in enumerate(streams):
        bad = bytearray(s)
        if damage == "flip":
            bad[len(bad) // 2] ^= 0x5A
        elif damage == "truncate":
            bad = bad[:-1]
        else:
            bad += b"\x07"
        try:
            back = decode_symbols([bytes(bad)], prior, (3, 2, 2))
        except EntropyError as e:
            assert f"{len(bad)} bytes" in str(e)
            failures += 1
        else:  # decoding may succeed only to a DIFFERENT valid stream's code, never to this one
            assert not torch.equal(back, z[i:i + 1])
    assert failures >= len(streams) // 2


def test_entropy_frames_version_2_round_trip_and_v1_frames_still_read():
    streams = [b"", b"\x01" * 3, bytes(range(200))]  # a 200-byte stream needs a 2-byte varint
    buf = wire.encode_streams(streams, (3, 64, 2, 2), PAIR)
    assert buf[4] == wire.ENTROPY_VERSION and buf[5] == 2
    frame, back = wire.decode_streams(buf, expected_pair_id=PAIR)
    assert back == streams and frame.shape == (3, 64, 2, 2)
    assert frame.payload_bytes == 1 + 1 + 3 + 2 + 200
    old = wire.encode_digital(torch.tensor([[1, 2, 3]]), 8, PAIR)
    assert old[4] == 1 and wire.decode(old)[1].tolist() == [[1, 2, 3]]
    with pytest.raises(WireError, match="entropy-coded streams"):
        wire.decode(buf)
    with pytest.raises(WireError, match="not entropy-coded"):
        wire.decode_streams(old)


def test_entropy_frame_damage_is_refused_by_the_wire():
    buf = bytearray(wire.encode_streams([b"\x10\x20\x30", b"\x40"], (2, 1, 2, 2), PAIR))
    with pytest.raises(WireError, match="truncated"):
        wire.decode_streams(bytes(buf[:-1]))
    flipped = bytearray(buf)
    flipped[-1] ^= 1
    with pytest.raises(WireError, match="CRC"):
        wire.decode_streams(bytes(flipped))
    with pytest.raises(WireError, match="outside"):
        wire.encode_streams([b"\x00" * 100], (1, 1, 2, 2), PAIR)  # more than 16 bits a symbol can take


def _entropy_codec():
    cfg = plan_codec((32, 4, 4), ratio=8, preset="entropy")
    codec = build_codec(cfg).eval()
    update_tables(codec)
    return codec


def test_codec_compress_receive_is_exact_and_tables_reach_the_decoder():
    codec = _entropy_codec()
    tables = [m for m in codec.decoder.modules() if isinstance(m, SymbolTables)]
    assert len(tables) == 1 and torch.equal(tables[0].counts, find_prior(codec).counts)
    f = torch.relu(torch.randn(4, 32, 4, 4))
    none = create_channel("none")
    frame = codec.compress(f, 0.0, none, PAIR)
    z = codec.encoder(f, 0.0)
    assert torch.equal(codec.receive(frame, 0.0, none, PAIR), z)
    assert torch.equal(codec.decompress(frame, 0.0, none, PAIR), codec.decoder(z, 0.0))
    assert torch.equal(z, z.round()) and z.abs().max() <= SUPPORT


def test_entropy_preset_refuses_prefix_token_layouts():
    from bnpp_cli.split.layouts import FeatureLayout

    layout = FeatureLayout("tokens", grid=(4, 4), prefix_tokens=1)
    with pytest.raises(CodecError, match="prefix"):
        build_codec(plan_codec((17, 32), layout=layout, ratio=8, preset="entropy"))


_WRITER = """
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
from bnpp_cli.codec.entropy import FactorizedPrior, encode_symbols
torch.manual_seed(3)
prior = FactorizedPrior(3)
with torch.no_grad():
    for m in prior.matrices:
        m.add_(torch.randn_like(m) * 0.3)
prior.update_tables()
z = torch.randint(-4, 5, (16, 3, 2, 2)).float()
torch.save({"counts": prior.counts, "z": z, "streams": encode_symbols(z, prior)}, sys.argv[1])
"""

_READER = """
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
from bnpp_cli.codec.entropy import SymbolTables, decode_symbols, encode_symbols
saved = torch.load(sys.argv[1], weights_only=True)
tables = SymbolTables(3)
tables.counts.copy_(saved["counts"])
back = decode_symbols(saved["streams"], tables, (3, 2, 2))
assert torch.equal(back, saved["z"]), "decoded code differs"
assert encode_symbols(saved["z"], tables) == saved["streams"], "re-encoded streams differ"
print("ok", sum(len(s) for s in saved["streams"]))
"""


def test_streams_decode_bit_exactly_in_another_process_at_another_thread_count(tmp_path):
    path = tmp_path / "streams.pt"
    subprocess.run([sys.executable, "-c", _WRITER, str(path), "1"], check=True, timeout=120)
    out = subprocess.run([sys.executable, "-c", _READER, str(path), "2"], check=True, timeout=120,
                         capture_output=True, text=True).stdout.split()
    assert out[0] == "ok" and int(out[1]) > 16


def test_capacity_numbers():
    assert capacity.capacity_awgn(20.0) == pytest.approx(0.5 * math.log2(101.0))
    assert capacity.capacity_awgn(0.0) == pytest.approx(0.5)
    assert capacity.capacity_bec(0.1) == pytest.approx(0.9)
    assert capacity.capacity_bsc(0.11) == pytest.approx(0.5, abs=0.001)
    assert capacity.channel_uses(64, "awgn", 10.0) == pytest.approx(64 / (0.5 * math.log2(11.0)))
    assert capacity.outage("awgn", 10.0, 9.9) and not capacity.outage("awgn", 10.0, 10.0)
    assert capacity.rayleigh_outage(10.0, 10.0) == pytest.approx(1 - math.exp(-1))
    assert capacity.rayleigh_outage(10.0, 30.0) == pytest.approx(1 - math.exp(-0.01))
    assert capacity.expected_top1(0.9, 10, 0.5) == pytest.approx(0.5)
    with pytest.raises(Exception, match="valid: awgn, bec, bsc"):
        capacity.capacity("rayleigh", 10.0)


@pytest.mark.slow
def test_cli_fit_and_eval_report_measured_bits(tmp_path):
    data = tiny_npz(tmp_path / "d.npz")
    runner = CliRunner()
    base = ["fit", "test_resnet", "--num-classes", "10", "--img-size", "32", "--split", "layer2", "--ratio", "8",
            "--data", str(data), "--codec-epochs", "1", "--batch-size", "16", "--preset", "entropy"]
    bad = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--channel", "awgn"])
    assert bad.exit_code == 2 and "--channel none" in bad.output
    ok = runner.invoke(app, [*base, "--out", str(tmp_path / "run"), "--channel", "none", "--lmbda", "0.02"])
    assert ok.exit_code == 0, ok.output
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["fit"]["lmbda"] == 0.02 and cfg["codec"]["preset"] == "entropy"
    result = evaluate_run(EvalConfig(run=str(tmp_path / "run"), data=str(data)))
    assert result.bits_per_image == 8 * result.bytes_per_image
    assert result.frame_bytes_per_image > result.bytes_per_image  # header + varint
    assert abs(result.bits_per_image - result.estimated_bits_per_image) < 40
    assert result.encode_ms_per_image > 0 and result.decode_ms_per_image > 0
    # a coded stream is reported in its measured bits, with the bit ratio they give (not as analog symbols)
    elements = math.prod(result.feature_shape)
    assert result.bit_ratio == pytest.approx(32 * elements / result.bits_per_image)
    shown = runner.invoke(app, ["eval", str(tmp_path / "run"), "--data", str(data), "--json", str(tmp_path / "e.json")])
    text = " ".join(shown.output.split())
    assert shown.exit_code == 0 and f"coded in {result.bits_per_image:.1f} bits/image (measured)" in text, text
    assert "x bandwidth" not in text and "condition ()" not in text
    assert json.loads((tmp_path / "e.json").read_text())["bit_ratio"] == pytest.approx(result.bit_ratio)


def test_eval_reports_measured_bits_for_a_fixed_length_code(fitted):
    run = fitted(channel="bec", condition=0.01)
    result = evaluate_run(EvalConfig(run=str(run.run), data=str(run.data), conditions=[0.0], draws=1))
    assert result.bytes_per_image == result.payload_bytes == math.ceil(result.code_symbols * 8 / 8)
    assert result.bits_per_image == 8 * result.payload_bytes
    assert result.estimated_bits_per_image is None
    assert result.frame_bytes_per_image == result.payload_bytes + wire.header_length(4)
    np.testing.assert_allclose(result.bits_per_image / result.code_symbols, 8.0)


def test_exported_halves_send_streams_and_match_the_run(fitted, tmp_path):
    from bnpp_cli import export_halves
    from bnpp_cli.deploy.halves import load_pair
    from bnpp_cli.run.pipeline import load_run

    fit = fitted(channel="none", condition=None, preset="entropy", ratio=8.0)
    export_halves(fit.run, tmp_path / "deploy")
    device, edge = load_pair(tmp_path / "deploy")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        frame = device.compress(x)
        logits = edge.decompress(frame)
        expected = load_run(fit.run).pipeline(x, 0.0)
    parsed, streams = wire.decode_streams(frame)
    assert parsed.kind == "entropy" and len(streams) == 3
    assert torch.equal(logits, expected)  # the halves' integer code is the run's, bit for bit
    broken = bytearray(frame)
    broken[-1] ^= 0xFF
    with pytest.raises(WireError, match="CRC"):
        edge.decompress(bytes(broken))
    with pytest.raises(WireError, match="truncated"):
        edge.decompress(frame[:-2])


def test_histogram_counts_every_symbol_per_channel():
    prior = FactorizedPrior(2)
    z = torch.tensor([[[[0.0, 1.0]], [[-2.0, 40.0]]], [[[0.0, 0.0]], [[-2.0, -1.0]]]])  # (2, 2, 1, 2)
    h = prior.histogram(z)
    assert h.shape == (2, 2 * SUPPORT + 1) and h.sum() == 8
    assert h[0, SUPPORT] == 3 and h[0, SUPPORT + 1] == 1  # channel 0: three zeros, one 1
    assert h[1, SUPPORT - 2] == 2 and h[1, SUPPORT - 1] == 1 and h[1, 2 * SUPPORT] == 1  # 40 clamps to B


def test_calibrated_tables_are_the_codes_histogram_and_spend_fewer_bits():
    from bnpp_cli.codec.calibrate import calibrate_tables

    # a random-init entropy codec codes random features with integers over several bins
    codec = build_codec(plan_codec((16, 4, 4), ratio=4, preset="entropy"))
    codec.train()
    g = torch.Generator().manual_seed(0)
    f = torch.randn(300, 16, 4, 4, generator=g)
    prior = find_prior(codec)
    update_tables(codec)  # the density's tables, as every save before the final one
    density_counts = prior.counts.clone()
    record = calibrate_tables(codec, f[:200].split(64))  # the first 200 images' features, in batches
    assert codec.training  # the caller's mode is restored
    codec.eval()
    with torch.no_grad():
        z = codec.encoder(f[:200], 0.0)
    hist = prior.histogram(z)
    assert record["images"] == 200 and int((hist > 0).sum(1).max()) >= 3  # not a degenerate code
    positions = hist.sum(1, keepdim=True) / 200
    expected = integer_tables(hist + positions * prior.pmf())
    assert torch.equal(prior.counts, expected)
    spent = lambda counts: float(-(hist * (counts.double() / 2**PRECISION).log2()).sum() / 200)  # noqa: E731
    assert spent(prior.counts) == pytest.approx(record["bits_per_image_estimate"], rel=1e-6)
    assert spent(prior.counts) < spent(density_counts)  # the code's own histogram beats the untrained density
    decoder_tables = next(m for m in codec.modules() if isinstance(m, SymbolTables))
    assert torch.equal(decoder_tables.counts, prior.counts)  # the edge decodes with the same tables
    streams = encode_symbols(z, prior)  # and the real coder round-trips with them
    assert torch.equal(decode_symbols(streams, decoder_tables, z.shape[1:]), z)


def test_a_fitted_entropy_run_records_its_tables(fitted):
    fit = fitted(channel="none", condition=None, preset="entropy", ratio=8.0)
    record = fit.result.validation["tables"]
    assert record["source"].startswith("histogram") and record["images"] > 0
    assert record["bits_per_image_estimate"] <= record["density_bits_per_image_estimate"] + 1e-6
