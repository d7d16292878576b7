"""BottleNet++ feature codec: a learned encoder / decoder around a non-trainable channel.

Tensor names, fixed here and used the same everywhere in bnpp:

- ``f``     feature at the split point, (N, *feature) in its layout (split.layouts: (C, H, W),
            (H, W, C), tokens (T, D), vector (D,)), produced by the device half;
- ``z``     code, (N, C', H', W') (or (N, C' H' W' + P k) with prefix tokens), encoder output,
            sigmoid-bounded to (0, 1);
- ``z_hat`` received code, what the channel delivers;
- ``f_hat`` restored feature, same shape and layout as f, fed to the edge half.

Data flow::

    f --layout.to_maps--> map (C, H, W) --[pad to even]--concat[param plane]--> body --> z_map --+
                     `--> prefix tokens (P, D): each a vector --> prefix_body --> z_prefix (P k) -+--> z
    z --channel(param)--> z_hat
    z_hat --> map part --concat[param plane, if decoder_condition]--> body --[crop to H, W]--+
          `-> prefix part --> prefix_body --------------------------------------------------+--> layout.from_maps --> f_hat

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

A variable-length code (preset ``variable``, codec.variable) keeps a prefix of z: ``keep_prefix``
zeroes the symbols past each image's length (random in training, the encoder's length table in eval),
``compress`` sends that prefix as an (N, k) frame, and the decoder pads a received prefix back to K.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CodecError
from ..link.channels import Channel
from .config import CodecConfig
from .entropy import find_prior
from .framing import Framing
from .layers import Param, condition_plane
from .presets import get_preset
from .variable import LengthTable, pad_prefix, prefix_mask, sample_lengths


class Encoder(nn.Module):
    """f (N, *feature) in its layout, param -> z (N, *code_shape) in (0, 1)."""

    def __init__(self, config: CodecConfig, body: nn.Sequential, prefix_body: nn.Sequential | None = None):
        super().__init__()
        self.config = config
        self.body = body
        if prefix_body is not None:  # only then: state dicts of runs without prefix tokens stay as they were
            self.prefix_body = prefix_body
        if config.variable_length:  # only then, as above: the length per condition (codec.variable)
            self.lengths = LengthTable(config.code_symbols)

    def forward(self, f: Tensor, param: Param) -> Tensor:
        cfg = self.config
        if tuple(f.shape[1:]) != cfg.feature_shape:
            raise CodecError(f"feature of shape {tuple(f.shape)} does not match the codec's "
                             f"(N, {', '.join(map(str, cfg.feature_shape))})")
        m, prefix = cfg.layout.to_maps(f)
        if cfg.spatial_reduction:
            h, w = cfg.feature_hw
            ah, aw = cfg.conv_axes
            m = F.pad(m, (0, w % 2 if aw else 0, 0, h % 2 if ah else 0))  # right / bottom zeros to even sizes
        z = self.body(torch.cat([m, condition_plane(param, m)], dim=1))
        if prefix is None:
            return z
        n, p, d = prefix.shape
        tokens = prefix.reshape(n * p, d, 1, 1)
        z_prefix = self.prefix_body(torch.cat([tokens, condition_plane(param, tokens, p)], dim=1))
        return torch.cat([z.flatten(1), z_prefix.reshape(n, -1)], dim=1)


class Decoder(nn.Module):
    """z_hat (N, *code_shape) [, param] -> f_hat (N, *feature) in the layout the tail expects."""

    def __init__(self, config: CodecConfig, body: nn.Sequential, prefix_body: nn.Sequential | None = None):
        super().__init__()
        self.config = config
        self.body = body
        if prefix_body is not None:
            self.prefix_body = prefix_body

    def forward(self, z_hat: Tensor, param: Param | None = None) -> Tensor:
        cfg = self.config
        if cfg.variable_length:  # a received prefix (N, k): zeros past k, where nothing was sent
            z_hat = pad_prefix(z_hat, cfg.code_shape)
        if tuple(z_hat.shape[1:]) != cfg.code_shape:
            raise CodecError(f"code of shape {tuple(z_hat.shape)} does not match the codec's "
                             f"(N, {', '.join(map(str, cfg.code_shape))})")
        if cfg.decoder_condition and param is None:
            raise CodecError("this decoder is conditioned on the channel parameter: pass param")
        n, p = z_hat.shape[0], cfg.layout.prefix_tokens
        z_map, z_prefix = z_hat, None
        if p:
            split = math.prod(cfg.map_code_shape)
            z_map = z_hat[:, :split].reshape(n, *cfg.map_code_shape)
            z_prefix = z_hat[:, split:].reshape(n * p, cfg.prefix_code_channels, 1, 1)
        if cfg.decoder_condition:
            z_map = torch.cat([z_map, condition_plane(param, z_map)], dim=1)
        h, w = cfg.feature_hw
        m = self.body(z_map)[:, :, :h, :w]
        prefix = None
        if z_prefix is not None:
            if cfg.decoder_condition:
                z_prefix = torch.cat([z_prefix, condition_plane(param, z_prefix, p)], dim=1)
            prefix = self.prefix_body(z_prefix).reshape(n, p, cfg.in_channels)
        return cfg.layout.from_maps(m, prefix)


class Codec(nn.Module):
    """Encoder + decoder of one config; ``forward`` runs f -> z -> channel -> z_hat -> f_hat."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        preset = get_preset(config.preset)
        enc, dec = preset.layers(config)
        prefix = config.prefix_config()
        penc, pdec = preset.layers(prefix) if prefix is not None else (None, None)
        self.encoder = Encoder(config, enc, penc)
        self.decoder = Decoder(config, dec, pdec)

    def forward(self, f: Tensor, param: Param = 0.0, channel: nn.Module | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Returns {"z", "z_hat", "f_hat"}; no channel means a noiseless link."""
        z = self.encoder(f, param)
        z_hat = self.keep_prefix(z if channel is None else channel(z, param, generator=generator), param)
        return {"z": z, "z_hat": z_hat, "f_hat": self.decoder(z_hat, param)}

    def keep_prefix(self, z_hat: Tensor, param: Param) -> Tensor:
        """A variable-length code: z_hat with each image's symbols past its length zeroed (training: a
        random allowed length per image; eval: the length table's for ``param``). Others: z_hat."""
        if not self.config.variable_length:
            return z_hat
        n, total = z_hat.shape[0], self.config.code_symbols
        lengths = sample_lengths(n, total, z_hat.device) if self.training else self.encoder.lengths.lookup(param, n)
        return prefix_mask(z_hat, lengths)

    def rate_loss(self, lmbda: float) -> Tensor | float:
        """The code's rate term of the training loss (an entropy code: codec.entropy); 0 for the others."""
        prior = find_prior(self.encoder)
        return prior.rate_loss(lmbda) if prior is not None else 0.0

    def estimated_bits(self) -> float:
        """-log2 of the last forward's code under the prior, summed over its images; 0 without a prior."""
        prior = find_prior(self.encoder)
        return float(prior.bits().sum()) if prior is not None else 0.0

    def rate_record(self, bits_per_image: float) -> dict[str, float]:
        """What validation reports of the rate: an entropy code's estimate in bits per image (-log2 under
        integer tables from the density as it is at this epoch, not the histogram tables the finished run
        ships); nothing for the others."""
        return {"val_bits_estimate": bits_per_image} if find_prior(self.encoder) is not None else {}

    def symbols(self, param: float) -> int:
        """Symbols sent per image at channel parameter ``param`` (the whole code unless variable-length)."""
        return self.encoder.lengths.length(param) if self.config.variable_length else self.config.code_symbols

    def framing(self, channel: Channel, pair_id: str, side: str = "encoder") -> Framing:
        """The wire framing of this code over ``channel`` (codec.framing), with the tables or length
        table the ``side`` ("encoder" | "decoder") holds."""
        if side not in ("encoder", "decoder"):
            raise CodecError(f"unknown codec side {side!r}; valid: encoder, decoder")
        return get_preset(self.config.preset).code.framing(self.config, channel, pair_id, getattr(self, side))

    def compress(self, f: Tensor, param: Param, channel: Channel, pair_id: str) -> bytes:
        """f (N, *feature) -> one wire frame of the N codes as ``channel`` sends them (an entropy
        code: one range-coded stream per image; a variable-length code: the prefix for ``param``)."""
        return self.framing(channel, pair_id).payload(self.encoder(f, param), float(param))

    def receive(self, frame: bytes, param: Param, channel: Channel, pair_id: str, seed: int = 0,
                first_index: int = 0) -> Tensor:
        """Wire frame -> z_hat: the code as received over the simulated air interface."""
        framing = self.framing(channel, pair_id, "decoder")
        return framing.air(framing.receive(frame), param, seed, first_index)

    def decompress(self, frame: bytes, param: Param, channel: Channel, pair_id: str, seed: int = 0,
                   first_index: int = 0) -> Tensor:
        """Wire frame -> f_hat (N, *feature): receive, then decode."""
        return self.decoder(self.receive(frame, param, channel, pair_id, seed, first_index), param)


def build_codec(config: CodecConfig) -> Codec:
    """Instantiate the codec described by ``config`` (see ``plan_codec``)."""
    return Codec(config)
