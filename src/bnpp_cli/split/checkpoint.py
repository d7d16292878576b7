"""Local checkpoints, read without unpickling: their tensors (safetensors, or torch.load with
weights_only=True), strict loading into a timm model with a hint that names the mismatch, and a
.safetensors file's string metadata (the normalisation and top-1 it records).

    read_state_dict(PATH) -> {name: tensor}       load_checkpoint(model, PATH)
    checkpoint_metadata(PATH) -> {key: str}        metadata_triple(meta, "mean"), metadata_top1(meta, "top1")
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_NESTING_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")


def checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """A .safetensors checkpoint's string metadata (timm_model, mean, std, top1, ...); {} for other
    formats, none, or a file that cannot be read (load_checkpoint says why)."""
    if Path(path).suffix != ".safetensors":
        return {}
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def metadata_triple(meta: dict[str, str], key: str) -> list[float] | None:
    """An RGB triple from metadata: "0.485,0.456,0.406" or "[0.485, 0.456, 0.406]"; None if absent or not one."""
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        values = [float(v) for v in raw.strip().strip("[]()").split(",")]
    except ValueError:
        return None
    ok = len(values) == 3 and all(math.isfinite(v) for v in values) and (key != "std" or min(values) > 0)
    return values if ok else None


def metadata_top1(meta: dict[str, str], key: str) -> float | None:
    """A top-1 from metadata, as a fraction ("0.8669" or "86.69"); None if absent or not a number."""
    try:
        value = float(meta[key])
    except (KeyError, ValueError):
        return None
    value = value / 100 if 1 < value <= 100 else value
    return value if 0 <= value <= 1 else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local checkpoint, never unpickling: safetensors, or torch.load(weights_only=True)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint '{path}' does not exist")
    if p.suffix not in CHECKPOINT_SUFFIXES:
        raise ModelError(f"checkpoint '{path}' has an unsupported suffix '{p.suffix}'",
                         hint="valid: " + ", ".join(CHECKPOINT_SUFFIXES))
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p), device="cpu")
        else:
            with warnings.catch_warnings():  # torch's own advice is to unpickle: we never do
                warnings.simplefilter("ignore")
                state = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" (e.g. {found.group(1)})" if found else ""
        raise ModelError(f"checkpoint '{path}' holds pickled Python objects besides tensors{what}: bnpp reads "
                         f"weights only and never unpickles a file",
                         hint="save model.state_dict() as .safetensors (safetensors.torch.save_file)") from None
    except Exception as e:
        reason = _ANSI.sub("", str(e)).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"checkpoint '{path}' cannot be read (corrupt or not a weights file): {reason}") from None
    for key in _NESTING_KEYS:  # the usual {"state_dict": ...} / {"model": ...} nesting
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"checkpoint '{path}' holds no state_dict of tensors")
    prefix = "module."  # DataParallel / DDP
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's classifier (timm's get_classifier()), empty if it has none."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if not isinstance(head, nn.Module):
        return set()
    for name, module in model.named_modules():
        if module is head:
            return {f"{name}.{k}" if name else k for k in module.state_dict()}
    return set()


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a local checkpoint strictly; a mismatch names the keys and hints at num_classes."""
    state = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} with other shapes (e.g. {k}: {list(state[k].shape)} in the file, "
                         f"{list(own[k].shape)} in the model)")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        classifier = _classifier_keys(model)
        if mismatched and set(mismatched) <= classifier and not missing and not unexpected:
            k = sorted(mismatched)[0]
            hint = f"only the classifier differs: try `num_classes` {state[k].shape[0]}"
        else:  # a checkpoint of another architecture (or variant): num_classes cannot fix that
            hint = (f"{len(mismatched) + len(missing) + len(unexpected)} tensors do not fit (the model has {len(own)}): "
                    "is it a checkpoint of this model (name, `model_kwargs`)?")
        raise ModelError(f"checkpoint '{path}' does not match the model: " + "; ".join(parts), hint=hint)
    model.load_state_dict(state, strict=True)
