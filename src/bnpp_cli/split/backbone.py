"""Backbone loading: any timm model, the way timm users expect.

    load_backbone(BackboneConfig("resnet18", checkpoint="r18.safetensors", num_classes=10, img_size=32))
        -> Backbone(model in eval mode, data_config (mean, std, input_size), weights label)

Weights come from one of three places, and every figure that depends on them says which
(`Backbone.weights`): "random" (timm's init, the default), "pretrained" (timm's own weights,
fetched from the hub when online), or the path of a local checkpoint (.safetensors, or .pth/.pt/.bin
read with ``torch.load(weights_only=True)``: nothing a user hands us is unpickled).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, choices_hint
from .checkpoint import checkpoint_metadata, load_checkpoint, metadata_top1, metadata_triple

_WEIGHTS_HINT = "local weights: `checkpoint` FILE; random init: without `pretrained`"


@dataclass
class BackboneConfig:
    """The model to load: a timm name, its weights and its size (`load_backbone`).

    Attributes:
        model: the timm model name, e.g. "resnet18", "vit_tiny_patch16_224"; required.
        pretrained: timm's own pretrained weights; default False, since they need the network.
        checkpoint: a local weights file (.safetensors, or .pth/.pt read with weights_only=True),
            overrides ``pretrained``; default None.
        num_classes: the classifier's size; default None: the model's (1000 for ImageNet models).
        img_size: the square input size in pixels; default None: the model's default.
        model_kwargs: further timm.create_model keyword arguments (dict); default empty.
        reparam: fuse re-parameterisable branches (timm's reparameterize_model), the deploy form;
            default False.
        mean: the input normalisation mean the weights were trained with, [R, G, B]; default None:
            the checkpoint's own metadata where a .safetensors file records one ("mean"), else
            timm's data config (as timm train.py's --mean).
        std: the input normalisation std, [R, G, B]; default None: as ``mean`` ("std").
    """

    model: str
    pretrained: bool = False
    checkpoint: str | None = None
    num_classes: int | None = None
    img_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    reparam: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Backbone:
    model: nn.Module
    config: BackboneConfig
    # mean, std, input_size (C, H, W), crop_pct, interpolation; normalisation (where mean and std came
    # from, in words) and, where the checkpoint records one, recorded_top1
    data_config: dict[str, Any]
    weights: str  # "random" | "pretrained" | the checkpoint path
    create_kwargs: dict[str, Any]  # exactly what timm.create_model received (to rebuild it)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.data_config["input_size"])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", 0) or 0)


def parse_model_kwargs(items: list[str] | None) -> dict[str, Any]:
    """timm train.py's ``--model-kwargs key=value`` (repeatable) -> {key: value}; values parse as
    int, float, bool (true/false) or else stay strings: ``patch_size=4 depth=6 class_token=false``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ModelError(f"`model_kwargs` {item!r} is not key=value", hint="e.g. `model_kwargs` patch_size=4")
        out[key] = _parse_value(raw.strip())
    return out


def _parse_value(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def _check_model_name(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    names = timm.list_models()
    raise ModelError(f"unknown timm model '{name}'", hint=choices_hint(name, names))


def list_timm_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """timm.list_models: names matching a wildcard pattern ("resnet*", "*vit*"); with ``pretrained``,
    the pretrained weights' full names (model.tag, e.g. resnet18.a1_in1k). No match is an error
    that names close model names."""
    import timm

    names = timm.list_models(pattern, pretrained=pretrained)
    if not names:
        every = timm.list_models()
        close = choices_hint(pattern.strip("*"), every) if pattern.strip("*") else None
        kind = "pretrained timm weights" if pretrained else "timm model"
        raise ModelError(f"no {kind} matches {pattern!r} ({len(every)} models in timm {timm.__version__})",
                         hint=close)
    return list(names)


def create_timm_model(name: str, create_kwargs: dict[str, Any], pretrained: bool = False) -> nn.Module:
    """timm.create_model, with `None` kwargs dropped so that they never override a model's defaults."""
    import timm

    kwargs = {k: v for k, v in create_kwargs.items() if v is not None}
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        bad = [k for k in kwargs if k in str(e)]
        raise ModelError(f"timm model '{name}' does not accept {', '.join(bad) or 'these arguments'}: {e}") from None


def load_backbone(config: BackboneConfig) -> Backbone:
    """Create the timm model, load its weights, resolve its data config. Eval mode."""
    _check_model_name(config.model)
    if config.img_size is not None and not (8 <= config.img_size <= 4096):
        raise ModelError(f"`img_size` {config.img_size} is out of range", hint="valid: 8 to 4096 pixels")
    if config.num_classes is not None and config.num_classes < 1:
        raise ModelError(f"`num_classes` {config.num_classes} must be at least 1")
    if config.pretrained and config.checkpoint is None:
        _check_weights_reachable(config.model)  # in seconds, before any model is built
    create_kwargs: dict[str, Any] = dict(config.model_kwargs)
    if config.num_classes is not None:
        create_kwargs["num_classes"] = config.num_classes
    if config.img_size is not None:
        create_kwargs["img_size"] = config.img_size
        try:
            model = create_timm_model(config.model, create_kwargs)
        except ModelError:
            # conv nets take any input size: img_size only changes the data config
            create_kwargs.pop("img_size")
            model = None
    else:
        model = None
    use_pretrained = config.pretrained and config.checkpoint is None
    if model is None or use_pretrained:
        if use_pretrained:
            model = _create_pretrained(config.model, create_kwargs)
        else:
            model = create_timm_model(config.model, create_kwargs)
    weights = "pretrained" if use_pretrained else "random"
    if config.checkpoint is not None:
        load_checkpoint(model, config.checkpoint)
        weights = str(config.checkpoint)
    model.eval()
    if config.reparam:  # RepVGG, MobileOne, FastViT...: branches fused into one conv, as a device runs them
        from timm.utils.model import reparameterize_model

        model = reparameterize_model(model)
    meta = checkpoint_metadata(config.checkpoint) if config.checkpoint is not None else {}
    mean, std = config.mean, config.std
    from_meta = []
    for name in ("mean", "std"):
        if (mean if name == "mean" else std) is None and metadata_triple(meta, name) is not None:
            from_meta.append(name)
    mean = mean if mean is not None else metadata_triple(meta, "mean")
    std = std if std is not None else metadata_triple(meta, "std")
    data_config = resolve_data_config(model, config.img_size, mean, std)
    if from_meta:
        data_config["normalisation"] = f"the checkpoint's metadata ({' and '.join(from_meta)})"
    elif config.mean is not None or config.std is not None:
        data_config["normalisation"] = "given (`mean`, `std`)"
    else:
        data_config["normalisation"] = f"timm's data config for {config.model}"
    recorded = metadata_top1(meta, "top1")
    if recorded is not None:
        data_config["recorded_top1"] = recorded  # what the checkpoint says it scores (its own test images)
    _probe_forward(model, data_config["input_size"], config)
    return Backbone(model, config, data_config, weights, create_kwargs)


def _create_pretrained(name: str, create_kwargs: dict[str, Any]) -> nn.Module:
    try:
        return create_timm_model(name, create_kwargs, pretrained=True)
    except ModelError:
        raise
    except Exception as e:  # hub errors come in many types (OSError, HTTP, offline mode)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"could not fetch pretrained weights for '{name}' (offline?): {reason}",
            hint=_WEIGHTS_HINT,
        ) from None


def _check_weights_reachable(name: str, timeout_s: float = 3.0) -> None:
    """Offline, the hub client retries for about a minute before it gives up: find out in seconds.
    Weights already in the local cache need no network; otherwise one TCP connection to where
    they would come from (the hub, timm's URL, or the https proxy) must open within ``timeout_s``."""
    import os
    import socket
    from urllib.parse import urlparse

    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return  # timm will say that the model has no pretrained weights
    hub_id, url = getattr(cfg, "hf_hub_id", None), getattr(cfg, "url", None)
    if _cached(hub_id, url):
        return
    hint = _WEIGHTS_HINT
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelError(f"could not fetch pretrained weights for '{name}': HF_HUB_OFFLINE is set and they are "
                         f"not in the local cache", hint=hint)
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = proxy or (os.environ.get("HF_ENDPOINT", "https://huggingface.co") if hub_id else url)
    if not target:
        return
    where = urlparse(target if "//" in target else f"//{target}")
    host, port = where.hostname, where.port or (80 if where.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ModelError(f"could not fetch pretrained weights for '{name}' (offline?): {host}:{port} cannot be "
                         f"reached ({reason.lower()}) and the weights are not in the local cache", hint=hint) from None


def _cached(hub_id: str | None, url: str | None) -> bool:
    """Are the pretrained weights in the hub's or torch.hub's local cache?"""
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return False
        repo, _, revision = hub_id.partition("@")
        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
                return True
        return False
    if url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url.split("?")[0]).name).is_file()
    return False


def resolve_data_config(model: nn.Module, img_size: int | None = None, mean: list[float] | None = None,
                        std: list[float] | None = None) -> dict[str, Any]:
    """timm's data config (mean, std, input size, crop_pct, interpolation), plain types; an explicit
    mean / std (what the weights were trained with) replaces timm's."""
    from timm.data import resolve_model_data_config

    for name, values in (("mean", mean), ("std", std)):
        if values is not None and (len(values) != 3 or not all(math.isfinite(v) for v in values)
                                   or (name == "std" and min(values) <= 0)):
            raise ModelError(f"`{name}` {','.join(f'{v:g}' for v in values)} is not valid: give 3 numbers "
                             f"(one per RGB channel){', each > 0' if name == 'std' else ''}, e.g. "
                             f"{'0.485,0.456,0.406' if name == 'mean' else '0.229,0.224,0.225'}")
    cfg = dict(resolve_model_data_config(model))
    cfg["mean"] = mean if mean is not None else cfg["mean"]
    cfg["std"] = std if std is not None else cfg["std"]
    input_size = list(cfg["input_size"])
    if img_size is not None:
        input_size = [input_size[0], img_size, img_size]
    return {
        "input_size": [int(v) for v in input_size],
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "crop_pct": float(cfg.get("crop_pct", 1.0)),
        "interpolation": str(cfg.get("interpolation", "bilinear")),
    }


def _probe_forward(model: nn.Module, input_size, config: BackboneConfig) -> None:
    x = torch.zeros(1, *input_size)
    try:
        with torch.inference_mode():
            model(x)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(
            f"'{config.model}' does not run at input size {tuple(input_size)}: {reason}",
            hint="choose another `img_size`",
        ) from None
