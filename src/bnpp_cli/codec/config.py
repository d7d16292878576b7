"""The codec's architecture as a typed config, and the planner that picks C' for a ratio.

Compression is counted on real symbols: bandwidth ratio = C H W / (C' H' W');
bit ratio = 32 C H W / (bits C' H' W'). With spatial reduction H' = ceil(H / 2) (odd sizes are
zero-padded right / bottom by the encoder and cropped back by the decoder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .. import configs
from ..errors import CodecError, ConfigError
from .presets import get_preset, list_presets

OUTPUT_ACTIVATIONS = ("relu", "none")


def _code_hw(h: int, w: int, spatial: bool) -> tuple[int, int]:
    """(H', W'): ceil(H/2), ceil(W/2) with spatial reduction (odd sizes are zero-padded)."""
    return (math.ceil(h / 2), math.ceil(w / 2)) if spatial else (h, w)


@dataclass
class CodecConfig:
    """Architecture of one codec, plain typed fields (serialisable with ``to_dict``)."""

    preset: str  # a registered preset (codec.presets)
    in_channels: int  # C, channels of the feature f
    feature_hw: tuple[int, int]  # (H, W) of the feature f
    code_channels: int  # C', channels of the code z
    spatial_reduction: bool = False  # stride-2 encoder / x2 decoder: H' = ceil(H/2)
    hidden_channels: int | None = None  # inner width of presets that have one; None -> the preset's default
    output_activation: str = "relu"  # "relu" for a non-negative feature (post-ReLU), else "none"
    decoder_condition: bool = False  # feed the channel parameter to the decoder too
    encoder_blocks: int = 0  # residual blocks in the encoder (plan_codec: the preset's default)

    def __post_init__(self) -> None:
        preset = get_preset(self.preset)
        if self.output_activation not in OUTPUT_ACTIVATIONS:
            raise CodecError(f"unknown output activation {self.output_activation!r}; "
                             f"valid: {', '.join(OUTPUT_ACTIVATIONS)}")
        self.feature_hw = tuple(int(v) for v in self.feature_hw)  # type: ignore[assignment]
        dims = (self.in_channels, *self.feature_hw, self.code_channels)
        if len(self.feature_hw) != 2 or any(int(d) != d or d < 1 for d in dims):
            raise CodecError(f"codec sizes C={self.in_channels}, (H, W)={self.feature_hw}, "
                             f"C'={self.code_channels} must be positive integers")
        if preset.hidden_width is not None and self.hidden_channels is None:
            self.hidden_channels = preset.hidden_width(self.in_channels, self.code_channels)
        if self.hidden_channels is not None and self.hidden_channels < 1:
            raise CodecError(f"hidden_channels {self.hidden_channels} must be >= 1")
        if int(self.encoder_blocks) != self.encoder_blocks or self.encoder_blocks < 0:
            raise CodecError(f"encoder_blocks {self.encoder_blocks} must be an integer >= 0")
        if self.encoder_blocks and preset.default_encoder_blocks is None:
            have = [n for n in list_presets() if get_preset(n).default_encoder_blocks is not None]
            raise CodecError(f"encoder_blocks {self.encoder_blocks}: only the {', '.join(have)} preset has residual "
                             f"blocks (preset {self.preset!r} is the paper's one-conv encoder)")

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of f."""
        return (self.in_channels, *self.feature_hw)

    @property
    def code_shape(self) -> tuple[int, int, int]:
        """(C', H', W') of z; H' = ceil(H/2) with spatial reduction."""
        return (self.code_channels, *_code_hw(*self.feature_hw, self.spatial_reduction))

    @property
    def code_symbols(self) -> int:
        """Real channel symbols per image: C' H' W'."""
        return math.prod(self.code_shape)

    @property
    def bandwidth_ratio(self) -> float:
        """Feature elements per channel symbol: C H W / (C' H' W')."""
        return math.prod(self.feature_shape) / self.code_symbols

    def bit_ratio(self, bits: int) -> float:
        """float32 feature bits per transmitted bit: 32 C H W / (bits C' H' W')."""
        return 32 * self.bandwidth_ratio / bits

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    def differences(self, other: "CodecConfig") -> dict[str, tuple[Any, Any]]:
        """{field: (this value, other's value)} for every field where ``other`` differs, sorted."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: (mine[k], theirs[k]) for k in sorted(mine) if mine[k] != theirs[k]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CodecConfig":
        try:
            return configs.from_dict(cls, d)
        except ConfigError as e:
            raise CodecError(str(e)) from None


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
    (= round(4 C / R) for even H, W) when C / R < 1 (the paper's rule), or when the preset's own
    thin-code rule says so (``CodecPreset.halves_thin_code``: bnpp, C / R < 4 on maps >= 4 x 4, where
    the code keeps >= 2 x 2 positions and gets 4x the channels); otherwise no reduction,
    C' = round(C / R). Measured on resnet18 / CIFAR-10 (README, issue 6): the stride-2 code won at
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
    spec = get_preset(preset)
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
            spatial = (c / r < 1 and h >= 2 and w >= 2) or spec.halves_thin_code(c, h, w, r)
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
    blocks = encoder_blocks or 0
    if spec.default_encoder_blocks is not None and encoder_blocks is None:
        blocks = spec.default_encoder_blocks
    return CodecConfig(preset=preset, in_channels=c, feature_hw=(h, w), code_channels=c_code,
                       spatial_reduction=spatial, output_activation=output_activation,
                       decoder_condition=spec.decoder_condition,
                       hidden_channels=hidden_channels if spec.hidden_width is not None else None,
                       encoder_blocks=blocks)
