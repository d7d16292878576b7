"""bnpp: device-edge co-inference with learned feature compression (BottleNet++) for any timm model.

The public API (imported lazily, so that `bnpp --help` never imports torch):

    from bnpp_cli import load_backbone, trace_model, split_model, profile_model
    from bnpp_cli import fit_codec, evaluate_run, export_halves, load_device, load_edge
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BackboneConfig": "backbone", "load_backbone": "backbone",
    "trace_model": "split", "split_model": "split", "SplitPoint": "split",
    "count_macs": "compute",
    "ProfileConfig": "profile", "Budget": "profile", "profile_model": "profile",
    "create_channel": "channels", "list_channels": "channels",
    "CodecConfig": "codec", "plan_codec": "codec", "build_codec": "codec",
    "load_dataset": "data",
    "load_run": "pipeline", "SplitPipeline": "pipeline",
    "FitConfig": "train", "fit_codec": "train",
    "EvalConfig": "evaluate", "evaluate_run": "evaluate",
    "export_halves": "export", "load_device": "export", "load_edge": "export",
    "BnppError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'bnpp_cli' has no attribute {name!r}")
