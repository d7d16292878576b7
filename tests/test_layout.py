"""The architecture's contracts: typed configs with one strict (de)serialisation and a schema
version, the run directory's single owner, channel-owned conditions, registered presets, the codec's
compress/decompress contract, and every registered channel x preset through fit -> export -> predict."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from bnpp_cli.codec.config import CodecConfig, plan_codec
from bnpp_cli.codec.model import build_codec
from bnpp_cli.codec.presets import CodecPreset, get_preset, list_presets, register_preset
from bnpp_cli.configs import from_dict, to_dict
from bnpp_cli.data.batching import BatchTransform
from bnpp_cli.deploy.export import export_halves
from bnpp_cli.deploy.halves import load_device
from bnpp_cli.link import wire
from bnpp_cli.deploy.predict import PredictConfig, predict
from bnpp_cli.errors import ChannelError, CodecError, ConfigError, RunError
from bnpp_cli.link.registry import CHANNELS, create_channel, list_channels
from bnpp_cli.link.config import ChannelConfig, select_condition
from bnpp_cli.link.receiver import air_generator
from bnpp_cli.run.config import SCHEMA_VERSION, FitConfig, RunConfig
from bnpp_cli.run.pipeline import load_run
from bnpp_cli.run.rundir import CONFIG_FILE, RunDir
from bnpp_cli.split.backbone import BackboneConfig


# -- typed configs ---------------------------------------------------------------------------------

def test_run_config_round_trips_as_typed_objects(fitted):
    config = RunDir(fitted().run).read_config()
    assert isinstance(config.codec, CodecConfig) and isinstance(config.channel, ChannelConfig)
    assert isinstance(config.fit, FitConfig) and config.fit.backbone.model == "test_resnet"
    assert config.schema == SCHEMA_VERSION == 2
    d = config.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain JSON types all the way down
    assert RunConfig.from_dict(d) == config
    assert d["codec"]["feature_hw"] == [4, 4] and d["fit"]["channel"] == {"name": "awgn", "train_condition": 20.0,
                                                                           "bits": 8, "phy": None}


def test_unknown_missing_and_mistyped_keys_are_refused_with_their_path(fitted):
    d = RunDir(fitted().run).read_config().to_dict()
    with pytest.raises(ConfigError, match=r"RunConfig.codec: unknown codec config keys \['depth'\]"):
        RunConfig.from_dict({**d, "codec": {**d["codec"], "depth": 3}})
    with pytest.raises(ConfigError, match=r"RunConfig.fit.backbone: unknown backbone config keys \['weights'\]"):
        RunConfig.from_dict({**d, "fit": {**d["fit"], "backbone": {**d["fit"]["backbone"], "weights": "x"}}})
    with pytest.raises(ConfigError, match=r"run config is missing keys \['split'\]"):
        RunConfig.from_dict({k: v for k, v in d.items() if k != "split"})
    with pytest.raises(ConfigError, match=r"RunConfig.num_classes: expected an integer, got '10'"):
        RunConfig.from_dict({**d, "num_classes": "10"})
    with pytest.raises(ConfigError, match=r"RunConfig.channel.bits: expected an integer, got True"):
        RunConfig.from_dict({**d, "channel": {**d["channel"], "bits": True}})


def test_schema_1_runs_still_load_and_newer_ones_are_refused(fitted, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(fitted().run, run)
    d = json.loads((run / CONFIG_FILE).read_text())
    del d["schema"]  # what bnpp 0.1.0 (sessions 1-3) wrote: the same layout without the key
    (run / CONFIG_FILE).write_text(json.dumps(d))
    old = load_run(run)
    assert old.config.schema == SCHEMA_VERSION and old.codec_config == load_run(fitted().run).codec_config
    (run / CONFIG_FILE).write_text(json.dumps({**d, "schema": 99, "bnpp_version": "9.0"}))
    with pytest.raises(RunError, match="schema 99 is newer than this bnpp's \\(2\\): written by bnpp 9.0"):
        load_run(run)


def test_configs_to_dict_and_from_dict_handle_nesting_and_optionals():
    fit = FitConfig(backbone=from_dict(BackboneConfig, {"model": "test_resnet", "num_classes": 10}),
                    split="layer2", data="d.npz", out="o", channel=ChannelConfig("bec", [0.0, 0.02], 4), ratio=None,
                    code_channels=3)
    d = to_dict(fit)
    assert d["channel"] == {"name": "bec", "train_condition": [0.0, 0.02], "bits": 4, "phy": None} and d["ratio"] is None
    back = from_dict(FitConfig, d)
    assert back == fit and back.backbone.num_classes == 10 and back.channel.train_condition == [0.0, 0.02]


def test_run_dir_is_the_only_reader_and_says_what_is_missing(fitted, tmp_path):
    with pytest.raises(RunError, match="is not a bnpp run directory"):
        RunDir(tmp_path).read_config()
    run = tmp_path / "r"
    shutil.copytree(fitted().run, run)
    (run / "codec.safetensors").unlink()
    assert RunDir(run).is_run and not RunDir(run).finished
    with pytest.raises(RunError, match="codec.safetensors is missing"):
        load_run(run)
    (run / CONFIG_FILE).write_text("{not json")
    with pytest.raises(RunError, match="is not a valid bnpp run config"):
        RunDir(run).read_config()


# -- the link owns its conditions ------------------------------------------------------------------

@pytest.mark.parametrize("name", list_channels())
def test_every_channel_names_its_condition_and_unit(name):
    ch = create_channel(name)
    expected = {"none": None, "bec": "erasure", "bsc": "flip"}.get(name, "snr_db")
    assert ch.condition_name == expected and not hasattr(ch, "condition_flag")  # flags are the CLI's
    assert ch.condition_unit == ("dB" if expected == "snr_db" else "")
    for value in ch.default_eval_conditions:
        ch.param_from_condition(value)  # every default evaluation condition is valid
    if expected == "snr_db":
        snr = "SNR" if name in ("ofdm", "ldpc") else "PSNR"  # the radio links' SNR is Es/N0, not a peak
        assert ch.format_condition(20.0) == f"{snr} 20 dB" and ch.format_train_condition() == f"{snr} 20 dB to noiseless"
        assert ch.default_eval_conditions[0] == 0.0 and ch.default_eval_conditions[-1] == 30.0
    elif expected is not None:
        assert ch.format_condition(0.01) == "p = 0.01" and ch.format_train_condition() == "p 0 to 0.01"


def test_select_condition_names_the_right_condition():
    awgn, bsc, none = create_channel("awgn"), create_channel("bsc"), create_channel("none")
    assert select_condition(awgn, {"snr_db": 12.0, "erasure": None}) == 12.0
    assert select_condition(bsc, {"snr_db": None, "flip": None}) is None
    assert select_condition(bsc, {"flip": 0.02}) == 0.02
    with pytest.raises(ChannelError, match="`erasure` does not apply to this run's channel 'awgn'") as e:
        select_condition(awgn, {"erasure": 0.1}, "this run's")
    assert e.value.hint == "use `snr_db`"
    with pytest.raises(ChannelError, match=r"`snr_db` is for awgn, awgn-power, rayleigh"):
        select_condition(bsc, {"snr_db": 10.0})
    with pytest.raises(ChannelError, match=r"`erasure` is for bec\)") as e:
        select_condition(bsc, {"erasure": 0.1})
    assert e.value.hint == "use `flip`"
    with pytest.raises(ChannelError, match="is noiseless"):
        select_condition(none, {"snr_db": 10.0})
    with pytest.raises(ChannelError, match="give one condition, not `snr_db` and `erasure`"):
        select_condition(awgn, {"snr_db": 1.0, "erasure": 0.1})
    with pytest.raises(ChannelError, match="unknown condition '--snr'"):
        select_condition(awgn, {"--snr": 1.0})
    assert ChannelConfig.for_condition("bec", {"snr_db": None, "erasure": [0.0, 0.05]}).train_condition == [0.0, 0.05]
    with pytest.raises(ChannelError, match="0.9"):
        ChannelConfig.for_condition("bec", {"erasure": 0.9})


# -- presets are registered objects ----------------------------------------------------------------

def test_presets_are_registered_objects_with_their_rules():
    assert list_presets() == ["bottlenetpp", "bnpp", "entropy", "variable"]
    with pytest.raises(CodecError, match="unknown codec preset 'bnp'") as e:
        get_preset("bnp")
    assert "bnpp" in e.value.hint
    with pytest.raises(CodecError, match="registered twice"):
        register_preset(get_preset("bnpp"))
    paper, ours = get_preset("bottlenetpp"), get_preset("bnpp")
    assert not paper.halves_thin_code(128, 4, 4, 64) and ours.halves_thin_code(128, 4, 4, 64)  # C/R = 2
    assert not ours.halves_thin_code(256, 4, 4, 64)  # C/R = 4: a plain code
    assert not ours.halves_thin_code(128, 2, 2, 64)  # the map is too small to halve
    assert (paper.recipe.lr, ours.recipe.lr) == (1e-4, 1e-3)
    assert plan_codec((128, 4, 4), ratio=64, preset="bnpp").code_shape == (8, 2, 2)
    assert plan_codec((128, 4, 4), ratio=64, preset="bottlenetpp").code_shape == (2, 4, 4)


def test_a_new_preset_plugs_in_through_the_registry():
    base = get_preset("bottlenetpp")
    preset = CodecPreset(name="test-wide", layers=base.layers, recipe=base.recipe, thin_code_channels=8,
                         decoder_condition=True, hidden_width=None, default_encoder_blocks=None)
    register_preset(preset)
    try:
        cfg = plan_codec((64, 8, 8), ratio=16, preset="test-wide")  # C/R = 4 < 8: halved by its own rule
        assert cfg.spatial_reduction and cfg.code_shape == (16, 4, 4) and cfg.decoder_condition
        assert build_codec(cfg).decoder.body[0].in_channels == 17  # C' + the condition plane
    finally:
        from bnpp_cli.codec import presets

        presets._PRESETS.pop("test-wide")


# -- the codec's compress / decompress contract ----------------------------------------------------

@pytest.mark.parametrize("channel,condition", [("awgn", 10.0), ("bec", 0.05), ("bsc", 0.02)])
def test_compress_then_decompress_is_the_simulated_link(channel, condition):
    torch.manual_seed(0)
    codec = build_codec(plan_codec((16, 6, 6), ratio=4)).eval()
    ch = create_channel(channel)
    param = ch.param_from_condition(condition)
    f = torch.rand(3, 16, 6, 6, generator=torch.Generator().manual_seed(1))
    pid = "0123456789abcdef0123456789abcdef"
    with torch.no_grad():
        frame = codec.compress(f, param, ch, pid)
        f_hat = codec.decompress(frame, param, ch, pid, seed=5, first_index=2)
        z = codec.encoder(f, param)
        z_hat = torch.cat([ch(z[i:i + 1], param, generator=air_generator(5, 2 + i)) for i in range(3)])
        assert torch.equal(f_hat, codec.decoder(z_hat, param))
    bits = 8 if ch.digital else 32
    assert len(frame) == 32 + 4 * 4 + math.ceil(3 * 4 * 6 * 6 * bits / 8)  # header + payload of the 3 codes


# -- every registered channel and preset, end to end -----------------------------------------------

def _valid_pairs() -> list[tuple[str, str]]:
    """Every registered channel x preset a fit accepts: entropy-coded presets code over the error-free
    link only (channel none; their channel code at capacity is link.capacity's); a variable-length code
    a channel whose noise per symbol does not depend on the others (not awgn-power)."""
    return [(c, p) for p in list_presets() for c in list_channels()
            if (not get_preset(p).entropy_coded or c == "none")
            and (not get_preset(p).variable_length or create_channel(c).per_symbol)]


def test_entropy_coded_presets_refuse_a_noisy_channel(tmp_path):
    from bnpp_cli.errors import BnppError
    from bnpp_cli.run.fit import fit_codec

    from .helpers import tiny_npz

    data = tiny_npz(tmp_path / "d.npz")
    for preset in (p for p in list_presets() if get_preset(p).entropy_coded):
        with pytest.raises(BnppError, match="codes over an error-free link, not channel .awgn."):
            fit_codec(FitConfig(backbone=BackboneConfig("test_resnet", num_classes=10, img_size=32), split="layer2",
                                data=str(data), out=str(tmp_path / "run"), preset=preset))
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("channel,preset", _valid_pairs())
def test_every_channel_and_preset_fits_exports_and_predicts(fitted, tmp_path, channel, preset):
    cond = {"none": None, "bec": 0.01, "bsc": 0.01}.get(channel, 20.0)
    run_dir, data, _ = fitted(channel=channel, condition=cond, preset=preset)
    res = export_halves(run_dir, tmp_path / "deploy")
    x = np.load(data)["x"][:2]
    paths = []
    for i, image in enumerate(x):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    test_cond = {"none": None, "bec": 0.05, "bsc": 0.02}.get(channel, 10.0)
    preds = predict(PredictConfig(str(tmp_path / "deploy"), condition=test_cond, top_k=3, seed=3), paths).predictions
    run = load_run(run_dir)
    device = load_device(res.device_path)
    assert run.codec_config.preset == preset and run.pipeline.channel.name == channel
    dc = run.config.data_config
    xs = BatchTransform(dc["mean"], dc["std"], augment=False)(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    param = 0.0 if test_cond is None else run.pipeline.channel.param_from_condition(test_cond)
    for i, pred in enumerate(preds):
        with torch.no_grad():
            ref = run.pipeline(xs[i:i + 1], param, air_generator(3, i)).softmax(1)[0]
        p, k = ref.topk(3)
        assert [c for c, _ in pred.top] == [run.config.classes[j] for j in k.tolist()]
        assert [v for _, v in pred.top] == pytest.approx(p.tolist(), abs=1e-6)
        with torch.no_grad():
            frame = device.compress(xs[i:i + 1], param)  # the image's own frame (an entropy code's size varies)
        assert pred.frame_bytes == len(frame) and pred.payload_bytes == len(frame) - wire.peek_header(frame)[0]
        if run.codec_config.variable_length:  # the prefix for this condition: at most the whole code export announced
            k = device.symbols(param)
            assert wire.decode(frame)[0].shape == (1, k) and pred.frame_bytes <= res.frame_bytes
        elif res.frame_bytes is not None:  # fixed-length codes: what export announced
            assert pred.frame_bytes == res.frame_bytes == res.payload_bytes + res.header_bytes
        else:
            assert run.codec_config.preset == "entropy" and pred.frame_bytes < 48 + 4 * run.codec_config.code_symbols
