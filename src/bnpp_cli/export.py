"""`bnpp export`: the device half and the edge half as two safetensors files that rebuild and run.

    DIR/device.safetensors   head.* + encoder.*   x -> z (channel symbols in [0, 1])
    DIR/edge.safetensors     decoder.* + tail.*   z_hat -> logits

Each file's string metadata is enough to rebuild its module with no other file: the timm model name
and version, the create_model kwargs, the split point, the codec and channel configs, input size,
mean/std, class names, the bnpp version, and a pair id (a hash of both halves' tensors and the
config) that ties the two halves together; the wire format (wire.py) carries it in every frame.
Rebuilding creates the timm architecture (random init, no download), traces and cuts it exactly as
`bnpp fit` did, and loads the half's tensors strictly: the composed halves run the same ops in the
same order as the fitted pipeline, so their logits are bit-identical to it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .channels import Channel, quantize
from .codec import CodecConfig
from .errors import ExportError
from .files import atomic_write
from .pipeline import ChannelConfig, RunConfig, build_pipeline, load_run
from . import wire

FORMAT = "bnpp-half/1"
DEVICE_FILE, EDGE_FILE = "device.safetensors", "edge.safetensors"


@dataclass
class ExportResult:
    device_path: str
    edge_path: str
    device_bytes: int
    edge_bytes: int
    device_params: int
    edge_params: int
    pair_id: str
    code_shape: list[int]
    payload_bytes: int  # per image, as the wire format sends it (header excluded)
    header_bytes: int
    digital: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Half(nn.Module):
    def __init__(self, meta: dict[str, Any], channel: Channel):
        super().__init__()
        self.meta, self.channel = meta, channel
        self.pair_id: str = meta["pair_id"]
        self.codec_config = CodecConfig.from_dict(meta["codec"])
        self.code_shape = tuple(self.codec_config.code_shape)
        self.digital = bool(channel.digital)
        self.bits = channel.bits if channel.digital else None

    def param_from_condition(self, value: float) -> float:
        """User units (PSNR dB or probability) -> the channel parameter the codec is conditioned on."""
        return self.channel.param_from_condition(value)


class DeviceHalf(_Half):
    """Image batch -> channel symbols z (N, C', H', W') in [0, 1]; payload() gives the wire bytes."""

    def __init__(self, head: nn.Module, encoder: nn.Module, meta: dict[str, Any], channel: Channel):
        super().__init__(meta, channel)
        self.head, self.encoder = head, encoder

    def forward(self, x: torch.Tensor, param: float = 0.0) -> torch.Tensor:
        return self.encoder(self.head(x), param)

    def payload(self, z: torch.Tensor) -> bytes:
        """One wire frame for a code batch: float32 symbols (analog) or packed n-bit levels (digital)."""
        if self.digital:
            return wire.encode_digital(quantize(z, self.bits), self.bits, self.pair_id)
        return wire.encode_analog(z, self.pair_id)


class EdgeHalf(_Half):
    """Received symbols z_hat -> logits; receive() checks and unpacks a wire frame."""

    def __init__(self, decoder: nn.Module, tail: nn.Module, meta: dict[str, Any], channel: Channel):
        super().__init__(meta, channel)
        self.decoder, self.tail = decoder, tail
        self.classes: list[str] | None = meta.get("classes")

    def forward(self, z_hat: torch.Tensor, param: float = 0.0) -> torch.Tensor:
        return self.tail(self.decoder(z_hat, param))

    def receive(self, buf: bytes) -> torch.Tensor:
        """Wire frame -> symbols (N, C', H', W'); WireError for another export, kind or shape."""
        frame, t = wire.decode(buf, expected_pair_id=self.pair_id)
        if (frame.kind == "digital") != self.digital or (self.digital and frame.bits != self.bits):
            want = f"digital {self.bits}-bit levels" if self.digital else "analog symbols"
            raise wire.WireError(f"frame holds {frame.kind} data ({frame.bits or frame.dtype}); this edge expects {want}")
        if len(frame.shape) != 4 or tuple(frame.shape[1:]) != self.code_shape:
            raise wire.WireError(f"frame shape {frame.shape} does not match this edge's code (N, "
                                 f"{', '.join(map(str, self.code_shape))})")
        return t.float() / (2**self.bits - 1) if self.digital else t


def _pair_id(device: dict[str, torch.Tensor], edge: dict[str, torch.Tensor], config: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for state in (device, edge):
        for k in sorted(state):
            h.update(k.encode())
            h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _meta(config: RunConfig, half: str, pair_id: str) -> dict[str, str]:
    import timm

    return {
        "format": FORMAT, "half": half, "pair_id": pair_id, "bnpp_version": __version__,
        "timm_model": config.model, "timm_version": timm.__version__, "torch_version": torch.__version__,
        "run_config": json.dumps(config.to_dict()),
    }


def export_halves(run_dir: str | Path, out_dir: str | Path) -> ExportResult:
    """Write DIR/device.safetensors and DIR/edge.safetensors from a fitted run (atomically)."""
    from safetensors.torch import save_file

    run = load_run(run_dir)
    p = run.pipeline
    device = {**_prefixed("head.", p.head), **_prefixed("encoder.", p.codec.encoder)}
    edge = {**_prefixed("decoder.", p.codec.decoder), **_prefixed("tail.", p.tail)}
    pair_id = _pair_id(device, edge, run.config.to_dict())
    out = Path(out_dir)
    paths = {}
    for half, state in (("device", device), ("edge", edge)):
        path = out / (DEVICE_FILE if half == "device" else EDGE_FILE)
        meta = _meta(run.config, half, pair_id)
        atomic_write(path, lambda tmp, s=state, m=meta: save_file(s, tmp, metadata=m))
        paths[half] = path
    channel = p.channel
    code_shape = list(p.codec.config.code_shape)
    shape = [1, *code_shape]
    bits = channel.bits if channel.digital else None
    return ExportResult(
        device_path=str(paths["device"]), edge_path=str(paths["edge"]),
        device_bytes=paths["device"].stat().st_size, edge_bytes=paths["edge"].stat().st_size,
        device_params=sum(t.numel() for n, t in device.items() if _is_param(p, n)),
        edge_params=sum(t.numel() for n, t in edge.items() if _is_param(p, n)),
        pair_id=pair_id, code_shape=code_shape, payload_bytes=wire.payload_size(shape, bits=bits),
        header_bytes=wire.header_length(len(shape)), digital=bool(channel.digital),
    )


def _prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _is_param(p: nn.Module, name: str) -> bool:
    prefix, _, rest = name.partition(".")
    module = {"head": p.head, "tail": p.tail, "encoder": p.codec.encoder, "decoder": p.codec.decoder}[prefix]
    return rest in dict(module.named_parameters())


def _read_half(path: str | Path, half: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], RunConfig]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"'{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise ExportError(f"'{path}' is not a readable safetensors file (corrupt or truncated?): "
                          f"{str(e).splitlines()[0][:160] if str(e) else type(e).__name__}") from None
    if meta.get("format") != FORMAT:
        raise ExportError(f"'{path}' is not a bnpp half (format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("half") != half:
        raise ExportError(f"'{path}' is the {meta.get('half')} half; expected the {half} half",
                          hint=f"use load_{meta.get('half')} / the {meta.get('half')}.safetensors file")
    try:
        config = RunConfig.from_dict(json.loads(meta["run_config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise ExportError(f"'{path}' has broken metadata: {e}") from None
    info = {**config.to_dict(), "pair_id": meta["pair_id"], "timm_version": meta.get("timm_version"),
            "bnpp_version": meta.get("bnpp_version")}
    return tensors, info, config


def _rebuild(config: RunConfig):
    """The architecture of the run (timm init; every tensor is overwritten from the file after)."""
    from .backbone import create_timm_model

    model = create_timm_model(config.model, dict(config.create_kwargs)).eval()
    pipeline, _ = build_pipeline(model, config)
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
    tensors, meta, config = _read_half(path, "device")
    p = _rebuild(config)
    _load_into(p.head, tensors, "head.", path)
    _load_into(p.codec.encoder, tensors, "encoder.", path)
    return DeviceHalf(p.head, p.codec.encoder, meta, ChannelConfig(**config.channel).build()).eval()


def load_edge(path: str | Path) -> EdgeHalf:
    """Rebuild the edge half (decoder + tail) from its file alone, in eval mode."""
    tensors, meta, config = _read_half(path, "edge")
    p = _rebuild(config)
    _load_into(p.codec.decoder, tensors, "decoder.", path)
    _load_into(p.tail, tensors, "tail.", path)
    return EdgeHalf(p.codec.decoder, p.tail, meta, ChannelConfig(**config.channel).build()).eval()


def check_pair(device: DeviceHalf, edge: EdgeHalf) -> None:
    if device.pair_id != edge.pair_id:
        raise ExportError(f"the halves come from two different exports (pair id {device.pair_id} vs {edge.pair_id})",
                          hint="export both files together with `bnpp export RUN --out DIR`")
