"""Codec building blocks: the resolution-setting convs, the condition plane, a residual block.

``axes`` = (along H, along W) says which map axes a layer convolves: (True, True) for conv maps and
patch grids (3 x 3 kernels, as always), (True, False) for the 1-D codec of a token sequence (3 x 1),
(False, False) for a vector (1 x 1, i.e. a linear layer per token)."""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CodecError

Param = Union[float, Tensor]


def condition_plane(param: Param, like: Tensor, repeats: int = 1) -> Tensor:
    """float or (N,) parameter -> constant (N, 1, H, W) plane matching ``like``; with ``repeats`` R,
    ``like`` holds R rows per image (N R, C, H, W: a prefix token each) and each gets its image's value."""
    p = torch.as_tensor(param, dtype=like.dtype, device=like.device)
    rows, _, h, w = like.shape
    n = rows // repeats
    if p.dim() == 0:
        p = p.expand(n)
    elif tuple(p.shape) != (n,):
        raise CodecError(f"channel parameter of shape {tuple(p.shape)} does not match the batch "
                         f"of {n}: pass a float or an (N,) tensor")
    if repeats > 1:
        p = p.repeat_interleave(repeats)
    return p.reshape(rows, 1, 1, 1).expand(rows, 1, h, w)


Axes = tuple[bool, bool]
MAP: Axes = (True, True)


def conv3(cin: int, cout: int, axes: Axes = MAP, bias: bool = True) -> nn.Conv2d:
    """Conv3x3 pad 1 along the coded axes (kernel 1 along the others)."""
    k = tuple(3 if a else 1 for a in axes)
    return nn.Conv2d(cin, cout, kernel_size=k, padding=tuple(1 if a else 0 for a in axes), bias=bias)


def down(cin: int, cout: int, spatial: bool, axes: Axes = MAP) -> nn.Module:
    """The resolution-setting encoder conv: 2x2 stride 2 (along the coded axes), or conv3."""
    if spatial:
        k = tuple(2 if a else 1 for a in axes)
        return nn.Conv2d(cin, cout, kernel_size=k, stride=k)
    return conv3(cin, cout, axes)


def up(cin: int, cout: int, spatial: bool, axes: Axes = MAP) -> nn.Module:
    """The matching decoder layer: ConvTranspose2x2 stride 2 (along the coded axes), or conv3."""
    if spatial:
        k = tuple(2 if a else 1 for a in axes)
        return nn.ConvTranspose2d(cin, cout, kernel_size=k, stride=k)
    return conv3(cin, cout, axes)


def activation(name: str) -> list[nn.Module]:
    return [nn.ReLU(inplace=True)] if name == "relu" else []


class ResidualBlock(nn.Module):
    """x -> relu(x + BN(conv3x3(relu(BN(conv3x3(x)))))), width preserved (ResNet basic block)."""

    def __init__(self, channels: int, axes: Axes = MAP):
        super().__init__()
        self.body = nn.Sequential(
            conv3(channels, channels, axes, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            conv3(channels, channels, axes, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))
