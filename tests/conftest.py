"""Shared fixtures: tiny timm models, the shared real data and model (skipped cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

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
