"""bnpp: device-edge co-inference with learned feature compression (BottleNet++) for any timm model.

The public API (imported lazily, so that `bnpp --help` never imports torch):

    from bnpp_cli import load_backbone, trace_model, split_model, profile_model
    from bnpp_cli import FitConfig, ChannelConfig, fit_codec, EvalConfig, evaluate_run, export_halves, PredictConfig, predict

The package is laid out by pipeline stage (docs/layout.md): split/ (where to cut), codec/ (what
learns), link/ (what crosses the cut), data/, run/ (a fitted run), deploy/ (what ships), cli/.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BackboneConfig": "split.backbone", "load_backbone": "split.backbone",
    "trace_model": "split.graph", "split_model": "split.graph", "SplitPoint": "split.graph",
    "count_macs": "split.macs",
    "ProfileConfig": "split.profile", "Budget": "split.profile", "profile_model": "split.profile",
    "create_channel": "link.registry", "list_channels": "link.registry", "ChannelConfig": "link.config",
    "CodecConfig": "codec.config", "plan_codec": "codec.config", "build_codec": "codec.model",
    "list_presets": "codec.presets", "get_preset": "codec.presets",
    "load_dataset": "data.datasets",
    "RunConfig": "run.config", "FitConfig": "run.config", "RunDir": "run.rundir",
    "load_run": "run.pipeline", "SplitPipeline": "run.pipeline",
    "fit_codec": "run.fit", "EvalConfig": "run.evaluate", "evaluate_run": "run.evaluate",
    "resolve_recipe": "run.fit", "fit_and_measure": "run.measure",
    "SearchConfig": "run.search", "search_split_rate": "run.search", "plot_search": "run.search_plot",
    "measure_images": "run.baselines", "validation_images": "run.baselines", "BatchTransform": "data.batching",
    "export_halves": "deploy.export", "ExportConfig": "deploy.export", "ExportResult": "deploy.export",
    "FitResult": "run.fit", "EvalResult": "run.evaluate", "load_device": "deploy.halves", "load_edge": "deploy.halves",
    "predict": "deploy.predict", "PredictConfig": "deploy.predict", "PredictResult": "deploy.predict",
    "Prediction": "deploy.predict",
    "load_pair": "deploy.halves", "load_onnx_pair": "deploy.onnx",
    "ServeConfig": "deploy.server", "run_server": "deploy.server", "Backend": "deploy.backend",
    "BnppBackend": "deploy.backend", "EdgeClient": "deploy.client", "Request": "deploy.protocol",
    "encode_request": "deploy.protocol",
    "channel_uses": "link.capacity", "outage": "link.capacity", "rayleigh_outage": "link.capacity",
    "expected_top1": "link.capacity",
    "PhyConfig": "link.phy", "LDPCLink": "link.ldpc", "BlockPlan": "link.ldpc",
    "BnppError": "errors", "CodecError": "errors", "ServeError": "errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'bnpp_cli' has no attribute {name!r}")
