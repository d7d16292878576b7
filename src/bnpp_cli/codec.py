"""BottleNet++ feature codec: a learned encoder / decoder around a non-trainable channel.

Tensor names, fixed here and used the same everywhere in bnpp:

- ``f``     feature at the split point, (N, C, H, W), produced by the device half;
- ``z``     code, (N, C', H', W'), encoder output, sigmoid-bounded to (0, 1);
- ``z_hat`` received code, what the channel delivers;
- ``f_hat`` restored feature, (N, C, H, W), fed to the edge half.

Data flow::

    f --[pad to even]--+--concat[param plane]--> encoder --> z --channel(param)--> z_hat
                                                                                     |
    f_hat <--[crop to H, W]-- decoder <--concat[param plane, bnpp only]--------------+

``param`` is the channel's native parameter (noise std sigma, or bit probability p, see
:mod:`bnpp_cli.channels`), a float or an (N,) tensor, fed as one constant extra input plane
("the channel condition as an input to the encoder", Shao & Zhang, BottleNet++, ICC-W 2020).

Presets (``CODEC_PRESETS``):

- ``bottlenetpp``: the paper. Encoder Conv3x3(C+1 -> C') [Conv2x2 stride 2 with spatial
  reduction] -> BN -> sigmoid. Decoder Conv3x3(C' -> C) [ConvTranspose2x2 stride 2] -> BN -> ReLU.
  The decoder pairing is the intended one; the official code swaps the two branches (a bug).
- ``bnpp``: two conv layers per side with ``hidden_channels`` in between (BN + ReLU), plus
  ``encoder_blocks`` residual blocks (He et al. 2016: two 3x3 convs with BN, identity skip) at
  that width in the encoder, the condition plane fed to the decoder too; the encoder still ends in
  BN -> sigmoid; the decoder ends in a biased conv and the output activation. A thin code
  (C / ratio < 4) on a map of at least 4 x 4 is made stride 2 (see ``plan_codec``). Encoder depth is
  where accuracy came from at early splits (benchmarks/rate_accuracy.py; the encoder runs on the
  device, so its MACs are counted as device compute there).

Odd H or W with spatial reduction: the encoder zero-pads right / bottom to even, H' = ceil(H/2),
and the decoder crops back to (H, W). Compression is counted on real symbols:
bandwidth ratio = C H W / (C' H' W'); bit ratio = 32 C H W / (bits C' H' W').
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Callable, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CodecError, choices_hint

Param = Union[float, Tensor]
OUTPUT_ACTIVATIONS = ("relu", "none")


def _code_hw(h: int, w: int, spatial: bool) -> tuple[int, int]:
    """(H', W'): ceil(H/2), ceil(W/2) with spatial reduction (odd sizes are zero-padded)."""
    return (math.ceil(h / 2), math.ceil(w / 2)) if spatial else (h, w)


def _check_preset(preset: str) -> None:
    if preset not in CODEC_PRESETS:
        raise CodecError(f"unknown codec preset {preset!r}; valid: {', '.join(CODEC_PRESETS)}",
                         hint=choices_hint(str(preset), CODEC_PRESETS))


def default_hidden_channels(in_channels: int, code_channels: int) -> int:
    """bnpp hidden width: 4 C' (at least 64) but never above C, and never below C'.

    4 C' gives each side room to mix before the bottleneck; the floor of 64 matters at high
    ratios, where C' is 1-4 (resnet18 layer2 at 64x: width 16 lost 1.2 points more than 64,
    and 128 gained nothing over 64); capping at C keeps the codec small next to a wide
    backbone (C = 2048, C' = 32 -> 128)."""
    return max(code_channels, min(in_channels, max(4 * code_channels, 64)))


DEFAULT_ENCODER_BLOCKS = 1  # bnpp preset, set by plan_codec
THIN_CODE_CHANNELS = 4  # bnpp preset: below this C / R, plan_codec halves H, W (maps >= 4 x 4) instead


@dataclass
class CodecConfig:
    """Architecture of one codec, plain typed fields (serialisable with ``to_dict``)."""

    preset: str  # a CODEC_PRESETS name
    in_channels: int  # C, channels of the feature f
    feature_hw: tuple[int, int]  # (H, W) of the feature f
    code_channels: int  # C', channels of the code z
    spatial_reduction: bool = False  # stride-2 encoder / x2 decoder: H' = ceil(H/2)
    hidden_channels: int | None = None  # bnpp inner width; None -> default_hidden_channels
    output_activation: str = "relu"  # "relu" for a non-negative feature (post-ReLU), else "none"
    decoder_condition: bool = False  # feed the channel parameter to the decoder too
    encoder_blocks: int = 0  # bnpp: residual blocks in the encoder (plan_codec's default: 1)

    def __post_init__(self) -> None:
        _check_preset(self.preset)
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise CodecError(f"unknown output activation {self.output_activation!r}; "
                             f"valid: {', '.join(OUTPUT_ACTIVATIONS)}")
        self.feature_hw = tuple(int(v) for v in self.feature_hw)  # type: ignore[assignment]
        dims = (self.in_channels, *self.feature_hw, self.code_channels)
        if len(self.feature_hw) != 2 or any(int(d) != d or d < 1 for d in dims):
            raise CodecError(f"codec sizes C={self.in_channels}, (H, W)={self.feature_hw}, "
                             f"C'={self.code_channels} must be positive integers")
        if self.preset == "bnpp" and self.hidden_channels is None:
            self.hidden_channels = default_hidden_channels(self.in_channels, self.code_channels)
        if self.hidden_channels is not None and self.hidden_channels < 1:
            raise CodecError(f"hidden_channels {self.hidden_channels} must be >= 1")
        if int(self.encoder_blocks) != self.encoder_blocks or self.encoder_blocks < 0:
            raise CodecError(f"encoder_blocks {self.encoder_blocks} must be an integer >= 0")
        if self.encoder_blocks and self.preset != "bnpp":
            raise CodecError(f"encoder_blocks {self.encoder_blocks}: only the bnpp preset has residual blocks "
                             f"(preset {self.preset!r} is the paper's one-conv encoder)")

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of f."""
        return (self.in_channels, *self.feature_hw)

    @property
    def code_shape(self) -> tuple[int, int, int]:
        """(C', H', W') of z; H' = ceil(H/2) with spatial reduction."""
        return (self.code_channels, *_code_hw(*self.feature_hw, self.spatial_reduction))

    @property
    def bandwidth_ratio(self) -> float:
        """Feature elements per channel symbol: C H W / (C' H' W')."""
        return math.prod(self.feature_shape) / math.prod(self.code_shape)

    def bit_ratio(self, bits: int) -> float:
        """float32 feature bits per transmitted bit: 32 C H W / (bits C' H' W')."""
        return 32 * self.bandwidth_ratio / bits

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["feature_hw"] = list(self.feature_hw)
        return d

    def differences(self, other: "CodecConfig") -> dict[str, tuple[Any, Any]]:
        """{field: (this value, other's value)} for every field where ``other`` differs, sorted."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in sorted(mine) if mine[k] != theirs[k]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CodecConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise CodecError(f"unknown codec config keys {unknown}; "
                             f"valid: {', '.join(sorted(names))}")
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in d]
        if missing:
            raise CodecError(f"codec config is missing keys {missing}")
        return cls(**d)


def _largest_ratio(c: int, h: int, w: int, spatial: bool) -> float:
    """Ratio with C' = 1."""
    return c * h * w / math.prod(_code_hw(h, w, spatial))


def plan_codec(feature_shape: tuple[int, ...], *, ratio: float | None = None,
               code_channels: int | None = None, spatial_reduction: bool | None = None,
               preset: str = "bnpp", output_activation: str | None = None,
               feature_nonnegative: bool = True, hidden_channels: int | None = None,
               encoder_blocks: int | None = None) -> CodecConfig:
    """Choose C' (and whether to halve H, W) for a target bandwidth ratio or a given C'.

    ``ratio`` R with ``spatial_reduction=None`` (auto): stride 2 with C' = round(C H W / (R H' W'))
    (= round(4 C / R) for even H, W) when C / R < 1; for preset ``bnpp`` also when the code would
    otherwise be thin, C / R < ``THIN_CODE_CHANNELS``, and the map is at least 4 x 4 (the code keeps
    >= 2 x 2 positions and gets 4x the channels); otherwise no reduction, C' = round(C / R) (the
    paper's rule). Measured on resnet18 / CIFAR-10 (README, issue 6): the stride-2 code won at
    C / R = 1 and 2 and lost badly at C / R = 4 (layer1 16x). The achieved ratio is
    ``config.bandwidth_ratio`` and may differ from R by rounding."""
    shape = tuple(feature_shape)
    if len(shape) in (1, 2):
        raise CodecError(f"feature shape {shape}: token features (N x D) are not supported yet; "
                         f"pick a conv split point")
    if len(shape) != 3:
        raise CodecError(f"feature shape {shape} must be (C, H, W), without the batch dimension")
    if any(int(d) != d or d < 1 for d in shape):
        raise CodecError(f"feature shape {shape} must hold positive integers")
    c, h, w = (int(d) for d in shape)
    _check_preset(preset)
    if (ratio is None) == (code_channels is None):
        raise CodecError(f"give exactly one of ratio ({ratio}) and code_channels ({code_channels})")
    if spatial_reduction and (h < 2 or w < 2):
        raise CodecError(f"spatial reduction needs H, W >= 2; this split is {c} x {h} x {w}")

    if code_channels is not None:
        if int(code_channels) != code_channels or code_channels < 1:
            raise CodecError(f"code_channels {code_channels} must be a positive integer")
        spatial = bool(spatial_reduction)
        c_code = int(code_channels)
    else:
        r = float(ratio)  # type: ignore[arg-type]
        if not (math.isfinite(r) and r > 0):
            raise CodecError(f"ratio {ratio} must be a finite number > 0")
        if spatial_reduction is None:
            thin = preset == "bnpp" and c / r < THIN_CODE_CHANNELS and h >= 4 and w >= 4
            spatial = (c / r < 1 and h >= 2 and w >= 2) or thin
        else:
            spatial = spatial_reduction
        ideal = c * h * w / (r * math.prod(_code_hw(h, w, spatial)))
        if ideal < 1:
            raise CodecError(f"ratio {r:g} cannot be met at this split ({c} x {h} x {w}): the code "
                             f"would need C' < 1; the largest ratio here is "
                             f"{_largest_ratio(c, h, w, spatial):g}")
        c_code = max(1, round(ideal))

    if output_activation is None:
        output_activation = "relu" if feature_nonnegative else "none"
    return CodecConfig(preset=preset, in_channels=c, feature_hw=(h, w), code_channels=c_code,
                       spatial_reduction=spatial, output_activation=output_activation,
                       decoder_condition=(preset == "bnpp"),
                       hidden_channels=hidden_channels if preset == "bnpp" else None,
                       encoder_blocks=(DEFAULT_ENCODER_BLOCKS if encoder_blocks is None else encoder_blocks)
                       if preset == "bnpp" else (encoder_blocks or 0))


def _condition_plane(param: Param, like: Tensor) -> Tensor:
    """float or (N,) parameter -> constant (N, 1, H, W) plane matching ``like``."""
    p = torch.as_tensor(param, dtype=like.dtype, device=like.device)
    n, _, h, w = like.shape
    if p.dim() == 0:
        p = p.expand(n)
    elif tuple(p.shape) != (n,):
        raise CodecError(f"channel parameter of shape {tuple(p.shape)} does not match the batch "
                         f"of {n}: pass a float or an (N,) tensor")
    return p.reshape(n, 1, 1, 1).expand(n, 1, h, w)


def _down(cin: int, cout: int, spatial: bool) -> nn.Module:
    """The resolution-setting encoder conv: 2x2 stride 2, or 3x3 stride 1 pad 1."""
    if spatial:
        return nn.Conv2d(cin, cout, kernel_size=2, stride=2)
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


def _up(cin: int, cout: int, spatial: bool) -> nn.Module:
    """The matching decoder layer: ConvTranspose2x2 stride 2, or Conv3x3 pad 1."""
    if spatial:
        return nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


def _activation(name: str) -> list[nn.Module]:
    return [nn.ReLU(inplace=True)] if name == "relu" else []


def _bottlenetpp_layers(cfg: CodecConfig) -> tuple[nn.Sequential, nn.Sequential]:
    c, k, s = cfg.in_channels, cfg.code_channels, cfg.spatial_reduction
    encoder = nn.Sequential(_down(c + 1, k, s), nn.BatchNorm2d(k), nn.Sigmoid())
    decoder = nn.Sequential(_up(k + int(cfg.decoder_condition), c, s), nn.BatchNorm2d(c),
                            *_activation(cfg.output_activation))
    return encoder, decoder


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


def _bnpp_layers(cfg: CodecConfig) -> tuple[nn.Sequential, nn.Sequential]:
    c, k, s = cfg.in_channels, cfg.code_channels, cfg.spatial_reduction
    hid = cfg.hidden_channels or default_hidden_channels(c, k)
    encoder = nn.Sequential(
        nn.Conv2d(c + 1, hid, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(hid),
        nn.ReLU(inplace=True),
        *[ResidualBlock(hid) for _ in range(cfg.encoder_blocks)],
        _down(hid, k, s), nn.BatchNorm2d(k), nn.Sigmoid(),
    )
    decoder = nn.Sequential(
        _up(k + int(cfg.decoder_condition), hid, s), nn.BatchNorm2d(hid), nn.ReLU(inplace=True),
        nn.Conv2d(hid, c, kernel_size=3, padding=1), *_activation(cfg.output_activation),
    )
    return encoder, decoder


CODEC_PRESETS: dict[str, Callable[[CodecConfig], tuple[nn.Sequential, nn.Sequential]]] = {
    "bottlenetpp": _bottlenetpp_layers,  # paper-faithful, decoder pairing fixed
    "bnpp": _bnpp_layers,  # our default: two layers per side, conditioned decoder
}


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
        return self.body(torch.cat([f, _condition_plane(param, f)], dim=1))


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
            z_hat = torch.cat([z_hat, _condition_plane(param, z_hat)], dim=1)
        h, w = self.config.feature_hw
        return self.body(z_hat)[:, :, :h, :w]


class Codec(nn.Module):
    """Encoder + decoder of one config; ``forward`` runs f -> z -> channel -> z_hat -> f_hat."""

    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        enc, dec = CODEC_PRESETS[config.preset](config)
        self.encoder = Encoder(config, enc)
        self.decoder = Decoder(config, dec)

    def forward(self, f: Tensor, param: Param = 0.0, channel: nn.Module | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Returns {"z", "z_hat", "f_hat"}; no channel means a noiseless link."""
        z = self.encoder(f, param)
        z_hat = z if channel is None else channel(z, param, generator=generator)
        return {"z": z, "z_hat": z_hat, "f_hat": self.decoder(z_hat, param)}


def build_codec(config: CodecConfig) -> Codec:
    """Instantiate the codec described by ``config`` (see ``plan_codec``)."""
    return Codec(config)
