"""Process-group setup for `bnpp fit` under torchrun (gloo on CPU, nccl on GPU): apart from the loop."""

from __future__ import annotations

import os

import torch
from torch import nn


def rank_and_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun sets them; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def init(world: int, device: torch.device, pipeline: nn.Module) -> torch.device:
    """Join the process group (once) and move the pipeline to this rank's GPU; returns the device."""
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
            pipeline.to(device)
    return device


def wrap(pipeline: nn.Module, world: int, device: torch.device) -> nn.Module:
    """The pipeline itself in one process, else its DistributedDataParallel wrapper."""
    if world == 1:
        return pipeline
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(pipeline, device_ids=[device.index] if device.type == "cuda" else None)


def barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
