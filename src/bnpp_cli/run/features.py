"""The feature cache of a codec-phase fit without augmentation: the frozen head's work done once.

In phase codec the backbone is frozen. Without augmentation, an image's head features f = head(x)
and the uncut model's logits tail(f) (the distillation target) are the same in every epoch and
for every candidate codec at that split, so they are computed once and the training loop reads
them instead of running the head (loop.train_epoch, the same loop: the head step is skipped).

    build_features(pipeline, source, rows, transform, ...) -> FeatureCache
      in memory (directory None), or in DIR as  KEY.features.npy  KEY.teacher.npy  KEY.labels.npy
      KEY.json  (plain float32 / int64 arrays, never pickled, each written atomically, the JSON
      last: an entry without its JSON is not one), read back memory-mapped.

KEY is a hash of everything that determines the arrays: the architecture and its create kwargs,
the weights' bytes, the split and its shape, the training images' bytes and labels in order, the
normalisation (mean, std), the device type and autocast. The cache holds the first ``rows`` rows of
``source`` (a fit's --limit takes a prefix): a later fit needing no more rows reuses it, one
needing more computes the missing rows only and rewrites the entry with its own count. So the
candidates at one split share one entry, and a search's growing rounds compute each row once.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.batching import BatchTransform, make_loader
from ..data.datasets import ImageDataset, dataset_labels
from ..errors import BnppError, RunError
from ..files import atomic_write, write_json
from .config import FitConfig, RunConfig

FORMAT = 1  # bump when what the arrays hold changes: older entries are then simply not found
_BATCH = 256  # rows per forward pass while building


class FeatureCache:
    """Head features (N, *shape) float32, teacher logits (N, K) float32 and labels (N,) int64 of
    the training images in their order; ``positions`` is what the loop batches over."""

    def __init__(self, features, teacher, labels: torch.Tensor, info: dict[str, Any]):
        self.features, self.teacher, self.labels, self.info = features, teacher, labels, info
        # an "image" of this dataset is its row number: make_loader batches it exactly as it batches
        # the images (same length, same seeded permutation), so batch i holds the same images
        self.positions = ImageDataset(labels, images=torch.arange(len(labels)), source="feature cache rows")

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, teacher logits) of these rows, on ``device``."""
        if isinstance(self.features, np.ndarray):  # memory-mapped: numpy gathers the rows
            index = rows.numpy()
            f = torch.from_numpy(np.ascontiguousarray(self.features[index]))
            t = torch.from_numpy(np.ascontiguousarray(self.teacher[index]))
        else:
            f, t = self.features[rows], self.teacher[rows]
        return f.to(device, non_blocking=True), t.to(device, non_blocking=True)


def weights_digest(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes) in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_digest(dataset) -> str:
    """sha256 over the images' uint8 bytes and the labels, in the dataset's order."""
    h = hashlib.sha256()
    h.update(f"{len(dataset)}|".encode())
    for x, y in make_loader(dataset, 1024, shuffle=False, seed=0):
        h.update(x.contiguous().numpy().tobytes())
        h.update(y.to(torch.int64).numpy().tobytes())
    return h.hexdigest()


def cache_key(*, model: str, create_kwargs: dict[str, Any], weights: str, split: str, shape: list[int],
              data: str, mean, std, device: str, amp: bool) -> str:
    """The entry's name: a hash of what determines the arrays (digests from the two functions above)."""
    record = {"format": FORMAT, "model": model, "create_kwargs": create_kwargs, "weights": weights, "split": split,
              "shape": list(shape), "data": data, "mean": [float(v) for v in mean], "std": [float(v) for v in std],
              "device": torch.device(device).type, "amp": bool(amp)}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:24]


@torch.no_grad()
def compute(pipeline: nn.Module, dataset, transform: BatchTransform, device: torch.device,
            amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """head(x) and tail(head(x)) of every image in order, float32 on the CPU (what the image path
    computes per batch in phase codec, under the same autocast)."""
    pipeline.head.eval()
    pipeline.tail.eval()
    feats, logits = [], []
    use_amp = amp and device.type == "cuda"
    for x, _ in make_loader(dataset, _BATCH, shuffle=False, seed=0):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            f = pipeline.head(transform(x).to(device))
            t = pipeline.tail(f)
        feats.append(f.float().cpu())
        logits.append(t.float().cpu())
    return torch.cat(feats), torch.cat(logits)


def build_features(pipeline: nn.Module, source, rows: int, transform: BatchTransform, device: torch.device, *,
                   amp: bool, directory: str | Path | None, key_parts: dict[str, Any] | None = None) -> FeatureCache:
    """The cache for the first ``rows`` images of ``source``: computed in memory (directory None),
    or read from / written to ``directory`` under the key of ``key_parts`` (cache_key's arguments
    without ``data``, which is the digest of ``source``)."""
    if transform.augment:
        raise RunError("a feature cache needs fixed inputs: it cannot be used with augmentation",
                       hint="pass --no-augment")
    used = torch.utils.data.Subset(source, range(rows)) if rows < len(source) else source
    t0 = time.perf_counter()
    if directory is None:
        f, t = compute(pipeline, used, transform, device, amp)
        return FeatureCache(f, t, dataset_labels(used), {"built": True, "rows": rows, "build_s": time.perf_counter() - t0,
                                                         "where": "memory"})
    key = cache_key(**(key_parts or {}), data=data_digest(source), mean=transform.mean, std=transform.std)
    key_s = time.perf_counter() - t0
    entry = _Entry(Path(directory), key)
    found = entry.read(rows)
    info = {"rows": rows, "key": key, "key_s": key_s, "where": str(entry.meta)}
    if found is not None:
        return FeatureCache(*found, {**info, "built": False, "build_s": 0.0, "computed_rows": 0})
    t1 = time.perf_counter()
    held = entry.read(None)  # fewer rows than asked (an earlier, smaller fit): only the rest is computed
    start = len(held[2]) if held is not None else 0
    f, t = compute(pipeline, torch.utils.data.Subset(source, range(start, rows)), transform, device, amp)
    labels = dataset_labels(used)
    if start:
        f = torch.cat([torch.from_numpy(np.array(held[0])), f])
        t = torch.cat([torch.from_numpy(np.array(held[1])), t])
    entry.write(f, t, labels)
    build_s = time.perf_counter() - t1
    return FeatureCache(*entry.read(rows), {**info, "built": True, "build_s": build_s, "computed_rows": rows - start})


def check_fit(config: FitConfig, world: int) -> None:
    """A feature cache needs inputs that do not change: no augmentation, the backbone frozen."""
    if config.feature_cache is False:
        return
    if config.augment:
        raise BnppError("--cache-features needs fixed inputs: it cannot be combined with --augment "
                        "(random crops and flips change the features every epoch)", hint="add --no-augment")
    if config.distill_features:
        raise BnppError(f"--cache-features holds the teacher's logits, not the tail features --distill-features "
                        f"{config.distill_features:g} matches", hint="drop --cache-features, or use --distill-features 0")
    if config.joint_epochs > 0:
        raise BnppError(f"--cache-features serves the frozen-backbone phase only, not --joint-epochs "
                        f"{config.joint_epochs} (phase joint changes the head)", hint="use --joint-epochs 0")
    if world > 1:
        raise BnppError(f"--cache-features is not supported under torchrun ({world} processes)",
                        hint="run one process, or drop --cache-features")
    if isinstance(config.feature_cache, str) and not config.feature_cache.strip():
        raise BnppError("--cache-features '': give a directory, or true for an in-memory cache")


def for_fit(config: FitConfig, rc: RunConfig, model: nn.Module, pipeline: nn.Module, source, rows: int,
            device: torch.device) -> FeatureCache | None:
    """The feature cache of a fit (None when off): the first ``rows`` images of ``source``."""
    if config.feature_cache is False:
        return None
    tf = BatchTransform(rc.data_config["mean"], rc.data_config["std"], augment=False)
    directory = config.feature_cache if isinstance(config.feature_cache, str) else None
    parts = None if directory is None else {
        "model": rc.model, "create_kwargs": rc.create_kwargs, "weights": weights_digest(model), "split": rc.split,
        "shape": rc.feature_shape, "device": config.device, "amp": config.amp}
    return build_features(pipeline, source, rows, tf, device, amp=config.amp, directory=directory, key_parts=parts)


class _Entry:
    """One cache entry's files in the directory."""

    def __init__(self, directory: Path, key: str):
        self.dir, self.key = directory, key
        self.meta = directory / f"{key}.json"
        self.arrays = {name: directory / f"{key}.{name}.npy" for name in ("features", "teacher", "labels")}

    def read(self, rows: int | None):
        """(features, teacher, labels) of the first ``rows`` rows (None: all it holds), memory-mapped;
        None when the entry is missing, holds fewer rows, or its files do not match its JSON."""
        try:
            meta = json.loads(self.meta.read_text())
            arrays = {k: np.load(p, mmap_mode="r", allow_pickle=False) for k, p in self.arrays.items()}
        except (OSError, ValueError):
            return None
        n = meta.get("rows", 0)
        rows = n if rows is None else rows
        if n < rows or any(len(a) != n for a in arrays.values()) or meta.get("key") != self.key:
            return None
        labels = torch.from_numpy(np.array(arrays["labels"][:rows]))
        return arrays["features"][:rows], arrays["teacher"][:rows], labels

    def write(self, features: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> None:
        self.meta.unlink(missing_ok=True)  # from here until the new JSON, the entry is not valid
        for name, tensor in (("features", features), ("teacher", teacher), ("labels", labels)):
            array = tensor.numpy()
            atomic_write(self.arrays[name], lambda tmp, a=array: _save(tmp, a))
        write_json(self.meta, {"key": self.key, "format": FORMAT, "rows": len(labels),
                               "feature_shape": list(features.shape[1:]), "classes": int(teacher.shape[1]),
                               "dtype": "float32"})


def _save(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # a file object: np.save would append .npy to a name
        np.save(fh, array, allow_pickle=False)
