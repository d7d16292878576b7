"""Shared fixtures: tiny timm models, the shared real data and model (skipped cleanly when absent)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CIFAR10 = SHARED / "data" / "cifar10"
RESNET18_CIFAR10 = SHARED / "models" / "resnet18_cifar10.safetensors"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def cifar10_dir() -> Path:
    if not (CIFAR10 / "test.npz").is_file():
        pytest.skip(f"{CIFAR10} not present: real-data test skipped")
    return CIFAR10


@pytest.fixture
def resnet18_cifar10() -> Path:
    if not RESNET18_CIFAR10.is_file():
        pytest.skip(f"{RESNET18_CIFAR10} not present: shared-model test skipped")
    return RESNET18_CIFAR10


class FittedRun(NamedTuple):
    run: Path  # the run directory (shared: copy it before changing anything in it)
    data: Path  # the tiny .npz it was fitted on
    result: object  # the FitResult


@pytest.fixture(scope="session")
def fitted(tmp_path_factory):
    """fitted(**tiny_run options) -> FittedRun: each kind of tiny run is fitted once per session.

    The suite asks for the same few kinds of run many times (test_resnet at layer2 under awgn is
    the default); fitting each once keeps the suite fast. The run directory is shared: a test that
    writes into it must copy it first (shutil.copytree)."""
    from .helpers import tiny_run

    cache: dict[tuple, FittedRun] = {}

    def get(**options) -> FittedRun:
        key = tuple(sorted(options.items()))
        if key not in cache:
            root = tmp_path_factory.mktemp("fitted")
            result, data = tiny_run(root, **options)
            cache[key] = FittedRun(root / "run", data, result)
        return cache[key]

    return get
