"""Typed configs of a fit and of a fitted run (config.json), with their schema version.

    RunConfig: the backbone as built (timm name, exact create kwargs, data config, weights source),
               the split, CodecConfig, ChannelConfig, classes, and the FitConfig that produced it
               (which holds the BackboneConfig the user asked for).

One (de)serialisation (:mod:`bnpp_cli.configs`), strict on unknown keys. Schema versions:
1 (bnpp 0.1.0, sessions 1-3: the same layout without a ``schema`` key) and 2 (this one). A file
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
    backbone: BackboneConfig
    split: str
    data: str  # training images (.npz, ImageFolder, or a torchvision dataset name)
    out: str  # run directory
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    ratio: float | None = 64.0  # bandwidth reduction C H W / (C' H' W'); or give code_channels
    code_channels: int | None = None
    spatial_reduction: bool | None = None  # None: plan_codec's rule (bnpp: also for thin codes, C/ratio < 4)
    preset: str = "bnpp"  # codec architecture; "bottlenetpp" is the paper's
    hidden_channels: int | None = None  # bnpp preset: width of the extra layer (None: the preset's default)
    encoder_blocks: int | None = None  # bnpp preset: residual blocks in the encoder (None: the preset's default)
    decoder_blocks: int = 0  # bnpp preset: residual blocks in the decoder (edge side)
    val_data: str | None = None  # held-out images; default: val_fraction of --data
    val_fraction: float = 0.1  # a tenth: enough images for a stable top-1, most left to train on
    data_root: str | None = None  # where torchvision datasets live / are downloaded
    limit: int | None = None  # use only the first N training images (quick runs)
    codec_epochs: int = 10  # phase codec: the paper trains the codec alone until it converges
    joint_epochs: int = 0  # phase joint off by default: it gained nothing at 2x the time (README)
    lr: float | None = None  # Adam, phase codec; None: the preset's recipe (codec.presets)
    joint_lr: float = 1e-5  # fine-tuning everything: 10x below the paper's codec lr
    lr_schedule: str | None = None  # "cosine" (per step, to 0 over each phase) or "constant"; None: the recipe
    batch_size: int | None = None  # per process; None: the preset's recipe
    distill: float | None = None  # weight of KL(uncut model || pipeline); None: the preset's recipe
    distill_temperature: float | None = None  # softmax temperature T of that KL (scaled by T^2); None: recipe
    # weight of || g - g_uncut ||^2 / || g_uncut ||^2, g the tail's pre-logits features (the classifier's
    # input), as well as the logits; None: the recipe (0). Not with a feature cache (it holds logits only)
    distill_features: float | None = None
    # where distill_features matches: tail modules (each called once) whose inputs are compared, e.g.
    # the stages' first convs; the loss is the mean over them. None: the classifier's input
    distill_at: list[str] | None = None
    lmbda: float | None = None  # entropy preset: rate weight, loss += lmbda x bits per image; None: the recipe
    augment: bool = True  # random crop + flip: the CIFAR convention, and what timm's train.py does
    # phase codec without augmentation: the frozen head's features and teacher logits computed once
    # (run.features). True: in memory; a directory: memory-mapped .npy files kept there and shared by
    # later fits of the same backbone, split, images and normalisation. Off by default: fits augment
    feature_cache: bool | str = False
    device: str = "cpu"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    seed: int = 0
    resume: bool = False
    overwrite: bool = False  # replace the bnpp run already in `out` (a fresh start)
    checkpoint_steps: int | None = None  # also checkpoint every N optimizer steps (None: by time only)
    checkpoint_minutes: float | None = 10.0  # and at most this long apart: an hour-long epoch loses <= 10 min

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FitConfig":
        return configs.from_dict(cls, d)


@dataclass
class RunConfig:
    """Everything needed to rebuild a fitted pipeline (config.json)."""

    model: str  # timm model name
    create_kwargs: dict[str, Any]  # what timm.create_model received
    source_weights: str  # where the backbone weights came from before fitting
    data_config: dict[str, Any]  # mean, std, input_size, crop_pct, interpolation
    split: str
    feature_shape: list[int]
    codec: CodecConfig
    channel: ChannelConfig
    classes: list[str] | None
    num_classes: int
    fit: FitConfig | None = None  # the FitConfig that produced it
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
