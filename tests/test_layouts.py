"""Feature layouts across timm's registry: detection, exact adapters, codec shapes and ratios, and
fit -> export -> the deployed halves at token, channels-last and vector points."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from bnpp_cli.codec.config import CodecConfig, plan_codec
from bnpp_cli.codec.model import build_codec
from bnpp_cli.errors import CodecError
from bnpp_cli.split.backbone import BackboneConfig
from bnpp_cli.split.graph import split_model, trace_model
from bnpp_cli.split.layouts import FeatureLayout, LayoutError
from bnpp_cli.link.registry import create_channel

# (family, timm name, create kwargs, input size, layout kinds the family's points must show)
VIT = dict(depth=2, patch_size=8)
FAMILIES = [
    ("resnet", "test_resnet", {}, 32, {"nchw", "vector"}),
    ("efficientnet", "test_efficientnet", {}, 32, {"nchw", "vector"}),
    ("convnext", "test_convnext", {}, 32, {"nchw"}),
    ("byobnet", "test_byobnet", {}, 32, {"nchw"}),
    ("nfnet", "test_nfnet", {}, 32, {"nchw"}),
    ("mobilenetv3", "mobilenetv3_small_050", {}, 32, {"nchw", "vector"}),
    ("regnet", "regnetx_002", {}, 32, {"nchw"}),
    ("ghostnet", "ghostnet_050", {}, 32, {"nchw", "vector"}),
    ("rexnet (odd widths 27, 61, 185)", "rexnet_100", {}, 32, {"nchw"}),
    ("inception_v3 (odd sizes 37, 35, 17)", "inception_v3", {}, 75, {"nchw", "vector"}),
    ("coatnet (hybrid)", "test_coatnet", {}, 32, {"nchw"}),
    ("maxvit (hybrid)", "test_maxvit", {}, 32, {"nchw"}),
    ("mobilevit (hybrid)", "mobilevit_xxs", {}, 64, {"nchw"}),
    ("edgenext (hybrid)", "edgenext_xx_small", {}, 64, {"nchw"}),
    ("fastvit (hybrid)", "fastvit_t8", {}, 64, {"nchw"}),
    ("pvt_v2 (channels-last stem)", "pvt_v2_b0", {}, 64, {"nhwc", "nchw"}),
    ("mambaout (channels-last)", "test_mambaout", {}, 32, {"nhwc"}),
    ("swin (channels-last)", "swin_tiny_patch4_window7_224",
     dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=2), 32, {"nhwc"}),
    ("sequencer (channels-last)", "sequencer2d_s", dict(layers=(1, 1, 1, 1)), 32, {"nhwc"}),
    ("vit (cls token)", "test_vit", {}, 32, {"tokens+prefix"}),
    ("vit relpos (no prefix)", "test_vit_relpos", {}, 32, {"tokens", "vector"}),
    ("vit (4 register tokens)", "vit_tiny_patch16_224", dict(VIT, reg_tokens=4), 32, {"tokens+prefix"}),
    ("deit (cls + distillation)", "deit_tiny_distilled_patch16_224",
     dict(VIT, embed_dim=48, num_heads=2), 32, {"tokens+prefix"}),
    ("eva", "eva02_tiny_patch14_224", VIT, 32, {"tokens+prefix", "vector"}),
    ("beit", "beit_base_patch16_224", dict(VIT, embed_dim=48, num_heads=2), 32, {"tokens+prefix", "vector"}),
    ("cait (class token added late)", "cait_xxs24_224", dict(VIT, depth_token_only=1), 32,
     {"tokens", "tokens+prefix"}),
    ("convit", "convit_tiny", VIT, 32, {"tokens"}),
    ("xcit (token sequence)", "xcit_nano_12_p16_224", VIT, 32, {"sequence"}),
    ("levit (token sequence)", "levit_128s", {}, 64, {"nchw", "sequence"}),
    ("mlp-mixer", "mixer_s32_224", {}, 64, {"tokens"}),
    ("resmlp", "resmlp_12_224", {}, 32, {"tokens"}),
    ("gmlp", "gmlp_ti16_224", {}, 32, {"tokens"}),
]


def _kind(layout: FeatureLayout) -> str:
    if layout.kind != "tokens":
        return layout.kind
    if layout.grid is None:
        return "sequence"
    return "tokens+prefix" if layout.prefix_tokens else "tokens"


def _model(name, kwargs, size):
    try:
        model = timm.create_model(name, pretrained=False, num_classes=10, img_size=size, **kwargs)
    except TypeError:  # conv nets take no img_size
        model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    return model.eval()


def _three_points(traced):
    """An early, a middle and a late listed point whose layout the model settles."""
    known = [p for p in traced.list_points() if p.layout is not None]
    return [known[0], known[len(known) // 2], known[-1]]


def test_the_matrix_covers_25_families():
    assert len({f for f, *_ in FAMILIES}) >= 25


@pytest.mark.parametrize("family, name, kwargs, size, kinds", FAMILIES, ids=[f[0].split(" ")[0] for f in FAMILIES])
def test_layout_adapter_and_codec_at_three_points(family, name, kwargs, size, kinds):
    torch.manual_seed(0)
    model = _model(name, kwargs, size)
    traced = trace_model(model, (3, size, size), name)
    points = _three_points(traced)
    assert kinds <= {_kind(p.layout) for p in traced.list_points() if p.layout}, family
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    for p in points:
        head, tail = split_model(traced, p)
        with torch.no_grad():
            f = head(x)
            layout = p.layout
            m, prefix = layout.to_maps(f)
            assert m.dim() == 4 and tuple(m.shape[1:]) == layout.map_shape(p.shape)
            assert torch.equal(layout.from_maps(m, prefix), f), (family, p.name)  # exact round trip
            cfg = plan_codec(p.shape, layout=layout, ratio=16, feature_nonnegative=False)
            assert cfg.feature_shape == p.shape and cfg.layout == layout
            # the asked ratio within the stated rounding: symbols within half a code channel of elements / R
            positions = math.prod(cfg.map_code_shape[1:])
            assert abs(cfg.code_symbols - p.elements / 16) <= positions / 2, (family, p.name, cfg.code_shape)
            assert cfg.bandwidth_ratio == p.elements / cfg.code_symbols
            codec = build_codec(cfg).eval()
            z = codec.encoder(f, 0.01)
            assert tuple(z.shape) == (2, *cfg.code_shape) and 0 <= z.min() and z.max() <= 1  # sigmoid code
            f_hat = codec.decoder(z, 0.01)
            assert f_hat.shape == f.shape and (layout.kind == "nchw" or f_hat.is_contiguous())
            assert tail(f_hat).shape == (2, 10)


@pytest.mark.parametrize("layout, shape", [
    (FeatureLayout("nchw"), (6, 5, 3)),
    (FeatureLayout("nhwc"), (5, 3, 6)),
    (FeatureLayout("tokens", (3, 2), 2), (8, 7)),
    (FeatureLayout("tokens", (3, 2), 0), (6, 7)),
    (FeatureLayout("tokens"), (9, 7)),
    (FeatureLayout("vector"), (7,)),
])
def test_adapters_round_trip_exactly_and_keep_token_order(layout, shape):
    f = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    m, prefix = layout.to_maps(f)
    assert torch.equal(layout.from_maps(m, prefix), f)
    assert layout.feature_shape(layout.map_shape(shape)) == shape
    if layout.grid is not None:  # patch token P + i * Wp + j sits at map position (i, j), raster order
        p, (gh, gw) = layout.prefix_tokens, layout.grid
        assert torch.equal(m[:, :, 2, 1], f[:, p + 2 * gw + 1])
        assert prefix is None if p == 0 else torch.equal(prefix, f[:, :p])
    if layout.kind == "nhwc":
        assert torch.equal(m[:, :, 4, 2], f[:, 4, 2, :])


def test_swin_stage_is_channels_last_and_meets_the_asked_ratio():
    """The issue's case: a Swin stage output (N, 28, 28, 192) was taken as C=28, H=28, W=192."""
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10).eval()
    traced = trace_model(model, (3, 224, 224), "swin")
    point = traced.find("layers.1")
    assert point.shape == (28, 28, 192) and point.layout == FeatureLayout("nhwc")
    assert point.layout_note.startswith("shape: 28 x 28")
    cfg = plan_codec(point.shape, layout=point.layout, ratio=64)
    assert cfg.map_shape == (192, 28, 28) and cfg.code_shape == (12, 14, 14) and cfg.bandwidth_ratio == 64.0


def test_ambiguous_map_uses_the_graph_and_is_refused_without_evidence():
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10).eval()
    point = trace_model(model, (3, 32, 32)).find("blocks.0")
    assert point.shape == (8, 8, 8) and point.layout.kind == "nchw"
    assert "BatchNormAct2d" in point.layout_note  # settled by the op that produced it

    class Cube(torch.nn.Module):  # 8 x 8 x 8 at a 32 x 32 input, with no conv / norm next to the cut
        def forward(self, x):
            y = torch.nn.functional.interpolate(x[:, :1], size=(8, 8)).expand(-1, 8, 8, 8) * 2
            return (y + 1).flatten(1).sum(1, keepdim=True)

    traced = trace_model(Cube(), (3, 32, 32))
    cube = [p for p in traced.points if p.shape == (8, 8, 8)]
    assert cube and all(p.layout is None for p in cube)
    with pytest.raises(LayoutError, match=r"8 x 8 x 8 could be C x H x W or H x W x C .*will not guess"):
        cube[0].require_layout()


def test_token_sequences_need_graph_evidence_for_their_axes():
    model = timm.create_model("test_vit_relpos", pretrained=False, num_classes=10, img_size=32).eval()
    traced = trace_model(model, (3, 32, 32))
    flat = [p for p in traced.points if p.shape == (96, 4)]  # the patch conv flattened to (D, T), before the transpose
    assert flat and flat[0].layout is None and "will not guess" in flat[0].layout_note


def test_prefix_tokens_have_their_own_code_counted_in_the_symbols():
    layout = FeatureLayout("tokens", (8, 8), 1)  # the shared ViT: (65, 192)
    cfg = plan_codec((65, 192), layout=layout, ratio=16, preset="bottlenetpp")  # D / R symbols per prefix token
    assert cfg.code_shape == (12 * 64 + 12,) and cfg.prefix_code_channels == 12 and cfg.bandwidth_ratio == 16.0
    cfg = plan_codec((65, 192), layout=layout, ratio=16)  # bnpp: a quarter of 780 symbols, at most D = 192
    assert cfg.code_shape == (9 * 64 + 192,) and cfg.prefix_code_channels == 192 and cfg.bandwidth_ratio == 16.25
    cfg = plan_codec((65, 192), layout=layout, ratio=64)  # thin code (192 / 64 = 3 < 4): grid halved to 4 x 4
    assert cfg.map_code_shape == (9, 4, 4) and cfg.prefix_code_channels == round(195 / 4)
    assert cfg.code_symbols == 9 * 16 + 49 and abs(cfg.code_symbols - 195) <= 16 / 2  # within half a code channel
    assert not cfg.standardize and plan_codec((65, 192), layout=layout, ratio=64, feature_nonnegative=False).standardize
    codec = build_codec(cfg).eval()
    assert [n for n, _ in codec.encoder.named_children()] == ["body", "prefix_body"]
    assert codec.encoder.prefix_body[0].kernel_size == (1, 1)  # each prefix token a vector
    f = torch.randn(4, 65, 192, generator=torch.Generator().manual_seed(0))
    z = codec.encoder(f, torch.tensor([0.0, 0.1, 0.2, 0.3]))
    z2 = codec.encoder(f, torch.tensor([0.0, 0.1, 0.2, 0.5]))  # the condition reaches both codes, per image
    assert torch.equal(z[:3], z2[:3]) and not torch.equal(z[3, :192], z2[3, :192]) and not torch.equal(z[3, 192:], z2[3, 192:])
    assert codec.decoder(z, torch.zeros(4)).shape == f.shape


def test_one_d_codec_for_sequences_and_vectors():
    seq = plan_codec((16, 128), layout=FeatureLayout("tokens"), ratio=256)  # D / R < 1: halve T only
    assert seq.spatial_reduction and seq.conv_axes == (True, False) and seq.code_shape == (1, 8, 1)
    codec = build_codec(seq)
    assert codec.encoder.body[0].kernel_size == (3, 1)
    assert codec(torch.randn(2, 16, 128), 0.0)["f_hat"].shape == (2, 16, 128)
    vec = plan_codec((96,), layout=FeatureLayout("vector"), ratio=16)
    assert vec.code_shape == (6, 1, 1) and vec.conv_axes == (False, False)
    assert build_codec(vec).encoder.body[0].kernel_size == (1, 1)
    with pytest.raises(CodecError, match="largest ratio here is 96"):
        plan_codec((96,), layout=FeatureLayout("vector"), ratio=200)
    with pytest.raises(CodecError, match="spatial reduction needs"):
        plan_codec((96,), layout=FeatureLayout("vector"), ratio=4, spatial_reduction=True)


def test_layout_is_stored_and_old_configs_load_as_nchw():
    cfg = plan_codec((65, 192), layout=FeatureLayout("tokens", (8, 8), 1), ratio=64)
    d = cfg.to_dict()
    assert d["layout"] == {"kind": "tokens", "grid": [8, 8], "prefix_tokens": 1}
    assert CodecConfig.from_dict(d) == cfg
    old = {k: v for k, v in plan_codec((64, 8, 8), ratio=16).to_dict().items()
           if k not in ("layout", "prefix_code_channels")}  # a run directory from before layouts
    back = CodecConfig.from_dict(old)
    assert back.layout == FeatureLayout("nchw") and back.code_shape == (4, 8, 8)
    with pytest.raises(CodecError, match="unknown feature layout 'nwhc'"):
        CodecConfig.from_dict({**d, "layout": {"kind": "nwhc"}})


def test_conv_codec_modules_are_unchanged_for_maps():
    """The conv path builds the same modules (and state-dict keys) as before layouts existed."""
    codec = build_codec(plan_codec((64, 8, 8), ratio=64))
    keys = list(codec.state_dict())
    assert not any("prefix" in k for k in keys) and keys[0] == "encoder.body.0.weight"
    convs = [m.kernel_size for m in codec.modules() if isinstance(m, torch.nn.Conv2d)]
    assert set(convs) <= {(3, 3), (2, 2)}


# -- fit -> export -> the deployed halves, at token, channels-last and vector points -------------

SLOW = [
    ("test_vit", {}, 32, "blocks.0", "tokens+prefix"),
    ("test_vit", {}, 32, "blocks.2", "tokens+prefix"),
    ("test_vit2", {}, 32, "fc_norm", "vector"),
    ("deit_tiny_distilled_patch16_224", dict(VIT, embed_dim=48, num_heads=2), 32, "blocks.1", "tokens+prefix"),
    ("test_vit_relpos", {}, 32, "blocks.4", "tokens"),
    ("test_mambaout", {}, 32, "stages.1", "nhwc"),
    ("swin_tiny_patch4_window7_224", dict(embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=2),
     32, "layers.1", "nhwc"),
    ("levit_128s", {}, 64, "stages.0", "sequence"),
    ("test_resnet", {}, 32, "global_pool", "vector"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, kwargs, size, split, kind", SLOW, ids=[f"{s[0]}-{s[3]}" for s in SLOW])
def test_fit_export_and_halves_match_the_pipeline(tmp_path, name, kwargs, size, split, kind):
    from bnpp_cli.deploy.backend import BnppBackend, compute_batch
    from bnpp_cli.deploy.export import export_halves
    from bnpp_cli.deploy.halves import load_pair
    from bnpp_cli.deploy.protocol import Request
    from bnpp_cli.link.config import ChannelConfig
    from bnpp_cli.run.fit import FitConfig, fit_codec
    from bnpp_cli.run.pipeline import load_run
    from tests.helpers import tiny_npz

    data = tiny_npz(tmp_path / "train.npz", size=size)
    cfg = FitConfig(backbone=BackboneConfig(name, num_classes=10, img_size=size, model_kwargs=dict(kwargs)),
                    split=split, data=str(data), out=str(tmp_path / "run"), channel=ChannelConfig("awgn", 20.0),
                    ratio=16, codec_epochs=1, batch_size=16, lr=1e-3, seed=0)
    result = fit_codec(cfg)
    codec = result.config.codec
    assert _kind(codec.layout) == kind and tuple(result.config.feature_shape) == codec.feature_shape
    assert abs(codec.code_symbols - math.prod(codec.feature_shape) / 16) <= math.prod(codec.map_code_shape[1:]) / 2
    run = load_run(tmp_path / "run")
    assert run.codec_config == codec  # the layout came back through config.json
    export = export_halves(tmp_path / "run", tmp_path / "deploy")
    assert export.code_shape == list(codec.code_shape)
    device, edge = load_pair(tmp_path / "deploy")
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        p = run.pipeline
        expected = p.tail(p.codec.decoder(p.codec.encoder(p.head(x), 0.0), 0.0))
        frame = device.compress(x, 0.0)
        got = edge.decompress(frame, 0.0)
    assert torch.equal(got, expected) and torch.equal(got.argmax(1), expected.argmax(1))
    # the edge server batches two requests of such codes into one forward and splits the answers
    backend = BnppBackend(edge, max_images=8)
    answers, images, _ = compute_batch(backend, [(device.compress(x[:1], 0.0), Request(topk=1)),
                                                  (device.compress(x[1:], 0.0), Request(topk=1))])
    assert images == 3 and [a["images"] for a in answers] == [1, 2]
    top = [row[0][0] for a in answers for row in a["predictions"]]
    assert top == [edge.class_names[i] for i in expected.argmax(1).tolist()]


def test_signed_features_are_standardised_on_the_first_training_batch():
    """bnpp standardises a signed feature per channel (patch grid and prefix tokens apart), measured
    on the first training batch and kept by both halves; the paper's preset and ReLU features do not."""
    layout = FeatureLayout("tokens", (4, 4), 1)
    cfg = plan_codec((17, 32), layout=layout, ratio=8, feature_nonnegative=False)
    assert cfg.standardize and cfg.prefix_config().standardize
    assert not plan_codec((17, 32), layout=layout, ratio=8, preset="bottlenetpp", feature_nonnegative=False).standardize
    assert not plan_codec((32, 4, 4), ratio=8).standardize  # a post-ReLU map: unchanged
    g = torch.Generator().manual_seed(0)
    offset = torch.linspace(-20, 20, 32)
    f = torch.randn(6, 17, 32, generator=g) * 3 + offset
    f[:, 0] += 5  # the class token sits elsewhere
    codec = build_codec(cfg)
    enc, dec = codec.encoder.body[0], codec.decoder.body[-1]
    assert not bool(enc.calibrated) and torch.equal(enc.mean, torch.zeros(32))  # the identity until trained
    codec.train()
    codec(f, 0.0)
    patches = f[:, 1:].reshape(-1, 32)
    assert torch.allclose(enc.mean, patches.mean(0), atol=1e-4) and torch.allclose(dec.mean, enc.mean)
    assert torch.allclose(enc.std, patches.std(0, unbiased=False), atol=1e-4) and torch.equal(dec.std, enc.std)
    assert torch.allclose(codec.encoder.prefix_body[0].mean, f[:, 0].mean(0), atol=1e-4)
    assert torch.allclose(codec.decoder.prefix_body[-1].mean, f[:, 0].mean(0), atol=1e-4)
    before = enc.mean.clone()
    codec(f * 2, 0.0)  # calibrated once: a later batch changes nothing
    assert torch.equal(enc.mean, before)
    codec.eval()
    again = build_codec(cfg).eval()
    again.load_state_dict(codec.state_dict())  # stored with the codec's weights
    assert torch.equal(again(f, 0.0)["f_hat"], codec(f, 0.0)["f_hat"])
    assert again.decoder.body[-1].mean.abs().max() > 15  # the decoder restores the offsets
