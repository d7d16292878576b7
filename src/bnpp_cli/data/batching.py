"""Batches and per-batch transforms: uint8 images in, normalised (and augmented) float batches out.

    dataset --make_loader--> x uint8 (N, 3, H, W), y int64 (N,) --BatchTransform--> float32 (N, 3, H, W)

Array-backed datasets (and Subsets of them) are batched straight from memory with a seeded
permutation (no DataLoader, no per-sample Python); others go through a torch DataLoader with the
same batches. Sharding for torchrun follows DistributedSampler's rule (padded to equal shards).
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from .datasets import ImageDataset, unwrap_subsets
from ..errors import DataError


def crop_flip(x: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Per sample i: out[i, :, r, c] = x[i, :, r + dy, c + dx] (0 outside), then mirrored if flips[i].

    x (N, C, H, W) any dtype; shifts (N, 2) int (dy, dx); flips (N,) bool; all on x's device.
    The crop of a zero-padded image at offset (pad + dy, pad + dx), as torchvision's RandomCrop.
    """
    n, c, h, w = x.shape
    p = int(shifts.abs().max()) if n else 0
    rows = torch.arange(h, device=x.device) + shifts[:, :1] + p  # (N, H), in the padded image
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flips[:, None], w - 1 - cols, cols) + shifts[:, 1:] + p  # (N, W)
    flat = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return F.pad(x, (p, p, p, p)).flatten(2).gather(2, flat).view(n, c, h, w)


class BatchTransform:
    """uint8 (N, 3, H, W) -> float32 normalised (N, 3, H, W), per batch, on the batch's device.

    augment=False: (x / 255 - mean) / std, nothing else. No rescaling: the images are already at the
    input size (load_dataset), and rescaling them as timm's eval transform does (32 -> 34, centre
    crop 32) changes a CIFAR model's accuracy (../shared/models/README.md).
    augment=True: first, per sample, a random crop of the image zero-padded by ``pad`` (default
    min(H, W) // 8: 4 at 32x32, the CIFAR convention) and a horizontal flip with probability 1/2.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, augment: bool,
                 pad: int | None = None):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise DataError(f"mean {tuple(mean)} / std {tuple(std)}: expected 3 values each, std > 0")
        if pad is not None and pad < 0:
            raise DataError(f"pad {pad} is negative: expected pad >= 0 (pixels)")
        self.mean, self.std = tuple(map(float, mean)), tuple(map(float, std))
        self.augment, self.pad = augment, pad
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if not torch.is_tensor(x) or x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            got = f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
            raise DataError(f"BatchTransform expects uint8 (N, 3, H, W); got {got}")
        if self.augment:
            pad = self.pad if self.pad is not None else min(x.shape[-2:]) // 8
            device = generator.device if generator is not None else torch.device("cpu")
            shifts = torch.randint(-pad, pad + 1, (len(x), 2), generator=generator, device=device)
            flips = torch.randint(0, 2, (len(x),), generator=generator, device=device).bool()
            x = crop_flip(x, shifts.to(x.device), flips.to(x.device))
        if x.device not in self._stats:
            self._stats[x.device] = tuple(torch.tensor(v, device=x.device).view(1, 3, 1, 1)
                                          for v in (self.mean, self.std))
        mean, std = self._stats[x.device]
        return x.float().div_(255).sub_(mean).div_(std)


class BatchLoader:
    """Batches (x uint8 (B, 3, H, W), y int64 (B,)), one epoch per iteration.

    Epoch e's order is a permutation seeded by (seed, e), so one seed gives the same epochs; each
    iteration advances the epoch, set_epoch picks one (on resume). With world_size > 1, rank r gets
    every world_size-th index, padded by repetition to equal shards (as DistributedSampler).
    In-memory datasets (or Subsets of one) are indexed directly; others go through a DataLoader
    given the same batches (one per epoch).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int,
                 num_workers: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1):
        if batch_size < 1 or seed < 0 or len(dataset) == 0:
            raise DataError(f"batch_size {batch_size}, seed {seed}, {len(dataset)} samples: "
                            "expected batch_size >= 1, seed >= 0 and a non-empty dataset")
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.num_workers, self.drop_last = num_workers, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        n = len(dataset)
        self.shard_size = n // world_size if drop_last else math.ceil(n / world_size)
        base, self._indices = unwrap_subsets(dataset)
        self._memory = base.tensors() if isinstance(base, ImageDataset) and base.in_memory else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.shard_size // self.batch_size
        return math.ceil(self.shard_size / self.batch_size)

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        n = len(self.dataset)
        order = torch.arange(n)
        if self.shuffle:
            seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1, np.uint64)[0])
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        total = self.shard_size * self.world_size
        order = order.repeat(math.ceil(total / n))[:total][self.rank::self.world_size]
        return list(order.split(self.batch_size))[:len(self)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self._batches(self.epoch)
        self.epoch += 1
        if self._memory is None:
            batch_sampler = [batch.tolist() for batch in batches]
            return iter(DataLoader(self.dataset, batch_sampler=batch_sampler,
                                   num_workers=self.num_workers))
        return self._iter_memory(batches)

    def _iter_memory(self, batches) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        (images, labels), indices = self._memory, self._indices
        for batch in batches:
            rows = batch if indices is None else indices[batch]
            yield images[rows], labels[rows]


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int,
                num_workers: int = 0, drop_last: bool = False, distributed: bool = False) -> BatchLoader:
    """A BatchLoader; distributed=True shards by the rank and world size of torch.distributed."""
    rank, world_size = 0, 1
    if distributed:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise DataError("distributed=True but torch.distributed is not initialised: "
                            "run under torchrun")
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return BatchLoader(dataset, batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers,
                       drop_last=drop_last, rank=rank, world_size=world_size)
