"""The rate frontier's levers: decoder residual blocks and tail-feature distillation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from bnpp_cli.cli import app
from bnpp_cli.codec.config import CodecConfig, plan_codec
from bnpp_cli.codec.layers import ResidualBlock
from bnpp_cli.codec.model import build_codec
from bnpp_cli.errors import CodecError, RunError
from bnpp_cli.run.loop import classifier_name, distill_points, feature_distillation_loss
from bnpp_cli.split.macs import count_macs

from .helpers import tiny_npz, tiny_run


def test_decoder_blocks_add_edge_capacity_only():
    thin = plan_codec((128, 4, 4), ratio=64)
    wide = plan_codec((128, 4, 4), ratio=64, decoder_blocks=2)
    assert wide.decoder_blocks == 2 and wide.code_shape == thin.code_shape == (8, 2, 2)
    a, b = build_codec(thin).eval(), build_codec(wide).eval()
    assert sum(isinstance(m, ResidualBlock) for m in b.decoder.modules()) == 2
    assert sum(isinstance(m, ResidualBlock) for m in b.encoder.modules()) == 1  # the preset's one, unchanged
    f = torch.rand(1, 128, 4, 4, generator=torch.Generator().manual_seed(0))
    assert count_macs(a.encoder, f, 0.0) == count_macs(b.encoder, f, 0.0)  # device MACs unchanged
    z = a.encoder(f, 0.0)
    # each block: two 3x3 convs and two BatchNorms at the inner width (64) on the 4 x 4 map
    assert count_macs(b.decoder, z, 0.0) - count_macs(a.decoder, z, 0.0) == 2 * (2 * 64 * 64 * 9 * 16 + 2 * 64 * 16)
    assert b.decoder(z, 0.0).shape == (1, 128, 4, 4)
    with pytest.raises(CodecError, match="decoder_blocks -1 must be an integer >= 0"):
        plan_codec((128, 4, 4), ratio=64, decoder_blocks=-1)
    with pytest.raises(CodecError, match="paper's one-conv decoder"):
        plan_codec((128, 4, 4), ratio=64, decoder_blocks=1, preset="bottlenetpp")
    old = {k: v for k, v in thin.to_dict().items() if k != "decoder_blocks"}  # a run from before the field
    assert CodecConfig.from_dict(old).decoder_blocks == 0


def test_feature_distillation_loss_is_relative_squared_error():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 512, generator=g), torch.randn(8, 512, generator=g)
    assert feature_distillation_loss(t, t) == 0
    expected = ((s - t) ** 2).sum() / (t ** 2).sum()
    assert torch.allclose(feature_distillation_loss(s, t), expected)
    assert torch.allclose(feature_distillation_loss(100 * s, 100 * t), expected)  # free of the features' scale
    assert torch.allclose(feature_distillation_loss(torch.zeros_like(t), t), torch.tensor(1.0))


def test_classifier_name_is_timms_and_must_be_in_the_tail():
    import timm

    model = timm.create_model("test_resnet", num_classes=10)
    assert classifier_name(model, model) == model.pretrained_cfg["classifier"]
    with pytest.raises(RunError, match="no classifier module"):
        classifier_name(model, nn.Sequential(nn.Identity()))


def test_distill_points_are_the_classifier_or_named_modules_called_once():
    import timm

    from bnpp_cli.split.graph import split_model, trace_model

    model = timm.create_model("test_resnet", num_classes=10).eval()
    _, tail = split_model(trace_model(model, (3, 32, 32)), "layer2")
    assert distill_points(model, tail, None) == ("fc",)
    assert distill_points(model, tail, ["layer4.0.conv1", "fc", "fc"]) == ("layer4.0.conv1", "fc")
    with pytest.raises(RunError, match=r"`distill_at` 'layer2.0.conv1' .* layer3.0.conv1, layer4.0.conv1, global_pool"):
        distill_points(model, tail, ["layer2.0.conv1"])  # in the model, but in the head: not the tail's
    with pytest.raises(RunError, match="names no module"):
        distill_points(model, tail, [])

    class Twice(nn.Module):  # one module called twice: its input is not one tensor per pass
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.act(self.act(x) - 1))

    twice = torch.fx.symbolic_trace(Twice())
    assert distill_points(twice, twice, ["fc"]) == ("fc",)
    with pytest.raises(RunError, match="`distill_at` 'act' is not a module this tail calls once"):
        distill_points(twice, twice, ["act"])


def test_fit_with_feature_distillation_adds_the_term(tmp_path):
    plain, _ = tiny_run(tmp_path / "a", distill=1.0, augment=False)
    taught, _ = tiny_run(tmp_path / "b", distill=1.0, distill_features=1.0, augment=False)
    # the same seeded batches and noise; the extra term is positive from the first step
    assert taught.epochs[0]["train_loss"] > plain.epochs[0]["train_loss"]
    from bnpp_cli.run.pipeline import load_run

    assert load_run(tmp_path / "b" / "run").config.fit.distill_features == 1.0


@pytest.mark.parametrize("phase,at", [("codec", None), ("joint", None), ("codec", ["layer3.0.conv1", "layer4.0.conv1"]),
                                      ("joint", ["layer4.0.conv1", "fc"])])
def test_distillation_probes_read_the_right_module_and_are_removed_when_an_epoch_stops(tmp_path, monkeypatch, phase, at):
    from bnpp_cli.run import loop

    probes = []

    class Recording(loop._Probe):
        def __init__(self, module):
            super().__init__(module)
            self.module, self.reads = module, 0
            probes.append(self)

        def take(self):
            self.reads += 1
            return super().take()

    monkeypatch.setattr(loop, "_Probe", Recording)

    def stop_after_two(event, info):  # a Ctrl-C during the second batch
        if event == "batch" and info["step"] == 2:
            raise KeyboardInterrupt

    from bnpp_cli.link.config import ChannelConfig
    from bnpp_cli.run.config import FitConfig
    from bnpp_cli.run.fit import fit_codec
    from bnpp_cli.split.backbone import BackboneConfig

    data = tiny_npz(tmp_path / "d.npz")
    cfg = FitConfig(backbone=BackboneConfig("test_resnet", num_classes=10, img_size=32), split="layer2",
                    data=str(data), out=str(tmp_path / "run"), channel=ChannelConfig("awgn", 20.0), ratio=4.0,
                    codec_epochs=int(phase == "codec"), joint_epochs=int(phase == "joint"), batch_size=16,
                    distill_features=1.0, distill_at=at, augment=False)
    with pytest.raises(KeyboardInterrupt):
        fit_codec(cfg, callback=stop_after_two)
    assert probes and all(not p.module._forward_pre_hooks for p in probes)  # every hook removed
    # per point, phase codec: one probe (the frozen tail serves as teacher); phase joint: the tail's and
    # the teacher's
    points = len(at) if at else 1
    assert len(probes) == points * (1 if phase == "codec" else 2)
    kinds = {type(p.module) for p in probes}
    assert kinds == ({nn.Conv2d} if at and "fc" not in at else {nn.Linear} if not at else {nn.Conv2d, nn.Linear})
    assert len({id(p.module) for p in probes}) == len(probes)
    assert all(p.reads >= 2 for p in probes)  # each read in both batches (student and teacher sides)


def test_feature_distillation_with_a_feature_cache_is_refused(tmp_path):
    data = tiny_npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["fit", "test_resnet", "--img-size", "32", "--num-classes", "10", "--data", str(data),
                                 "--split", "layer2", "--codec-epochs", "1", "--no-augment", "--cache-features",
                                 "--distill-features", "1", "--out", str(out)])
    assert r.exit_code == 2 and "--distill-features 1" in r.output and "Traceback" not in r.output
    assert not out.exists()
    r = CliRunner().invoke(app, ["fit", "test_resnet", "--img-size", "32", "--num-classes", "10", "--data", str(data),
                                 "--split", "layer2", "--distill-features", "-1", "--out", str(out)])
    assert r.exit_code == 2 and "--distill-features -1" in r.output and not out.exists()


def test_distill_at_is_checked_before_anything_is_written(tmp_path):
    data = tiny_npz(tmp_path / "d.npz")
    out = tmp_path / "run"
    base = ["fit", "test_resnet", "--img-size", "32", "--num-classes", "10", "--data", str(data), "--split", "layer2",
            "--codec-epochs", "1", "--batch-size", "16", "--out", str(out)]
    r = CliRunner().invoke(app, base + ["--distill-at", "layer4.0.conv1"])  # without --distill-features
    assert r.exit_code == 2 and "--distill-at layer4.0.conv1" in r.output and "--distill-features is 0" in r.output
    assert "Traceback" not in r.output and not out.exists()
    r = CliRunner().invoke(app, base + ["--distill-features", "1", "--distill-at", "layer4.0.conv1,nope"])
    assert r.exit_code == 2 and "--distill-at 'nope'" in r.output and "layer4.0.conv1" in r.output
    assert "Traceback" not in r.output and not out.exists()


def test_distillation_at_the_tails_input_is_feature_reconstruction(tmp_path):
    """--distill-at on the tail's first module matches the decoder's output to the uncut feature (the
    same seeded batches: the term adds to the loss from the first step), and the run records where."""
    at_input, _ = tiny_run(tmp_path / "a", distill_features=1.0, distill_at=["layer3.0.conv1"], augment=False)
    at_logits, _ = tiny_run(tmp_path / "b", distill_features=1.0, augment=False)
    plain, _ = tiny_run(tmp_path / "c", augment=False)
    assert at_input.epochs[0]["train_loss"] > plain.epochs[0]["train_loss"]
    assert at_logits.epochs[0]["train_loss"] > plain.epochs[0]["train_loss"]
    from bnpp_cli.run.pipeline import load_run

    assert load_run(tmp_path / "a" / "run").config.fit.distill_at == ["layer3.0.conv1"]
