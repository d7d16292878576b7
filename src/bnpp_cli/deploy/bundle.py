"""The deploy half file format: the ONLY code that reads or writes a half's file.

    DIR/device.safetensors   head.* + encoder.*   x -> z (channel symbols in [0, 1])
    DIR/edge.safetensors     decoder.* + tail.*   z_hat -> logits

Each file's string metadata is enough to rebuild its module with no other file: ``format``
(bnpp-half/1), ``half``, ``pair_id`` (a hash of both halves' tensors and the config that ties the
two together; the wire format carries it in every frame), ``bnpp_version``, ``timm_model``,
``timm_version``, ``torch_version`` and ``run_config`` (the run's RunConfig as JSON). The ONNX
halves (deploy/onnx.py owns those files) carry the same metadata, from ``half_metadata``, checked by
the same ``check_metadata``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import BnppError, ExportError
from ..files import atomic_write
from ..run.config import RunConfig

FORMAT = "bnpp-half/1"
DEVICE_FILE, EDGE_FILE = "device.safetensors", "edge.safetensors"
HALF_FILES = {"device": DEVICE_FILE, "edge": EDGE_FILE}


def half_path(deploy_dir: str | Path, half: str) -> Path:
    """DIR/device.safetensors or DIR/edge.safetensors; ExportError if DIR is not a directory."""
    d = Path(deploy_dir)
    if not d.is_dir():
        raise ExportError(f"deploy directory '{d}' does not exist", hint="make one with `bnpp export RUN --out DIR`")
    return d / HALF_FILES[half]


def pair_id(device: dict[str, torch.Tensor], edge: dict[str, torch.Tensor], config: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for state in (device, edge):
        for k in sorted(state):
            h.update(k.encode())
            h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def write_half(path: str | Path, half: str, tensors: dict[str, torch.Tensor], config: RunConfig, pair: str) -> Path:
    """One half's file, atomically."""
    from safetensors.torch import save_file

    meta = half_metadata(half, config, pair)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def half_metadata(half: str, config: RunConfig, pair: str) -> dict[str, str]:
    """The string metadata of one half: the same keys in a safetensors half and an ONNX half."""
    import timm

    return {
        "format": FORMAT, "half": half, "pair_id": pair, "bnpp_version": __version__,
        "timm_model": config.model, "timm_version": timm.__version__, "torch_version": torch.__version__,
        "run_config": json.dumps(config.to_dict()),
    }


def read_half(path: str | Path, half: str) -> tuple[dict[str, torch.Tensor], dict[str, Any], RunConfig]:
    """(tensors, metadata: the run config's fields + pair_id and versions, RunConfig) of one half."""
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
    info, config = check_metadata(meta, path, half)
    return tensors, info, config


def check_metadata(meta: dict[str, str], path: str | Path, half: str) -> tuple[dict[str, Any], RunConfig]:
    """(the run config's fields + pair_id and versions, RunConfig) of a half's metadata; ExportError
    for another format, the other half, or a broken run config."""
    if meta.get("format") != FORMAT:
        raise ExportError(f"'{path}' is not a bnpp half (format {meta.get('format')!r}, expected {FORMAT!r})")
    if meta.get("half") != half:
        raise ExportError(f"'{path}' is the {meta.get('half')} half; expected the {half} half",
                          hint=f"use load_{meta.get('half')} / the {meta.get('half')} file")
    try:
        config = RunConfig.from_dict(json.loads(meta["run_config"]))
    except (KeyError, ValueError, TypeError, BnppError) as e:
        raise ExportError(f"'{path}' has broken metadata: {e}") from None
    info = {**config.to_dict(), "pair_id": meta["pair_id"], "timm_version": meta.get("timm_version"),
            "bnpp_version": meta.get("bnpp_version")}
    return info, config
