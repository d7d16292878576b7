"""The co-inference pipeline, and the one builder that fit, load and export all use.

    x --head--> f --encoder(f, param)--> z --channel(z, param)--> z_hat --decoder--> f_hat --tail--> logits
      '------------- device -------------'   (simulated link)   '------------- edge ---------------'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..codec.config import CodecConfig
from ..codec.model import Codec, build_codec
from ..codec.presets import get_preset
from ..errors import RunError
from ..link.channels import Channel
from ..split.backbone import create_timm_model
from ..split.graph import SplitPoint, TracedModel, split_model, trace_model
from .config import RunConfig
from .rundir import RunDir


class SplitPipeline(nn.Module):
    """head -> encoder -> channel -> decoder -> tail; ``param`` is the channel's native parameter."""

    def __init__(self, head: nn.Module, codec: Codec, channel: Channel, tail: nn.Module):
        super().__init__()
        self.head, self.codec, self.channel, self.tail = head, codec, channel, tail

    def from_features(self, f: torch.Tensor, param, generator: torch.Generator | None = None) -> torch.Tensor:
        z = self.codec.encoder(f, param)
        z_hat = self.codec.keep_prefix(self.channel(z, param, generator=generator), param)  # variable-length codes
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
        return rebuild_backbone(self.config, RunDir(self.path).read_source_backbone())

    @property
    def codec_config(self) -> CodecConfig:
        return self.pipeline.codec.config


def build_pipeline(model: nn.Module, config: RunConfig,
                   traced: TracedModel | None = None) -> tuple[SplitPipeline, SplitPoint]:
    """Cut `model` at config.split (tracing it unless `traced` is given) and put the codec and
    channel of `config` in between."""
    traced = traced or trace_model(model, tuple(config.data_config["input_size"]), config.model)
    point = traced.find(config.split)
    head, tail = split_model(traced, point)
    channel = config.channel.build()
    get_preset(config.codec.preset).code.check_channel(channel)  # e.g. a prefix code over a per-code normalisation
    return SplitPipeline(head, build_codec(config.codec), channel, tail), point


def rebuild_backbone(config: RunConfig, weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The run's timm architecture (no download), with `weights` loaded strictly; eval mode."""
    model = create_timm_model(config.model, dict(config.create_kwargs))
    if weights is not None:
        model.load_state_dict(weights, strict=True)
    return model.eval()


def load_run(path: str | Path) -> Run:
    """Rebuild a fitted pipeline from its run directory (eval mode)."""
    run_dir = RunDir(path)
    config = run_dir.read_config()
    run_dir.check_complete()
    try:
        model = rebuild_backbone(config, run_dir.read_backbone())
        pipeline, point = build_pipeline(model, config)
        pipeline.codec.load_state_dict(run_dir.read_codec(), strict=True)
    except RunError:
        raise
    except Exception as e:
        raise RunError(f"run '{run_dir}' cannot be rebuilt: {str(e).splitlines()[0][:200]}") from None
    return Run(run_dir.path, config, model, pipeline.eval(), point, run_dir.read_metrics(), run_dir.finetuned)
