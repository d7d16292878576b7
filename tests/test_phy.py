"""The radio links through Sionna PHY: OFDM over TDL fading (analog), 5G NR LDPC + QAM (digital)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from bnpp_cli.configs import from_dict, to_dict
from bnpp_cli.errors import ChannelError
from bnpp_cli.link.config import ChannelConfig
from bnpp_cli.link.registry import create_channel

pytest.importorskip("sionna.phy")

from bnpp_cli.link.ldpc import BlockPlan, LDPCChannel, LDPCLink  # noqa: E402
from bnpp_cli.link.phy import OFDMChannel, OFDMLink, PhyConfig  # noqa: E402


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ofdm(**phy) -> OFDMChannel:
    return create_channel("ofdm", phy=PhyConfig(**phy))


# -- the analog OFDM channel ---------------------------------------------------------------------

def test_symbols_have_mean_power_one_and_round_trip():
    z = torch.rand(5, 7, 3, 3, generator=gen(1))  # 63 real symbols: an odd count, one zero pads it
    c, scale = OFDMChannel.to_symbols(z)
    assert c.shape == (5, 32) and c.dtype == torch.complex64
    assert c.abs().pow(2).mean(1).tolist() == pytest.approx([1.0] * 5, rel=1e-5)
    assert torch.allclose(OFDMChannel.from_symbols(c, scale, z), z, atol=1e-6)


def test_snr_is_es_over_n0_per_resource_element():
    """No fading, perfect CSI: the equalised symbol is the sent one plus CN(0, N0), N0 = 10^(-SNR/10)."""
    ch = ofdm(profile="none", csi="perfect")
    z = torch.rand(64, 16, 4, 4, generator=gen(2))
    for snr in (0.0, 10.0, 20.0):
        z_hat = ch(z, ch.param_from_condition(snr), generator=gen(3))
        _, scale = OFDMChannel.to_symbols(z)
        noise = ((z_hat - z).flatten(1) * scale).pow(2).mean() * 2  # on the sent scale, two real dimensions
        assert float(noise) == pytest.approx(10 ** (-snr / 10), rel=0.05)


def test_tdl_gain_has_unit_mean_power_and_speed_decorrelates_a_slot():
    link = OFDMLink(PhyConfig(profile="C", speed_mps=3.0))
    link.tdl.generator = gen(4)
    h = link.generate(400)  # (400, 1, 1, 1, 1, 14, 12)
    link.tdl.generator = None
    assert float(h.abs().pow(2).mean()) == pytest.approx(1.0, rel=0.15)
    slow = (h[..., 0, :] - h[..., -1, :]).abs().pow(2).mean()
    fast = OFDMLink(PhyConfig(profile="C", speed_mps=300.0))
    fast.tdl.generator = gen(4)
    hf = fast.generate(400)
    assert float((hf[..., 0, :] - hf[..., -1, :]).abs().pow(2).mean()) > 10 * float(slow)  # Doppler within a slot


def test_channel_uses_count_whole_slots_with_their_pilots():
    ch = ofdm()  # 12 subcarriers x 14 symbols, pilots on 2: 168 resource elements, 144 for data
    assert (ch.phy.slot_res, ch.phy.data_res, ch.phy.pilot_res) == (168, 144, 24)
    assert ch.channel_uses(288) == 168  # 144 complex symbols: one slot
    assert ch.channel_uses(289) == 336  # 145: two slots
    z = torch.rand(2, 64, generator=gen())
    ch(z, 0.1, generator=gen())
    assert ch.eval_row(0.1)["channel_uses_per_image"] == 168


@pytest.mark.parametrize("phy", [dict(profile="C", csi="ls"), dict(profile="A30", csi="perfect"),
                                 dict(profile="none", csi="ls")])
def test_gradients_reach_the_encoder_through_ofdm(phy):
    encoder = torch.nn.Conv2d(8, 4, 1)
    f = torch.randn(3, 8, 4, 4, generator=gen(5))
    ch = ofdm(speed_mps=30.0, **phy)
    z_hat = ch(torch.sigmoid(encoder(f)), torch.tensor([0.1, 0.3, 0.01]), generator=gen(6))
    z_hat.pow(2).sum().backward()
    g = encoder.weight.grad
    assert g is not None and torch.isfinite(g).all() and float(g.abs().sum()) > 0


@pytest.mark.parametrize("name", ["ofdm", "ldpc"])
def test_a_seed_fixes_the_link(name):
    ch = create_channel(name, phy=PhyConfig(block_bits=256))
    z = torch.rand(2, 8, 2, 2, generator=gen(7))
    param = ch.param_from_condition(6.0)
    a, b = ch(z, param, generator=gen(8)), ch(z, param, generator=gen(8))
    assert torch.equal(a, b)
    other = create_channel(name, phy=PhyConfig(block_bits=256))  # another instance (the edge's): same pilots
    assert torch.equal(other(z, param, generator=gen(8)), a)
    if name == "ofdm":
        assert not torch.equal(ch(z, param, generator=gen(9)), a)


def test_the_phy_config_is_stored_and_checked():
    config = ChannelConfig.for_condition("ofdm", {"snr_db": [0.0, 20.0]}, phy=PhyConfig(profile="B", speed_mps=30.0))
    d = to_dict(config)
    assert d["phy"]["profile"] == "B" and d["phy"]["speed_mps"] == 30.0 and d["phy"]["pilot_symbols"] == [2, 11]
    assert from_dict(ChannelConfig, d) == config
    assert ChannelConfig.for_condition("awgn", {"snr_db": 10.0}).phy is None
    assert ChannelConfig.for_condition("ldpc", {"snr_db": 10.0}).phy == PhyConfig()
    with pytest.raises(ChannelError, match="TDL profile 'F' is unknown; valid: none, A, B"):
        ChannelConfig.for_condition("ofdm", {"snr_db": 10.0}, phy=PhyConfig(profile="F"))
    with pytest.raises(ChannelError, match="csi 'mmse' is unknown; valid: ls, perfect"):
        PhyConfig(csi="mmse").check()


def test_cli_phy_flags():
    from bnpp_cli.cli.options import channel_config

    config = channel_config("ofdm", "0:20", None, None, 8, ["profile=A", "speed_mps=60", "pilot_symbols=3,10"])
    assert config.phy.profile == "A" and config.phy.speed_mps == 60.0 and config.phy.pilot_symbols == [3, 10]
    assert config.train_condition == [0.0, 20.0]
    with pytest.raises(ChannelError, match="--phy 'speed=3': expected key=value with a key of profile"):
        channel_config("ofdm", "10", None, None, 8, ["speed=3"])
    with pytest.raises(ChannelError, match="--phy applies to the radio links"):
        channel_config("awgn", "10", None, None, 8, ["profile=A"])


# -- refused without the extra --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ofdm", "ldpc"])
def test_refused_in_one_line_without_sionna(monkeypatch, name):
    monkeypatch.setitem(sys.modules, "sionna", None)  # import sionna.phy now raises ImportError
    monkeypatch.setitem(sys.modules, "sionna.phy", None)
    with pytest.raises(ChannelError) as e:
        ChannelConfig.for_condition(name, {"snr_db": 10.0})
    assert "pip install 'bnpp[phy]'" in str(e.value) and "\n" not in str(e.value)
    assert f"channel '{name}' needs Sionna PHY" in str(e.value)
    assert create_channel("awgn")(torch.zeros(1, 4), 0.0).shape == (1, 4)  # the others do not need it


def test_import_bnpp_does_not_import_sionna():
    code = "import sys, bnpp_cli, bnpp_cli.link.registry, bnpp_cli.link.config; print('sionna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- the digital LDPC link -------------------------------------------------------------------------

def test_block_plan_segments_and_rate_matches():
    plan = BlockPlan(2048, PhyConfig(block_bits=1024, crc="CRC16", code_rate=0.5, modulation_bits=4))
    assert (plan.blocks, plan.payload, plan.k) == (3, 683, 699)  # 1008 payload bits at most: three equal blocks
    assert plan.n % 4 == 0 and plan.n == 1400 and plan.symbols == 3 * 350
    ch = create_channel("ldpc", bits=8, phy=PhyConfig(link="awgn", block_bits=1024))
    assert ch.channel_uses(256) == plan.symbols  # 256 levels x 8 bits
    assert create_channel("ldpc", phy=PhyConfig(link="ofdm", block_bits=1024)).channel_uses(256) == 8 * 168


def test_a_failed_block_becomes_an_erasure(monkeypatch):
    ch = create_channel("ldpc", bits=8, phy=PhyConfig(link="awgn", block_bits=80))  # 64 payload bits a block
    z = torch.rand(2, 4, 4, generator=gen(10))  # 16 levels x 8 bits = 128 bits: two blocks per image
    ok = torch.tensor([[True, False], [True, True]])
    monkeypatch.setattr(LDPCLink, "transmit", lambda self, bits, n0, generator=None: (bits, ok))
    z_hat = ch(z, ch.param_from_condition(5.0), generator=gen())
    q = torch.round(z * 255) / 255
    assert torch.equal(z_hat[1], q[1])  # both blocks passed their CRC
    assert torch.equal(z_hat[0].flatten()[:8], q[0].flatten()[:8])  # block 0: levels 0-7 (bits 0-63)
    assert torch.allclose(z_hat[0].flatten()[8:], torch.full((8,), 127.5 / 255))  # block 1 lost: every bit erased
    assert ch.eval_row(ch.param_from_condition(5.0))["block_error_rate"] == 0.25


def test_ldpc_link_decodes_above_and_erases_below_its_cliff():
    ch = create_channel("ldpc", bits=8, phy=PhyConfig(link="awgn", modulation_bits=2, block_bits=288))
    z = torch.rand(8, 4, 2, 2, generator=gen(11))
    q = torch.round(z * 255) / 255
    assert torch.equal(ch(z, ch.param_from_condition(20.0), generator=gen()), q)
    assert torch.allclose(ch(z, ch.param_from_condition(-10.0), generator=gen()), torch.full_like(z, 0.5))
    assert ch.eval_row(ch.param_from_condition(-10.0))["block_error_rate"] == 1.0
    assert ch.eval_row(ch.param_from_condition(20.0))["block_error_rate"] == 0.0
    z.requires_grad_(True)
    ch(z, 0.1, generator=gen()).sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through


def test_ldpc_bler_agrees_with_sionnas_own_simulation():
    """k = 256 + CRC16 = 272, n = 544 (rate 1/2), 16-QAM over AWGN at Eb/N0 = 3.5 dB: our link and
    Sionna's chain (CRCEncoder, LDPC5GEncoder, Mapper, AWGN, Demapper, LDPC5GDecoder, CRCDecoder,
    ebnodb2no) on 400 blocks each agree within 0.1 (the binomial spread of a difference is ~0.03)."""
    from sionna.phy import config as sionna_config
    from sionna.phy.channel import AWGN
    from sionna.phy.fec.crc import CRCDecoder, CRCEncoder
    from sionna.phy.fec.ldpc import LDPC5GDecoder, LDPC5GEncoder
    from sionna.phy.mapping import Demapper, Mapper
    from sionna.phy.utils import ebnodb2no

    phy, ebno_db, blocks, m = PhyConfig(link="awgn", modulation_bits=4, code_rate=0.5, block_bits=1024), 3.5, 400, 4
    plan = BlockPlan(256, phy)
    assert (plan.k, plan.n, plan.blocks) == (272, 544, 1)
    n0 = float(ebnodb2no(ebno_db, m, plan.k / plan.n))
    link = LDPCLink(plan, phy)
    bits = torch.randint(0, 2, (blocks, 256), generator=gen(12))
    _, ok = link.transmit(bits, torch.full((blocks,), n0), gen(13))
    ours = 1.0 - float(ok.float().mean())

    torch_state = torch.get_rng_state()
    sionna_config.seed = 13  # Sionna's own generators (this reseeds torch's default one: restored below)
    crc = CRCEncoder("CRC16")
    enc = LDPC5GEncoder(plan.k, plan.n, num_bits_per_symbol=m)
    x = Mapper("qam", m)(enc(crc(bits.float())))
    llr = Demapper("app", "qam", m)(AWGN()(x, n0), n0)
    _, ok_ref = CRCDecoder(crc)(LDPC5GDecoder(enc, hard_out=True)(llr))
    theirs = 1.0 - float(ok_ref.float().mean())
    sionna_config.seed = None
    torch.set_rng_state(torch_state)
    assert 0.05 < theirs < 0.95  # in the waterfall, where the comparison means something
    print(f"BLER at Eb/N0 {ebno_db} dB: bnpp {ours:.3f}, Sionna {theirs:.3f}")
    assert ours == pytest.approx(theirs, abs=0.1)
    # the channel's condition is Es/N0: Eb/N0 + 10 log10(m r)
    ch = LDPCChannel(bits=8, phy=phy)
    assert ch.param_from_condition(ebno_db + 10 * math.log10(m * plan.rate)) ** 2 == pytest.approx(n0, rel=1e-5)


# -- through fit and eval ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ldpc", "ofdm"])
def test_eval_reports_channel_uses_and_block_error_rate(tmp_path, name):
    from bnpp_cli.run.evaluate import EvalConfig, evaluate_run
    from bnpp_cli.run.rundir import RunDir

    from .helpers import tiny_npz, tiny_run

    tiny_run(tmp_path, channel=name, condition=[0.0, 20.0], ratio=16.0, limit=32)
    assert RunDir(tmp_path / "run").read_config().channel.phy == PhyConfig()  # stored in full
    ev = evaluate_run(EvalConfig(str(tmp_path / "run"), str(tiny_npz(tmp_path / "test.npz", n=16, seed=1)),
                                 conditions=[-10.0, 30.0], draws=1))
    low, high = ev.results
    uses = create_channel(name).channel_uses(ev.code_symbols)
    assert low["channel_uses_per_image"] == high["channel_uses_per_image"] == uses
    if name == "ldpc":
        assert low["block_error_rate"] == 1.0 and high["block_error_rate"] == 0.0
        assert low["blocks"] == 16 * low["blocks_per_image"] and 0 < low["code_rate"] <= 0.5
    else:
        assert uses == 168 * math.ceil(ev.code_symbols / 288)


def test_eval_measures_a_code_on_another_link_than_it_was_trained_on(tmp_path):
    from typer.testing import CliRunner

    from bnpp_cli.cli import app
    from bnpp_cli.errors import ChannelError
    from bnpp_cli.run.evaluate import EvalConfig, evaluate_run

    from .helpers import tiny_npz, tiny_run

    tiny_run(tmp_path, channel="ofdm", condition=[0.0, 20.0], ratio=16.0, limit=32)
    test = str(tiny_npz(tmp_path / "test.npz", n=16, seed=1))
    run = str(tmp_path / "run")
    trained = evaluate_run(EvalConfig(run, test, conditions=[10.0], draws=1))
    fast = evaluate_run(EvalConfig(run, test, conditions=[10.0], draws=1, link={"speed_mps": 120.0}))
    assert "UE speed 3 m/s" in trained.channel_definition and "UE speed 120 m/s" in fast.channel_definition
    with pytest.raises(ChannelError, match="`link` key 'speed' is not a radio link setting"):
        evaluate_run(EvalConfig(run, test, conditions=[10.0], draws=1, link={"speed": 120.0}))
    r = CliRunner().invoke(app, ["eval", run, "--data", test, "--snr", "10", "--draws", "1", "--phy", "speed_mps=120"])
    text = " ".join(r.output.split())
    assert r.exit_code == 0 and "UE speed 120 m/s" in text and "channel uses/image" in text, r.output


def test_eval_refuses_a_link_change_for_a_textbook_channel(tmp_path, fitted):
    from typer.testing import CliRunner

    from bnpp_cli.cli import app

    fit = fitted()
    r = CliRunner().invoke(app, ["eval", str(fit.run), "--data", str(fit.data), "--phy", "speed_mps=120"])
    assert r.exit_code == 2 and "--phy applies to the radio links (ofdm, ldpc), not this run's channel 'awgn'" in r.output, \
        r.output
