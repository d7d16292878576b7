"""The device and edge halves at run time: modules rebuilt from their own file (bundle.py).

    device: x --head--> f --encoder(f, param)--> z --framing.payload--> frame
    edge:   frame --framing.receive--> z --framing.air--> z_hat --decoder(z_hat, param)--> f_hat --tail--> logits

What crosses the wire is the code's own framing (codec.framing), chosen by its preset and shared
with the ONNX halves (deploy.onnx): an entropy code's range-coded streams, a variable-length code's
prefix for the condition, or the whole code as the channel frames it.

Rebuilding creates the timm architecture (random init, no download), traces and cuts it exactly as
`bnpp fit` did (run.pipeline.build_pipeline), and loads the half's tensors strictly: the composed
halves run the same ops in the same order as the fitted pipeline, so their logits are
bit-identical to it. The quantisation to wire levels and the channel simulation are the link's
own code, shared with `bnpp fit` and `bnpp eval`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..codec.config import CodecConfig
from ..codec.presets import get_preset
from ..errors import ExportError
from ..link.channels import Channel
from ..run.config import RunConfig
from ..run.pipeline import SplitPipeline, build_pipeline, rebuild_backbone
from .bundle import half_path, read_half


class _Half(nn.Module):
    """What both halves share: the metadata, the channel and the code's wire framing (codec.framing)."""

    def __init__(self, meta: dict[str, Any], channel: Channel, framing_source: nn.Module):
        super().__init__()
        self.meta, self.channel = meta, channel
        self.pair_id: str = meta["pair_id"]
        self.codec_config = CodecConfig.from_dict(meta["codec"])
        self.code_shape = tuple(self.codec_config.code_shape)
        self.digital = bool(channel.digital)
        self.bits = channel.bits
        self.framing = get_preset(self.codec_config.preset).code.framing(self.codec_config, channel, self.pair_id,
                                                                         framing_source)

    def param_from_condition(self, value: float) -> float:
        """User units (PSNR dB or probability) -> the channel parameter the codec is conditioned on."""
        return self.channel.param_from_condition(value)


class DeviceHalf(_Half):
    """Image batch -> channel symbols z (N, C', H', W') in [0, 1]; payload() gives the wire bytes."""

    def __init__(self, head: nn.Module, encoder: nn.Module, meta: dict[str, Any], channel: Channel):
        super().__init__(meta, channel, encoder)
        self.head, self.encoder = head, encoder

    def forward(self, x: torch.Tensor, param: float = 0.0) -> torch.Tensor:
        return self.encoder(self.head(x), param)

    def payload(self, z: torch.Tensor, param: float | None = None) -> bytes:
        """One wire frame for a code batch: float32 symbols (analog), packed n-bit levels (digital),
        or one entropy-coded stream per image (preset entropy). A variable-length code sends the
        prefix for channel parameter ``param`` (None: the whole code, which its edge reads too)."""
        return self.framing.payload(z, param)

    def symbols(self, param: float) -> int:
        """Symbols per image sent at channel parameter ``param``."""
        return self.framing.symbols(param)

    def compress(self, x: torch.Tensor, param: float = 0.0) -> bytes:
        """Images -> the wire frame of their codes."""
        return self.payload(self(x, param), param)


class EdgeHalf(_Half):
    """Received symbols z_hat -> logits; receive() checks and unpacks a wire frame."""

    def __init__(self, decoder: nn.Module, tail: nn.Module, meta: dict[str, Any], channel: Channel):
        super().__init__(meta, channel, decoder)
        self.decoder, self.tail = decoder, tail
        self.classes: list[str] | None = meta.get("classes")

    @property
    def class_names(self) -> list[str]:
        return self.classes or [str(i) for i in range(self.meta["num_classes"])]

    def forward(self, z_hat: torch.Tensor, param: float = 0.0) -> torch.Tensor:
        return self.tail(self.decoder(z_hat, param))

    def receive(self, buf: bytes) -> torch.Tensor:
        """Wire frame -> symbols (N, C', H', W') (a variable-length code's prefix: (N, k)); WireError
        for another export, kind or shape."""
        return self.framing.receive(buf)

    def pad(self, z_hat: torch.Tensor) -> torch.Tensor:
        """A received prefix (N, k) of a variable-length code -> the full code shape (zeros past k)."""
        return self.framing.pad(z_hat)

    def air(self, z: torch.Tensor, param: float, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        """The simulated air interface at the receiver: image i with air_generator(seed, first_index + i)."""
        return self.framing.air(z, param, seed, first_index)

    def decompress(self, buf: bytes, param: float = 0.0, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        """Wire frame -> logits: receive, air interface, decoder, tail."""
        return self(self.air(self.receive(buf), param, seed, first_index), param)


def _rebuild(config: RunConfig) -> SplitPipeline:
    """The architecture of the run (timm init; every tensor is overwritten from the file after)."""
    pipeline, _ = build_pipeline(rebuild_backbone(config), config)
    return pipeline


def _load_into(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path) -> None:
    own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(own, strict=True)
    except RuntimeError as e:
        raise ExportError(f"'{path}' does not match the architecture in its metadata: "
                          f"{str(e).splitlines()[0][:200]}") from None


def load_device(path: str | Path) -> DeviceHalf:
    """Rebuild the device half (head + encoder) from its file alone, in eval mode."""
    tensors, meta, config = read_half(path, "device")
    p = _rebuild(config)
    _load_into(p.head, tensors, "head.", path)
    _load_into(p.codec.encoder, tensors, "encoder.", path)
    return DeviceHalf(p.head, p.codec.encoder, meta, config.channel.build()).eval()


def load_edge(path: str | Path) -> EdgeHalf:
    """Rebuild the edge half (decoder + tail) from its file alone, in eval mode."""
    tensors, meta, config = read_half(path, "edge")
    p = _rebuild(config)
    _load_into(p.codec.decoder, tensors, "decoder.", path)
    _load_into(p.tail, tensors, "tail.", path)
    return EdgeHalf(p.codec.decoder, p.tail, meta, config.channel.build()).eval()


def check_pair(device: DeviceHalf, edge: EdgeHalf) -> None:
    if device.pair_id != edge.pair_id:
        raise ExportError(f"the halves come from two different exports (pair id {device.pair_id} vs {edge.pair_id})",
                          hint="export both files together with `bnpp export RUN --out DIR`")


def load_device_dir(deploy_dir: str | Path) -> DeviceHalf:
    return load_device(half_path(deploy_dir, "device"))


def load_edge_dir(deploy_dir: str | Path) -> EdgeHalf:
    return load_edge(half_path(deploy_dir, "edge"))


def load_pair(deploy_dir: str | Path) -> tuple[DeviceHalf, EdgeHalf]:
    device, edge = load_device_dir(deploy_dir), load_edge_dir(deploy_dir)
    check_pair(device, edge)
    return device, edge
