"""Channel layers: noise power, bit error rates, gradients, reproducibility, conditions."""

from __future__ import annotations

import math

import pytest
import torch

from bnpp_cli.link.channels import BinaryErasureChannel, BinarySymmetricChannel, Channel, dequantize, expected_levels, quantize
from bnpp_cli.link.registry import CHANNELS, create_channel, list_channels
from bnpp_cli.errors import ChannelError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def code(shape=(16, 4, 125, 125), seed: int = 1) -> torch.Tensor:
    """A sigmoid-bounded code z in (0, 1); the default holds 1e6 elements."""
    return torch.rand(shape, generator=gen(seed))


# -- the common interface, over the whole registry ----------------------------------------------

@pytest.mark.parametrize("name", list_channels())
def test_interface(name):
    ch = create_channel(name)
    assert isinstance(ch, Channel) and ch.name == name
    assert list(ch.parameters()) == []
    assert ch.symbols_per_element == 1.0
    if ch.digital:
        assert ch.bits == ch.bits_per_element == 8
    else:
        assert ch.bits is None and ch.bits_per_element is None
    assert ch.condition_name == {"none": None, "bec": "erasure", "bsc": "flip"}.get(name, "snr_db")
    assert isinstance(ch.describe(), str) and "\n" not in ch.describe()
    z = code((4, 3, 5, 5))
    param = ch.sample_param(4, generator=gen())
    z_hat = ch(z, param, generator=gen())
    assert z_hat.shape == z.shape and torch.isfinite(z_hat).all()


@pytest.mark.parametrize("name", list_channels())
def test_eval_reproducible(name):
    ch = create_channel(name).eval()
    z = code((8, 4, 6, 6))
    param = 0.2 if ch.digital else 0.1
    a, b = ch(z, param, generator=gen(7)), ch(z, param, generator=gen(7))
    assert torch.equal(a, b)
    ch.train()
    assert torch.equal(ch(z, param, generator=gen(7)), a)  # the mode does not change the channel
    if name != "none":
        assert not torch.equal(a, ch(z, param, generator=gen(8)))


# -- analog channels ----------------------------------------------------------------------------

@pytest.mark.parametrize("psnr_db", [0.0, 10.0, 20.0])
def test_awgn_noise_power(psnr_db):
    ch = create_channel("awgn")
    sigma = ch.param_from_condition(psnr_db)
    assert sigma == pytest.approx(10 ** (-psnr_db / 20))
    z = code()
    noise_power = (ch(z, sigma, generator=gen(int(psnr_db))) - z).pow(2).mean().item()
    assert noise_power == pytest.approx(sigma**2, rel=0.02)
    assert 10 * math.log10(1 / noise_power) == pytest.approx(psnr_db, abs=0.1)


def test_awgn_per_sample_param():
    ch = create_channel("awgn")
    z = code((2, 4, 250, 250))
    noise = ch(z, torch.tensor([0.0, 0.5]), generator=gen()) - z
    assert torch.equal(noise[0], torch.zeros_like(noise[0]))
    assert noise[1].pow(2).mean().item() == pytest.approx(0.25, rel=0.02)


@pytest.mark.parametrize("snr_db", [0.0, 10.0])
def test_awgn_power_normalisation(snr_db):
    ch = create_channel("awgn-power")
    z = code((16, 4, 125, 125)) * 0.3  # any input scale
    z_norm, scale = ch.normalize(z)
    assert z_norm.pow(2).flatten(1).mean(1).tolist() == pytest.approx([1.0] * 16, rel=1e-4)
    sigma = ch.param_from_condition(snr_db)
    z_hat = ch(z, sigma, generator=gen())
    channel_noise = (z_hat - z) * scale  # the noise in the normalised (power 1) domain
    measured_snr_db = 10 * math.log10(1.0 / channel_noise.pow(2).mean().item())
    assert measured_snr_db == pytest.approx(snr_db, abs=0.1)
    assert torch.allclose(ch(z, 0.0), z, atol=1e-6)  # the receiver restores the input's scale


def test_rayleigh_gain_and_equalisation():
    ch = create_channel("rayleigh")
    h = ch.sample_gain(1_000_000, generator=gen())
    assert (h >= 0).all()
    assert h.pow(2).mean().item() == pytest.approx(1.0, abs=0.01)
    assert h.mean().item() == pytest.approx(math.sqrt(math.pi) / 2, abs=0.01)  # Rayleigh mean
    z = code((64, 4, 8, 8))
    assert torch.allclose(ch(z, 0.0, generator=gen()), z, rtol=1e-5, atol=1e-6)
    noisy = ch(z, 0.1, generator=gen())
    assert not torch.allclose(noisy, z) and torch.isfinite(noisy).all()


@pytest.mark.parametrize("name", ["awgn", "awgn-power", "rayleigh"])
def test_analog_gradient(name):
    z = code((4, 3, 5, 5)).requires_grad_()
    create_channel(name)(z, 0.1, generator=gen()).sum().backward()
    assert torch.isfinite(z.grad).all()
    if name == "awgn":
        assert torch.equal(z.grad, torch.ones_like(z))


# -- digital channels ---------------------------------------------------------------------------

def test_quantize_round_trip():
    z = torch.tensor([-0.2, 0.0, 0.5, 1.0, 1.3, 0.0019, 0.002])
    levels = quantize(z, 8)
    assert levels.tolist() == [0, 0, 128, 255, 255, 0, 1]  # round(255 z): no 256-wrap
    assert torch.equal(dequantize(levels, 8), levels.float() / 255)
    assert quantize(torch.ones(1), 4).item() == 15


def test_bec_p0_is_quantisation():
    z = code((8, 4, 16, 16))
    z_hat = create_channel("bec")(z, 0.0, generator=gen())
    assert torch.equal(z_hat, dequantize(quantize(z, 8), 8))


def test_expected_value_of_erased_bits():
    levels = torch.tensor([181, 181, 181])  # 0b10110101
    erased = torch.zeros(3, 8, dtype=torch.bool)
    erased[1, [0, 7]] = True  # lose the LSB (1) and the MSB (128)
    erased[2] = True
    # 181 - 1 - 128 + 0.5 + 64 = 116.5; everything erased -> the mid value 127.5
    assert expected_levels(levels, erased, 8).tolist() == [181.0, 116.5, 127.5]
    erased_zero = torch.zeros(1, 8, dtype=torch.bool)
    erased_zero[0, 1] = True  # an erased 0-bit of weight 2 also becomes 1
    assert expected_levels(torch.tensor([0]), erased_zero, 8).tolist() == [1.0]


@pytest.mark.parametrize("p", [0.01, 0.1, 0.3])
def test_bec_erasure_rate(p):
    ch = BinaryErasureChannel()
    levels = quantize(code((4, 4, 125, 125)), 8)  # 2.5e5 symbols = 2e6 bits
    values, erased = ch.erase_bits(levels, p, generator=gen())
    n = erased.numel()
    assert n >= 1_000_000
    rate = erased.float().mean().item()
    assert abs(rate - p) < 3 * math.sqrt(p * (1 - p) / n)
    untouched = ~erased.any(-1)
    assert torch.equal(values[untouched], levels[untouched].float())


@pytest.mark.parametrize("p", [0.01, 0.1, 0.3])
def test_bsc_flip_rate(p):
    ch = BinarySymmetricChannel()
    levels = quantize(code((4, 4, 125, 125)), 8)
    received, flipped = ch.flip_bits(levels, p, generator=gen())
    n = flipped.numel()
    rate = flipped.float().mean().item()
    assert abs(rate - p) < 3 * math.sqrt(p * (1 - p) / n)
    # the flip mask is exactly the XOR of sent and received levels
    xor = levels ^ received
    assert torch.equal(xor, (flipped.long() << torch.arange(8)).sum(-1))


def test_digital_per_sample_param():
    levels = quantize(code((2, 4, 125, 125)), 8)
    _, erased = BinaryErasureChannel().erase_bits(levels, torch.tensor([0.0, 0.2]), generator=gen())
    assert not erased[0].any()
    assert erased[1].float().mean().item() == pytest.approx(0.2, abs=0.003)


@pytest.mark.parametrize("name", ["bec", "bsc"])
def test_digital_straight_through(name):
    z = code((4, 3, 5, 5)).requires_grad_()
    z_hat = create_channel(name)(z, 0.3, generator=gen())
    z_hat.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))
    # values are on the 8-bit grid (BEC: half levels for erased bits)
    assert torch.equal(torch.round(z_hat.detach() * 255 * 2), z_hat.detach() * 255 * 2)


def test_bits_option():
    ch = create_channel("bsc", bits=4)
    assert ch.bits == 4 and ch.bits_per_element == 4
    z_hat = ch(code((4, 8)), 0.0)
    assert torch.equal(z_hat * 15, torch.round(z_hat * 15))
    with pytest.raises(ChannelError, match="bits 0"):
        create_channel("bec", bits=0)


# -- conditions and training ranges -------------------------------------------------------------

def test_param_from_condition():
    awgn = create_channel("awgn")
    assert awgn.param_from_condition(20) == pytest.approx(0.1)
    assert awgn.param_from_condition(26) == pytest.approx(0.0501, abs=1e-4)
    assert awgn.param_from_condition(float("inf")) == 0.0
    assert awgn.condition_from_param(0.1) == pytest.approx(20.0)
    assert awgn.condition_from_param(0.0) == math.inf
    assert create_channel("bec").param_from_condition(0.01) == 0.01
    assert create_channel("bsc").condition_from_param(0.2) == 0.2


@pytest.mark.parametrize("name, value", [
    ("awgn", 70.0), ("awgn", -11.0), ("rayleigh", float("nan")), ("awgn-power", float("-inf")),
    ("bec", 0.6), ("bsc", -0.1),
])
def test_condition_out_of_range(name, value):
    with pytest.raises(ChannelError, match=f"{value}.*valid is"):
        create_channel(name).param_from_condition(value)


def test_bad_param_and_unknown_name():
    with pytest.raises(ChannelError, match="sigma -0.1"):
        create_channel("awgn")(code((2, 3)), -0.1)
    with pytest.raises(ChannelError, match="does not match the batch"):
        create_channel("bec")(code((2, 3)), torch.tensor([0.1, 0.1, 0.1]))
    with pytest.raises(ChannelError, match="'awgm'.*valid: none, awgn, awgn-power") as e:
        create_channel("awgm")
    assert "awgn" in e.value.hint
    with pytest.raises(ChannelError, match="70"):
        create_channel("awgn", train_condition=70.0)


def test_sample_param_ranges():
    awgn = create_channel("awgn", train_condition=10.0)
    assert awgn.param_range == pytest.approx((0.0, 10 ** (-0.5)))
    p = awgn.sample_param(32, generator=gen())
    assert p.shape == (32,) and p.dtype == torch.float32
    assert torch.all(p == p[0])  # one value per mini-batch
    draws = torch.stack([awgn.sample_param(1, generator=gen(s)) for s in range(200)]).flatten()
    assert draws.min() >= 0 and draws.max() < 10 ** (-0.5)
    assert draws.max() > 0.9 * 10 ** (-0.5) and draws.min() < 0.1 * 10 ** (-0.5)

    pair = create_channel("rayleigh", train_condition=(20.0, 10.0))  # order does not matter
    assert pair.train_condition == (10.0, 20.0)
    q = pair.sample_param(4096, generator=gen(), per_sample=True)
    assert len(q.unique()) > 4000  # one draw per sample (float32 may collide)
    assert q.min() >= 0.1 and q.max() < 10 ** (-0.5)

    bec = create_channel("bec", train_condition=0.05)
    assert bec.param_range == (0.0, 0.05)
    bsc = create_channel("bsc", train_condition=(0.01, 0.02))
    r = bsc.sample_param(1000, gen(), per_sample=True)
    assert r.min() >= 0.01 and r.max() < 0.02


def test_default_training_ranges():
    assert create_channel("awgn").train_condition == (20.0, math.inf)  # sigma ~ U[0, 0.1)
    assert create_channel("awgn").param_range == pytest.approx((0.0, 0.1))
    assert create_channel("bec").param_range == (0.0, 0.01)  # p ~ U[0, 0.01)
    assert create_channel("none").sample_param(3).tolist() == [0.0, 0.0, 0.0]
    assert set(CHANNELS) == {"none", "awgn", "awgn-power", "rayleigh", "bec", "bsc", "ofdm", "ldpc"}
