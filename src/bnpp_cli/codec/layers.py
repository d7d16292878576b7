"""Codec building blocks: the resolution-setting convs, the condition plane, a residual block."""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CodecError

Param = Union[float, Tensor]


def condition_plane(param: Param, like: Tensor) -> Tensor:
    """float or (N,) parameter -> constant (N, 1, H, W) plane matching ``like``."""
    p = torch.as_tensor(param, dtype=like.dtype, device=like.device)
    n, _, h, w = like.shape
    if p.dim() == 0:
        p = p.expand(n)
    elif tuple(p.shape) != (n,):
        raise CodecError(f"channel parameter of shape {tuple(p.shape)} does not match the batch "
                         f"of {n}: pass a float or an (N,) tensor")
    return p.reshape(n, 1, 1, 1).expand(n, 1, h, w)


def down(cin: int, cout: int, spatial: bool) -> nn.Module:
    """The resolution-setting encoder conv: 2x2 stride 2, or 3x3 stride 1 pad 1."""
    if spatial:
        return nn.Conv2d(cin, cout, kernel_size=2, stride=2)
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


def up(cin: int, cout: int, spatial: bool) -> nn.Module:
    """The matching decoder layer: ConvTranspose2x2 stride 2, or Conv3x3 pad 1."""
    if spatial:
        return nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


def activation(name: str) -> list[nn.Module]:
    return [nn.ReLU(inplace=True)] if name == "relu" else []


class ResidualBlock(nn.Module):
    """x -> relu(x + BN(conv3x3(relu(BN(conv3x3(x)))))), width preserved (ResNet basic block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))
