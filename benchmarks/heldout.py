"""Validation images the shared backbone has never seen: one half of the official CIFAR-10 test split.

The shared resnet18 was trained on all 50,000 official training images, so every image of train.npz
(half of them) is one it has seen: its top-1 there is 94.32 % against 86.69 % on the test split, and
a drop measured there runs 2.8-3.6 points above the same model's drop on new images (rate_frontier.py's train-holdout runs). A
choice made on such images (which ratio is within 1 point) is biased. The only unseen images are the
10,000 of test.npz, so the benchmarks that make choices split it once, by a seeded permutation:

    validation  the first `val_images` of the permutation (choices: ratios, recipes, length tables)
    test        the rest (the final figures, measured once per chosen point)

Both halves are written as .npz files next to the benchmark's runs (regenerated, never committed),
and the permutation's seed and a hash of each half's indices go into the results file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def test_halves(test_npz: Path, out_dir: Path, *, seed: int = 0, val_images: int = 5000) -> tuple[Path, Path, dict]:
    """(validation .npz, test .npz, description) of a seeded split of ``test_npz``."""
    raw = np.load(test_npz)
    n = len(raw["y"])
    if not 0 < val_images < n:
        raise ValueError(f"val_images {val_images} must be between 1 and {n - 1} (test.npz has {n} images)")
    order = np.random.default_rng(seed).permutation(n)
    halves = {"val": np.sort(order[:val_images]), "test": np.sort(order[val_images:])}
    extra = {"class_names": raw["class_names"]} if "class_names" in raw.files else {}
    paths, info = {}, {"source": str(test_npz.name), "seed": seed, "rule": "numpy default_rng(seed).permutation; "
                       "the first val_images are validation, the rest test"}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, idx in halves.items():
        digest = hashlib.sha256(idx.astype(np.int64).tobytes()).hexdigest()[:16]
        path = out_dir / f"{test_npz.stem}_{name}_{len(idx)}_{digest}.npz"
        if not path.is_file():  # named by the indices' hash: a different split never reuses a file
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, x=raw["x"][idx], y=raw["y"][idx], **extra)
            tmp.replace(path)
        paths[name] = path
        info[name] = {"images": int(len(idx)), "indices_sha256_16": digest}
    return paths["val"], paths["test"], info


VALIDATION_RULES = ("test-half", "train-holdout")


def validation_images(rule: str, data: Path, out: Path, runs: Path, seed: int = 0) -> tuple[Path, Path, dict]:
    """(validation .npz, test .npz, description) for a benchmark's --validation rule: ``test-half``
    (the halves above with permutation seed 0 whatever the fits' seed, so that runs of several seeds
    share them; kept under out/runs/heldout) or ``train-holdout`` (the earlier rule: the images a fit
    with --val-fraction 0.1 and this seed holds out of train.npz, written to runs/val.npz, with all of
    test.npz as the test images)."""
    if rule == "test-half":
        return test_halves(data / "test.npz", out / "runs" / "heldout", seed=0)
    if rule != "train-holdout":
        raise ValueError(f"unknown validation rule {rule!r}; valid: {', '.join(VALIDATION_RULES)}")
    return (train_holdout(runs / "val.npz", data / "train.npz", seed), data / "test.npz",
            {"source": "held out of train.npz (0.1, seed 0), seen by the backbone in its training"})


def train_holdout(path: Path, train: Path, seed: int) -> Path:
    """The images a fit with --val-fraction 0.1 and this seed holds out of train.npz, as their own file."""
    from bnpp_cli.data.datasets import load_dataset, split_train_val

    if path.is_file():
        return path
    _, val = split_train_val(load_dataset(str(train), input_size=(32, 32), train=True), 0.1, seed)
    raw = np.load(train)
    idx = np.asarray(val.indices)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=raw["x"][idx], y=raw["y"][idx], **({"class_names": raw["class_names"]}
                                                          if "class_names" in raw.files else {}))
    return path
