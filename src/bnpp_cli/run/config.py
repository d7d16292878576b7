"""Typed configs of a fit and of a fitted run (config.json), with their schema version.

    RunConfig: the backbone as built (timm name, exact create kwargs, data config, weights source),
               the split, CodecConfig, ChannelConfig, classes, and the FitConfig that produced it
               (which holds the BackboneConfig the user asked for).

One (de)serialisation (:mod:`bnpp_cli.configs`), strict on unknown keys. Schema versions:
1 (bnpp 0.1.0: the same layout without a ``schema`` key) and 2 (this one). A file
from a newer bnpp is refused with a message that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import __version__, configs
from ..codec.config import CodecConfig
from ..errors import ConfigError
from ..link.config import ChannelConfig
from ..split.backbone import BackboneConfig

SCHEMA_VERSION = 2


@dataclass
class FitConfig:
    """What `fit_codec` trains: the backbone, the split, the codec, the channel and the recipe.

    Fields left ``None`` take the preset's recipe (:mod:`bnpp_cli.codec.presets`), so a config names
    only what it changes.

    Attributes:
        backbone: the model as the user asked for it (timm name, weights, size); required.
        split: the split point's name (see `profile_model` / `bnpp profile`); required.
        data: training images: an .npz (x uint8 NxHxWx3, y), an ImageFolder directory, or a
            torchvision dataset name (cifar10, ...); required.
        out: the run directory to create; required.
        channel: the simulated channel and its training condition; default: awgn trained from
            20 dB PSNR to noiseless (BottleNet++'s headline condition).
        ratio: bandwidth reduction C H W / (C' H' W'), a float; default 64.0 (the paper's
            largest). Ignored when ``code_channels`` is given.
        code_channels: the code's channel count C' directly (overrides ``ratio``); default None.
        spatial_reduction: halve H and W in the encoder; default None: plan_codec's rule (bnpp:
            also for thin codes, C/ratio < 4; else only if the ratio needs it).
        preset: the codec preset (bnpp, bottlenetpp: the paper's, entropy, variable); default
            "bnpp".
        hidden_channels: bnpp preset: width of the extra layer, channels; default None (the
            preset's rule: max(4 C', 64, 4 x classes up to 256), at most C).
        encoder_blocks: bnpp preset: residual blocks in the encoder (device side); default None
            (the preset's default, 1).
        decoder_blocks: bnpp preset: residual blocks in the decoder (edge side, device MACs
            unchanged); default 0.
        val_data: held-out validation images, same forms as ``data``; default None: a
            ``val_fraction`` share of ``data``.
        val_fraction: share of ``data`` held out when no ``val_data``, in [0, 1); default 0.1: enough
            images for a stable top-1, most left to train on.
        data_root: where torchvision datasets live; default None (torchvision's default).
        limit: use only the first N training images (quick runs); default None (all).
        codec_epochs: epochs of phase codec (backbone frozen); default 10: the paper trains the
            codec alone until it converges.
        joint_epochs: epochs of phase joint (everything fine-tuned) afterwards; default 0: it gained
            nothing at twice the time.
        lr: Adam learning rate of phase codec; default None: the preset's recipe (bnpp 1e-3,
            bottlenetpp 1e-4).
        joint_lr: Adam learning rate of phase joint; default 1e-5: ten times below the paper's
            codec rate, for fine-tuning everything.
        lr_schedule: "cosine" (per step, to 0 over each phase) or "constant"; default None: the
            recipe's (bnpp cosine, bottlenetpp constant).
        batch_size: mini-batch size per process, images; default None: the recipe's (64 / 32).
        distill: weight of KL(uncut model || pipeline) on the logits; default None: the recipe's
            (bnpp 1, bottlenetpp 0).
        distill_temperature: softmax temperature T of that KL (the loss scaled by T^2); default
            None: the recipe's (bnpp 4).
        distill_features: weight of || g - g_uncut ||^2 / || g_uncut ||^2, g the tail's pre-logits
            features (the classifier's input), distilled as well as the logits; default None: the
            recipe's (0). Not with a feature cache (it holds logits only).
        distill_at: tail modules (each called once) whose inputs ``distill_features`` compares, e.g.
            the stages' first convs, the loss the mean over them; default None: the classifier's
            input.
        lmbda: entropy preset: rate weight, loss += lmbda x bits per image; default None: the
            recipe's.
        augment: random crop + flip on the training images; default True: the CIFAR convention and
            what timm's train.py does.
        feature_cache: phase codec without augmentation computes the frozen head's features and
            teacher logits once (run.features). True: in memory; a directory (str): memory-mapped
            .npy files kept there and shared by later fits of the same backbone, split, images and
            normalisation; default False, since fits augment.
        device: torch device, "cpu" or "cuda"; default "cpu" (runs anywhere).
        amp: bf16 autocast on CUDA, ignored on CPU; default True (faster at no accuracy cost).
        seed: seed of every random draw (init, data order, noise); default 0.
        resume: continue an interrupted run in ``out`` from its checkpoint; default False.
        overwrite: replace the bnpp run already in ``out`` (a fresh start); default False, so a run
            is never deleted by accident.
        checkpoint_steps: also checkpoint every N optimizer steps; default None (by time only).
        checkpoint_minutes: checkpoint at most this many minutes apart within an epoch (None: only
            at epoch ends); default 10.0: an hour-long epoch loses at most 10 minutes.
    """

    backbone: BackboneConfig
    split: str
    data: str
    out: str
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    ratio: float | None = 64.0
    code_channels: int | None = None
    spatial_reduction: bool | None = None
    preset: str = "bnpp"
    hidden_channels: int | None = None
    encoder_blocks: int | None = None
    decoder_blocks: int = 0
    val_data: str | None = None
    val_fraction: float = 0.1
    data_root: str | None = None
    limit: int | None = None
    codec_epochs: int = 10
    joint_epochs: int = 0
    lr: float | None = None
    joint_lr: float = 1e-5
    lr_schedule: str | None = None
    batch_size: int | None = None
    distill: float | None = None
    distill_temperature: float | None = None
    distill_features: float | None = None
    distill_at: list[str] | None = None
    lmbda: float | None = None
    augment: bool = True
    feature_cache: bool | str = False
    device: str = "cpu"
    amp: bool = True
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    checkpoint_steps: int | None = None
    checkpoint_minutes: float | None = 10.0

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FitConfig":
        return configs.from_dict(cls, d)


@dataclass
class RunConfig:
    """Everything needed to rebuild a fitted pipeline: a run's config.json, written by `fit_codec`.

    Attributes:
        model: the timm model name.
        create_kwargs: the keyword arguments timm.create_model received (dict), so the backbone is
            rebuilt exactly.
        source_weights: where the backbone weights came from before fitting ("random",
            "pretrained" or the checkpoint path).
        data_config: the input pipeline: mean, std, input_size (C, H, W), crop_pct, interpolation.
        split: the split point's name.
        feature_shape: the feature at the split, [C, H, W] (or [T, D] for tokens), no batch axis.
        codec: the codec's architecture (CodecConfig).
        channel: the channel it was trained under (ChannelConfig).
        classes: class names in label order, or None where the data gave none.
        num_classes: the classifier's size.
        fit: the FitConfig that produced the run; default None (a run rebuilt by hand).
        bnpp_version: the bnpp version that wrote it; default: this one.
        schema: the config.json layout version; default SCHEMA_VERSION (2). Files from a newer
            schema are refused.
    """

    model: str
    create_kwargs: dict[str, Any]
    source_weights: str
    data_config: dict[str, Any]
    split: str
    feature_shape: list[int]
    codec: CodecConfig
    channel: ChannelConfig
    classes: list[str] | None
    num_classes: int
    fit: FitConfig | None = None
    bnpp_version: str = __version__
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a run config is a JSON object, not {type(d).__name__}")
        version = d.get("schema", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ConfigError(f"run config schema {version!r} is newer than this bnpp's "
                              f"({SCHEMA_VERSION}): written by bnpp {d.get('bnpp_version', '?')}",
                              hint="upgrade bnpp to read it")
        if version == 1:  # same layout, no schema key; a v1 fit dict may be empty
            d = {**d, "schema": SCHEMA_VERSION}
            if not d.get("fit"):
                d["fit"] = None
        return configs.from_dict(cls, d)
