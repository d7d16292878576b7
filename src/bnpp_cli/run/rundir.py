"""The run directory: the ONLY code that knows its files. Everyone else goes through ``RunDir``.

    RUN/config.json            RunConfig: backbone, split, codec, channel, data config, classes, fit
    RUN/backbone.safetensors   the backbone weights as the user brought them
    RUN/finetuned.safetensors  the backbone after phase joint (only if it ran): what the pipeline uses
    RUN/codec.safetensors      encoder + decoder weights (written when the fit finishes)
    RUN/metrics.json           per-epoch metrics of `bnpp fit`, its status ("running" | "done")
    RUN/checkpoint/state.pt    resumable state while the fit runs (torch.load(weights_only=True)):
                               at an epoch end, or within an epoch (its batch index and generators)

Every file is written atomically (files.atomic_write): a crash leaves the old file or the new one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ..errors import BnppError, RunError
from ..files import atomic_write, write_json
from ..split.checkpoint import read_state_dict
from .config import RunConfig

CONFIG_FILE = "config.json"
BACKBONE_FILE = "backbone.safetensors"
FINETUNED_FILE = "finetuned.safetensors"
CODEC_FILE = "codec.safetensors"
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "checkpoint/state.pt"
RUN_ENTRIES = (CONFIG_FILE, BACKBONE_FILE, FINETUNED_FILE, CODEC_FILE, METRICS_FILE, CHECKPOINT_FILE.split("/")[0])


def save_tensors(path: str | Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A state dict as safetensors, atomically (contiguous CPU copies)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata or {"format": "pt"}))


class RunDir:
    """One run directory on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    # -- what is there ------------------------------------------------------------------------
    @property
    def is_run(self) -> bool:
        return (self.path / CONFIG_FILE).is_file()

    @property
    def finished(self) -> bool:
        """The fit ended: its codec weights are written (the checkpoint is gone)."""
        return (self.path / CODEC_FILE).is_file()

    @property
    def finetuned(self) -> bool:
        return (self.path / FINETUNED_FILE).is_file()

    @property
    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT_FILE).is_file()

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(self.path.iterdir())

    def foreign_entries(self) -> list[str]:
        """Names in the directory that no bnpp run writes (atomic_write's leftovers are a run's own)."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir()
                      if p.name not in RUN_ENTRIES and not (p.name.startswith(".") and p.name.endswith(".tmp")))

    @property
    def replaceable(self) -> bool:
        """Safe for --overwrite: a bnpp run (or what a killed one left), and nothing else."""
        return self.path.is_dir() and not self.foreign_entries()

    def file(self, name: str) -> Path:
        """Path of one of the run's files, for messages ("see RUN/config.json")."""
        return self.path / name

    # -- reading ------------------------------------------------------------------------------
    def read_config(self) -> RunConfig:
        cfg_file = self.path / CONFIG_FILE
        if not cfg_file.is_file():
            raise RunError(f"'{self.path}' is not a bnpp run directory (no {CONFIG_FILE})",
                           hint="create one with `bnpp fit MODEL --split ... --out DIR`")
        try:
            return RunConfig.from_dict(json.loads(cfg_file.read_text()))
        except (ValueError, TypeError, BnppError) as e:
            raise RunError(f"'{cfg_file}' is not a valid bnpp run config: {e}") from None

    def check_complete(self) -> None:
        for name in (BACKBONE_FILE, CODEC_FILE):
            if not (self.path / name).is_file():
                raise RunError(f"run '{self.path}' is incomplete: {name} is missing (did `bnpp fit` finish?)",
                               hint="finish it with `bnpp fit ... --resume`")

    def read_source_backbone(self) -> dict[str, torch.Tensor]:
        """The backbone weights as the user brought them."""
        return read_state_dict(self.path / BACKBONE_FILE)

    def read_backbone(self) -> dict[str, torch.Tensor]:
        """The backbone weights the pipeline uses: fine-tuned if phase joint ran, else the source."""
        return read_state_dict(self.path / (FINETUNED_FILE if self.finetuned else BACKBONE_FILE))

    def read_codec(self) -> dict[str, torch.Tensor]:
        return read_state_dict(self.path / CODEC_FILE)

    def read_metrics(self) -> dict[str, Any] | None:
        path = self.path / METRICS_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def load_checkpoint(self, map_location: torch.device | str = "cpu") -> dict[str, Any]:
        """The resumable state; RunError saying why when there is none."""
        if not self.has_checkpoint:
            if self.finished:  # the fit finished: its checkpoint was removed then
                raise RunError(f"cannot resume '{self.path}': its fit finished, there is no checkpoint to go on "
                               f"from", hint="to train longer, start a new run with a new --out")
            raise RunError(f"cannot resume '{self.path}': the fit stopped before its first checkpoint",
                           hint="start it again with --overwrite")
        return torch.load(self.path / CHECKPOINT_FILE, map_location=map_location, weights_only=True)

    # -- writing ------------------------------------------------------------------------------
    def write_start(self, config: RunConfig, backbone: dict[str, torch.Tensor]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.path / CONFIG_FILE, config.to_dict())
        save_tensors(self.path / BACKBONE_FILE, backbone)

    def clear(self) -> None:
        """Remove a run's files (--overwrite), only after ``replaceable`` said there is nothing else."""
        if not self.replaceable:
            raise RunError(f"'{self.path}' holds files that are not a bnpp run's: not deleting them")
        for entry in self.path.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def save_checkpoint(self, state: dict[str, Any], epochs: list[dict[str, Any]],
                        validation: dict[str, Any] | None = None) -> None:
        """The last checkpoint replaces the one before, atomically (a kill leaves one of them whole)."""
        atomic_write(self.path / CHECKPOINT_FILE, lambda tmp: torch.save(state, tmp))
        write_json(self.path / METRICS_FILE, {"status": "running", "validation": validation or {}, "epochs": epochs})

    def write_final(self, codec: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor] | None,
                    seconds: float, epochs: list[dict[str, Any]], validation: dict[str, Any] | None = None) -> None:
        save_tensors(self.path / CODEC_FILE, codec)
        if finetuned is not None:
            save_tensors(self.path / FINETUNED_FILE, finetuned)
        write_json(self.path / METRICS_FILE, {"status": "done", "seconds": seconds, "validation": validation or {},
                                              "epochs": epochs})
        shutil.rmtree(self.path / CHECKPOINT_FILE.split("/")[0], ignore_errors=True)
