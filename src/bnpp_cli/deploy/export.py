"""`bnpp export`: a fitted run -> the device half and the edge half (bundle.py has the file format)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..link.transmit import header_bytes, payload_bytes
from ..run.pipeline import load_run
from .bundle import DEVICE_FILE, EDGE_FILE, pair_id, write_half


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


def export_halves(run_dir: str | Path, out_dir: str | Path) -> ExportResult:
    """Write DIR/device.safetensors and DIR/edge.safetensors from a fitted run (atomically)."""
    run = load_run(run_dir)
    p = run.pipeline
    device = {**_prefixed("head.", p.head), **_prefixed("encoder.", p.codec.encoder)}
    edge = {**_prefixed("decoder.", p.codec.decoder), **_prefixed("tail.", p.tail)}
    pair = pair_id(device, edge, run.config.to_dict())
    out = Path(out_dir)
    paths = {half: write_half(out / name, half, state, run.config, pair)
             for half, name, state in (("device", DEVICE_FILE, device), ("edge", EDGE_FILE, edge))}
    code_shape = list(p.codec.config.code_shape)
    return ExportResult(
        device_path=str(paths["device"]), edge_path=str(paths["edge"]),
        device_bytes=paths["device"].stat().st_size, edge_bytes=paths["edge"].stat().st_size,
        device_params=sum(t.numel() for m in (p.head, p.codec.encoder) for t in m.parameters()),
        edge_params=sum(t.numel() for m in (p.codec.decoder, p.tail) for t in m.parameters()),
        pair_id=pair, code_shape=code_shape, payload_bytes=payload_bytes(code_shape, p.channel),
        header_bytes=header_bytes(code_shape), digital=bool(p.channel.digital),
    )


def _prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
