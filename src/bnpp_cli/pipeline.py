"""The co-inference pipeline and the run directory that stores it.

    x --head--> f --encoder(f, param)--> z --channel(z, param)--> z_hat --decoder--> f_hat --tail--> logits
      '------------- device -------------'   (simulated link)   '------------- edge ---------------'

A run directory holds everything needed to rebuild the pipeline, with no pickle:

    RUN/config.json          RunConfig: backbone, split, codec, channel, data config, classes
    RUN/backbone.safetensors the backbone weights as the user brought them
    RUN/finetuned.safetensors the backbone after phase joint (only if it ran): what the pipeline uses
    RUN/codec.safetensors    encoder + decoder weights
    RUN/metrics.json         per-epoch metrics of `bnpp fit`
    RUN/checkpoint/state.pt  resumable state (torch.load(weights_only=True))
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .backbone import create_timm_model, read_state_dict
from .channels import Channel, create_channel
from .codec import Codec, CodecConfig, build_codec
from .errors import RunError
from .split import SplitPoint, split_model, trace_model

CONFIG_FILE, BACKBONE_FILE, FINETUNED_FILE, CODEC_FILE, METRICS_FILE = (
    "config.json", "backbone.safetensors", "finetuned.safetensors", "codec.safetensors", "metrics.json")


@dataclass
class ChannelConfig:
    name: str = "awgn"
    train_condition: float | list[float] | None = None  # user units: S (S to best) or [A, B]; None: default
    bits: int = 8  # digital channels only

    def build(self) -> Channel:
        cond = tuple(self.train_condition) if isinstance(self.train_condition, list) else self.train_condition
        return create_channel(self.name, train_condition=cond, bits=self.bits)


@dataclass
class RunConfig:
    """Everything needed to rebuild a fitted pipeline (config.json)."""

    model: str
    create_kwargs: dict[str, Any]  # what timm.create_model received
    source_weights: str  # where the backbone weights came from before fitting
    data_config: dict[str, Any]  # mean, std, input_size, crop_pct, interpolation
    split: str
    feature_shape: list[int]
    codec: dict[str, Any]  # CodecConfig.to_dict()
    channel: dict[str, Any]  # ChannelConfig
    classes: list[str] | None
    num_classes: int
    fit: dict[str, Any] = field(default_factory=dict)  # the FitConfig that produced it
    bnpp_version: str = __version__

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(**d)


class SplitPipeline(nn.Module):
    """head -> encoder -> channel -> decoder -> tail; ``param`` is the channel's native parameter."""

    def __init__(self, head: nn.Module, codec: Codec, channel: Channel, tail: nn.Module):
        super().__init__()
        self.head, self.codec, self.channel, self.tail = head, codec, channel, tail

    def from_features(self, f: torch.Tensor, param, generator: torch.Generator | None = None) -> torch.Tensor:
        z = self.codec.encoder(f, param)
        z_hat = self.channel(z, param, generator=generator)
        return self.tail(self.codec.decoder(z_hat, param))

    def forward(self, x: torch.Tensor, param, generator: torch.Generator | None = None,
                features: bool = False) -> torch.Tensor:
        """Logits for images x, or for head features when ``features=True`` (the frozen-head phase)."""
        return self.from_features(x if features else self.head(x), param, generator)


@dataclass
class Run:
    path: Path
    config: RunConfig
    model: nn.Module  # the whole backbone (its modules are shared with head and tail)
    pipeline: SplitPipeline
    point: SplitPoint
    metrics: dict[str, Any] | None
    finetuned: bool  # phase joint ran: the pipeline's backbone differs from the one brought

    def source_model(self) -> nn.Module:
        """The backbone as the user brought it (before any fine-tuning), eval mode."""
        return rebuild_backbone(self.config, read_state_dict(self.path / BACKBONE_FILE))

    @property
    def codec_config(self) -> CodecConfig:
        return self.pipeline.codec.config


def build_pipeline(model: nn.Module, config: RunConfig) -> tuple[SplitPipeline, SplitPoint]:
    """Trace `model`, cut it at config.split and put the codec and channel in between."""
    traced = trace_model(model, tuple(config.data_config["input_size"]), config.model)
    point = traced.find(config.split)
    head, tail = split_model(traced, point)
    codec = build_codec(CodecConfig.from_dict(config.codec))
    channel = ChannelConfig(**config.channel).build()
    return SplitPipeline(head, codec, channel, tail), point


def rebuild_backbone(config: RunConfig, weights: dict[str, torch.Tensor]) -> nn.Module:
    model = create_timm_model(config.model, dict(config.create_kwargs))
    model.load_state_dict(weights, strict=True)
    return model.eval()


def load_run(path: str | Path) -> Run:
    """Rebuild a fitted pipeline from its run directory (eval mode)."""
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise RunError(f"'{path}' is not a bnpp run directory (no {CONFIG_FILE})",
                       hint="create one with `bnpp fit MODEL --split ... --out DIR`")
    try:
        config = RunConfig.from_dict(json.loads(cfg_file.read_text()))
    except (ValueError, TypeError) as e:
        raise RunError(f"'{cfg_file}' is not a valid bnpp run config: {e}") from None
    for name in (BACKBONE_FILE, CODEC_FILE):
        if not (path / name).is_file():
            raise RunError(f"run '{path}' is incomplete: {name} is missing (did `bnpp fit` finish?)",
                           hint="finish it with `bnpp fit ... --resume`")
    finetuned = (path / FINETUNED_FILE).is_file()
    try:
        model = rebuild_backbone(config, read_state_dict(path / (FINETUNED_FILE if finetuned else BACKBONE_FILE)))
        pipeline, point = build_pipeline(model, config)
        pipeline.codec.load_state_dict(read_state_dict(path / CODEC_FILE), strict=True)
    except RunError:
        raise
    except Exception as e:
        raise RunError(f"run '{path}' cannot be rebuilt: {str(e).splitlines()[0][:200]}") from None
    metrics_file = path / METRICS_FILE
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    return Run(path, config, model, pipeline.eval(), point, metrics, finetuned)
