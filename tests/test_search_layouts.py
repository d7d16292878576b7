"""bnpp search over every feature layout the codec plans: which split points are candidates (the
codec's own planning decides), a ViT searched over its token features, and the refusals that come
before any work (no codable split point; a preset that cannot be fitted over the channel)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from bnpp_cli.cli import app
from bnpp_cli.codec.presets import list_presets
from bnpp_cli.errors import BnppError, CodecError
from bnpp_cli.link.config import ChannelConfig
from bnpp_cli.run.candidates import choose_candidates, unplannable
from bnpp_cli.run.measure import sent_per_image
from bnpp_cli.run.search import SearchConfig, search_split_rate
from bnpp_cli.split.backbone import BackboneConfig
from bnpp_cli.split.graph import SplitPoint
from bnpp_cli.split.layouts import FeatureLayout

from .helpers import tiny_npz


# ---- which points are candidates: the codec's planning, for every layout ------------------------
@pytest.mark.parametrize("shape, layout, largest", [
    ((32, 8, 8), FeatureLayout("nchw"), 128.0),  # 2048 elements over C' = 1 on the halved 4 x 4 map
    ((8, 8, 32), FeatureLayout("nhwc"), 128.0),
    ((5, 64), FeatureLayout("tokens", grid=(2, 2), prefix_tokens=1), 160.0),  # 320 / (halved 1 x 1 + 1 prefix)
    ((10, 64), FeatureLayout("tokens"), 128.0),  # a sequence: 640 / 5 positions (T halved)
    ((64,), FeatureLayout("vector"), 64.0),  # never halved: one code channel at most 64x
])
def test_unplannable_is_the_codecs_planning_on_every_layout(shape, layout, largest):
    assert unplannable(shape, layout, [4.0], "bnpp", None, False) == {}  # every layout plans at 4x
    why = unplannable(shape, layout, [4.0, 10_000.0], "bnpp", None, False)
    assert list(why) == [10_000.0] and "cannot be met" in why[10_000.0]
    assert f"the largest ratio here is {largest:g}" in why[10_000.0]
    # bits per image on an 8-bit digital channel: 64 elements x 8 bits / 128 bits = ratio 4
    assert unplannable((64,), FeatureLayout("vector"), [128.0, 4.0], "bnpp", 8, True) == \
        {4.0: unplannable((64,), FeatureLayout("vector"), [128.0], "bnpp", None, False)[128.0]}


def _point(name: str, shape, layout: FeatureLayout | None) -> SplitPoint:
    return SplitPoint(name=name, aliases=(), index=0, node=name, shape=tuple(shape), coarse=True, layout=layout)


def test_choose_candidates_keeps_the_codable_and_refuses_none():
    tokens = FeatureLayout("tokens", grid=(2, 2), prefix_tokens=1)
    points = [_point("a", (5, 64), tokens), _point("b", (64,), FeatureLayout("vector")), _point("c", (5, 64), tokens)]
    # the vector (at most 64x) is a candidate at 4x, not at 100x (skipped there); the token points at both
    chosen, why = choose_candidates(points, [1, 2, 3], 4, [4.0, 100.0], "bnpp", None, False, None, "m")
    assert [p.name for p in chosen] == ["a", "b", "c"] and why["a"] == {} and why["c"] == {}
    assert list(why["b"]) == [100.0] and "the largest ratio here is 64" in why["b"][100.0]
    chosen, why = choose_candidates(points, [1, 2, 3], 4, [100.0, 150.0], "bnpp", None, False, 1, "m")
    assert [p.name for p in chosen] == ["c"]  # no vector at either: 'auto' 1 takes the nearest the model's MACs
    assert why["c"] == {}
    with pytest.raises(BnppError, match=r"^m: the bnpp codec cannot be planned at any of the 3 split points "
                                        r"for ratios 1000 \(e\.g\. a: ratio 1000 cannot be met"):
        choose_candidates(points, [1, 2, 3], 4, [1000.0], "bnpp", None, False, None, "m")
    with pytest.raises(BnppError, match=r"^m: no split point has a feature layout the codec plans "
                                        r"\(nchw, nhwc, tokens, vector\)") as e:
        choose_candidates([], [], 4, [4.0], "bnpp", None, False, 4, "m")
    assert "bnpp profile m" in e.value.hint


def test_sent_per_image_is_what_the_evaluation_measured():
    ev = SimpleNamespace(code_symbols=24, bits_per_image=None, results=[{"symbols_per_image": 24, "payload_bits": None}])
    assert sent_per_image(ev) == (24, 24 * 32)  # analog: float32 symbols
    ev.results = [{"symbols_per_image": 24, "payload_bits": 96}]  # 4-bit levels, packed
    assert sent_per_image(ev) == (24, 96)
    ev.results, ev.bits_per_image = [], 150.5  # a noiseless link: an entropy code's measured streams
    assert sent_per_image(ev) == (24, 150.5)


# ---- a ViT: token features ---------------------------------------------------------------------
def _vit(tmp: Path, **kw) -> SearchConfig:
    opts = dict(backbone=BackboneConfig("test_vit", num_classes=10, img_size=32), data=str(tiny_npz(tmp / "d.npz", n=64)),
                out=str(tmp / "s"), channel=ChannelConfig("awgn", 20.0), auto_splits=2, rates=[4.0], first_images=32,
                rounds=1, batch_size=16, max_drop=100.0, draws=1, val_fraction=0.25)
    opts.update(kw)
    return SearchConfig(**opts)


@pytest.mark.slow
def test_vit_search_fits_token_feature_candidates(tmp_path):
    events = []
    result = search_split_rate(_vit(tmp_path), lambda e, i: events.append(e))
    # test_vit at 32 x 32: 2 x 2 patches of width 64 and a class token; 'auto' 2 over its 7 blocks / norm
    assert [s["name"] for s in result.splits] == ["blocks.2", "norm"]
    assert all(s["shape"] == [5, 64] and s["layout"] == "tokens 2x2 + 1 prefix" for s in result.splits)
    assert events.count("fit") == 2 and result.skipped == []
    for c in result.candidates:  # 320 elements at ratio 4: 80 analog symbols, float32 on the wire
        assert (c["symbols"], c["bits_per_image"], c["bandwidth_ratio"]) == (80, 80 * 32, 4.0)
        assert Path(c["run"], "codec.safetensors").is_file()
    assert result.recommendation["candidate"]["split"] in ("blocks.2", "norm")


# ---- refused before any work --------------------------------------------------------------------
def test_no_codable_split_point_is_an_error_and_nothing_is_written(tmp_path):
    config = _vit(tmp_path, rates=[1000.0])
    events = []
    with pytest.raises(BnppError, match=r"^test_vit: the bnpp codec cannot be planned at any of the 7 split points"):
        search_split_rate(config, lambda e, i: events.append(e))
    assert events == [] and not Path(config.out).exists()
    r = CliRunner().invoke(app, ["search", "test_vit", "--num-classes", "10", "--img-size", "32", "--data", config.data,
                                 "--out", config.out, "--ratios", "1000"])
    assert r.exit_code == 2 and "Error: test_vit: the bnpp codec cannot be planned" in r.output
    assert "Hint: try other rates" in r.output and "Traceback" not in r.output
    assert not Path(config.out).exists()


def test_preset_and_channel_are_checked_before_the_model_is_loaded(tmp_path, monkeypatch):
    import bnpp_cli.run.search as search

    def no_model(*a, **kw):
        raise AssertionError("the model was loaded before the preset x channel check")

    monkeypatch.setattr(search, "load_backbone", no_model)
    config = _vit(tmp_path, preset="entropy")  # the default analog channel: the fit's own check refuses it
    with pytest.raises(CodecError, match="the entropy preset codes over an error-free link, not channel 'awgn'"):
        search_split_rate(config)
    with pytest.raises(CodecError, match="chooses its code length per condition on validation images"):
        search_split_rate(_vit(tmp_path, preset="variable", val_fraction=0.0))
    with pytest.raises(CodecError, match="unknown codec preset 'nope'"):
        search_split_rate(_vit(tmp_path, preset="nope"))
    assert not Path(config.out).exists()
    r = CliRunner().invoke(app, ["search", "test_resnet", "--data", config.data, "--out", config.out,
                                 "--preset", "entropy"])
    assert r.exit_code == 2 and "error-free link" in r.output and "Hint: use --channel none" in r.output
    assert not Path(config.out).exists()


def test_preset_help_names_every_registered_preset():
    r = CliRunner().invoke(app, ["search", "--help"])
    assert r.exit_code == 0
    text = " ".join(r.output.split())
    assert f"Codec preset: {', '.join(list_presets())}." in text and len(list_presets()) >= 4
