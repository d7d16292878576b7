"""One candidate, fitted and measured: the step that `bnpp search` repeats and the rate-accuracy
benchmark runs for each grid cell.

    fit_and_measure(FitConfig, data, conditions, draws) -> Trial
      a finished run in fit.out is reused; one stopped half way resumes from its checkpoint; an
      empty or missing directory is fitted (fit_codec) -> load_run -> encoder and decoder MACs for
      one image -> evaluate_run on ``data`` at ``conditions``

    sent_per_image(EvalResult) -> (symbols, bits)   what one image sends, as the evaluation measured it

The caller decides whether a finished run may be reused (the search: its name says its budget;
the benchmark: its recipe and codec are compared first, and a stale run removed).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from ..split.macs import count_macs
from .config import FitConfig
from .evaluate import EvalConfig, EvalResult, evaluate_run
from .fit import fit_codec
from .pipeline import load_run
from .rundir import RunDir

ANALOG_SYMBOL_BITS = 32  # an analog symbol crosses a digital wire as a float32


@dataclass
class Trial:
    run: str  # the run directory: `bnpp eval` and `bnpp export` take it
    reused: bool  # the fit was found finished (nothing trained now)
    fit_seconds: float  # the fit's own seconds (metrics.json), whenever it ran
    features: dict[str, Any] | None  # the feature cache of a fit run now (built or reused, seconds)
    encoder_macs: int  # per image, device side (after the head)
    decoder_macs: int  # per image, edge side (before the tail)
    metrics: dict[str, Any]  # the run's metrics.json
    evaluation: EvalResult

    @property
    def features_s(self) -> float:
        """Seconds the feature cache cost this fit besides fit_seconds (0 when reused or off)."""
        f = self.features or {}
        return float(f.get("build_s", 0.0)) + float(f.get("key_s", 0.0))


def fit_and_measure(fit: FitConfig, data: str, conditions: Sequence[float] | None, draws: int, *,
                    limit: int | None = None, data_root: str | None = None) -> Trial:
    """Fit ``fit`` (or reuse / resume the run in fit.out), then evaluate it on ``data``."""
    run_dir = RunDir(fit.out)
    reused, features = run_dir.finished, None
    if not reused:
        fit = replace(fit, resume=run_dir.has_checkpoint,
                      overwrite=not run_dir.has_checkpoint and not run_dir.is_empty())
        features = fit_codec(fit).features
    run = load_run(run_dir.path)
    pipeline = run.pipeline.eval()
    with torch.no_grad():  # before evaluate_run moves the pipeline to the device
        f = pipeline.head(torch.zeros(1, *run.config.data_config["input_size"]))
        z = pipeline.codec.encoder(f, 0.0)
    encoder_macs = count_macs(pipeline.codec.encoder, f, 0.0)
    decoder_macs = count_macs(pipeline.codec.decoder, z, 0.0)
    ev = evaluate_run(EvalConfig(run=str(run_dir), data=data, conditions=list(conditions) if conditions else None,
                                 draws=draws, limit=limit, data_root=data_root or fit.data_root, device=fit.device,
                                 seed=fit.seed), run=run)
    metrics = run_dir.read_metrics() or {}
    return Trial(str(run_dir), reused, float(metrics.get("seconds", 0.0)), features, encoder_macs, decoder_macs,
                 metrics, ev)


def sent_per_image(ev: EvalResult) -> tuple[float, float]:
    """(channel symbols, bits) one image sends at the first condition evaluated, as measured there
    (a digital code's packed levels or coded streams, a variable-length code's prefix); bits that
    were not measured (an analog link) are the symbols as float32. With no condition evaluated (a
    noiseless link): the code's symbols and the frames' measured bits per image."""
    row = ev.results[0] if ev.results else {}
    symbols = row.get("symbols_per_image", ev.code_symbols)
    bits = row.get("payload_bits")
    if bits is None:
        bits = ev.bits_per_image
    return symbols, bits if bits is not None else ANALOG_SYMBOL_BITS * symbols
