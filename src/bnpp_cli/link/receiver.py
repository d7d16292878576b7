"""The receiver side of the simulated link, shared by `bnpp predict` and `bnpp serve`.

    wire frame --decode_code--> z (N, C', H', W') --simulate: channel(z_i, param, air_generator(seed, first + i))--> z_hat

Image i of a request seeded ``seed`` whose first image has index ``first_index`` is corrupted with
its own generator, ``air_generator(seed, first_index + i)``, so an edge server given the same seed
and numbering reproduces `bnpp predict` exactly, whatever the batching.
"""

from __future__ import annotations

import torch

from ..errors import ChannelError
from .channels import Channel, Param

SEED_STRIDE = 1_000_003  # a prime: seeds s and s + 1 never share an image's generator below 10^6 images
SEED_SPACE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


def air_generator(seed: int, index: int) -> torch.Generator:
    """The noise of the simulated air interface for the index-th image of a request seeded `seed`."""
    return torch.Generator().manual_seed(seed * SEED_STRIDE + index)


def check_seed(seed: int, first_index: int, n: int) -> None:
    """ChannelError unless images first_index .. first_index + n - 1 of `seed` have a generator."""
    lo, hi = SEED_SPACE
    if not (lo <= seed * SEED_STRIDE + first_index and seed * SEED_STRIDE + first_index + n - 1 <= hi):
        raise ChannelError(f"seed {seed} is out of range for the air interface's generator")


def simulate(channel: Channel, z: torch.Tensor, param: Param, seed: int = 0, first_index: int = 0) -> torch.Tensor:
    """z (N, ...) as received over `channel` at `param`, image i with air_generator(seed, first_index + i)."""
    check_seed(seed, first_index, z.shape[0])
    return torch.cat([channel(z[i:i + 1], param, generator=air_generator(seed, first_index + i))
                      for i in range(z.shape[0])])
