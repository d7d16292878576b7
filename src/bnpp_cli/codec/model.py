"""BottleNet++ feature codec: a learned encoder / decoder around a non-trainable channel.

Tensor names, fixed here and used the same everywhere in bnpp:

- ``f``     feature at the split point, (N, C, H, W), produced by the device half;
- ``z``     code, (N, C', H', W'), encoder output, sigmoid-bounded to (0, 1);
- ``z_hat`` received code, what the channel delivers;
- ``f_hat`` restored feature, (N, C, H, W), fed to the edge half.

Data flow::

    f --[pad to even]--+--concat[param plane]--> encoder --> z --channel(param)--> z_hat
                                                                                     |
    f_hat <--[crop to H, W]-- decoder <--concat[param plane, if decoder_condition]---+

``param`` is the channel's native parameter (noise std sigma, or bit probability p, see
:mod:`bnpp_cli.link.channels`), a float or an (N,) tensor, fed as one constant extra input plane
("the channel condition as an input to the encoder", Shao & Zhang, BottleNet++, ICC-W 2020).
The layers of each preset are in :mod:`bnpp_cli.codec.presets`.

The codec follows CompressAI's contract (``compressai/models/google.py``)::

    forward(f, param, channel)               -> {"z", "z_hat", "f_hat"}   training, simulated link
    compress(f, param, channel, pair_id)     -> bytes                     one wire frame (link.transmit)
    decompress(frame, param, channel, pair_id, seed, first_index) -> f_hat   receiver: decode, the
                                                simulated air interface (link.receiver), decoder

The deploy halves are thin wrappers over these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CodecError
from ..link.channels import Channel
from ..link.receiver import simulate
from ..link.transmit import decode_code, encode_code
from .config import CodecConfig
from .layers import Param, condition_plane
from .presets import get_preset


class Encoder(nn.Module):
    """f (N, C, H, W), param -> z (N, C', H', W') in (0, 1)."""

    def __init__(self, config: CodecConfig, body: nn.Sequential):
        super().__init__()
        self.config = config
        self.body = body

    def forward(self, f: Tensor, param: Param) -> Tensor:
        if f.dim() != 4 or tuple(f.shape[1:]) != self.config.feature_shape:
            raise CodecError(f"feature of shape {tuple(f.shape)} does not match the codec's "
                             f"(N, {', '.join(map(str, self.config.feature_shape))})")
        if self.config.spatial_reduction:
            h, w = self.config.feature_hw
            f = F.pad(f, (0, w % 2, 0, h % 2))  # right / bottom zeros to even H, W
        return self.body(torch.cat([f, condition_plane(param, f)], dim=1))


class Decoder(nn.Module):
    """z_hat (N, C', H', W') [, param] -> f_hat (N, C, H, W)."""

    def __init__(self, config: CodecConfig, body: nn.Sequential):
        super().__init__()
        self.config = config
        self.body = body

    def forward(self, z_hat: Tensor, param: Param | None = None) -> Tensor:
        if z_hat.dim() != 4 or tuple(z_hat.shape[1:]) != self.config.code_shape:
            raise CodecError(f"code of shape {tuple(z_hat.shape)} does not match the codec's "
                             f"(N, {', '.join(map(str, self.config.code_shape))})")
        if self.config.decoder_condition:
            if param is None:
                raise CodecError("this decoder is conditioned on the channel parameter: pass param")
            z_hat = torch.cat([z_hat, condition_plane(param, z_hat)], dim=1)
        h, w = self.config.feature_hw
        return self.body(z_hat)[:, :, :h, :w]


class Codec(nn.Module):
    """Encoder + decoder of one config; ``forward`` runs f -> z -> channel -> z_hat -> f_hat."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        enc, dec = get_preset(config.preset).layers(config)
        self.encoder = Encoder(config, enc)
        self.decoder = Decoder(config, dec)

    def forward(self, f: Tensor, param: Param = 0.0, channel: nn.Module | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Returns {"z", "z_hat", "f_hat"}; no channel means a noiseless link."""
        z = self.encoder(f, param)
        z_hat = z if channel is None else channel(z, param, generator=generator)
        return {"z": z, "z_hat": z_hat, "f_hat": self.decoder(z_hat, param)}

    def compress(self, f: Tensor, param: Param, channel: Channel, pair_id: str) -> bytes:
        """f (N, C, H, W) -> one wire frame of the N codes as ``channel`` sends them."""
        return encode_code(self.encoder(f, param), channel, pair_id)

    def receive(self, frame: bytes, param: Param, channel: Channel, pair_id: str, seed: int = 0,
                first_index: int = 0) -> Tensor:
        """Wire frame -> z_hat: the code as received over the simulated air interface."""
        z = decode_code(frame, channel, pair_id, self.config.code_shape)
        return simulate(channel, z, param, seed, first_index)

    def decompress(self, frame: bytes, param: Param, channel: Channel, pair_id: str, seed: int = 0,
                   first_index: int = 0) -> Tensor:
        """Wire frame -> f_hat (N, C, H, W): receive, then decode."""
        return self.decoder(self.receive(frame, param, channel, pair_id, seed, first_index), param)


def build_codec(config: CodecConfig) -> Codec:
    """Instantiate the codec described by ``config`` (see ``plan_codec``)."""
    return Codec(config)
