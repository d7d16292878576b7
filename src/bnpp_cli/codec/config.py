"""The codec's architecture as a typed config, and the planner that picks C' for a ratio.

Every feature layout (split.layouts) is coded as a conv map (C, H, W): a conv map itself, a
channels-last map permuted, a patch-token grid as (D, Hp, Wp) with its P prefix tokens coded by a
small code of their own (k symbols each), a token sequence as (D, T, 1) and a vector as (D, 1, 1)
(the last two: the 1-D codec, convolving along T only). Compression is counted on real symbols:

    bandwidth ratio = feature elements / (C' H' W' + P k)        bit ratio = 32 x that / bits

With spatial reduction H' = ceil(H / 2) (odd sizes are zero-padded right / bottom by the encoder and
cropped back by the decoder); the 1-D codec halves T only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .. import configs
from ..errors import CodecError, ConfigError
from ..split.layouts import FeatureLayout, LayoutError
from .presets import get_preset, list_presets

OUTPUT_ACTIVATIONS = ("relu", "none")


def _code_hw(h: int, w: int, spatial: bool) -> tuple[int, int]:
    """(H', W'): ceil(H/2), ceil(W/2) with spatial reduction (odd sizes are zero-padded; W = 1 stays 1)."""
    return (math.ceil(h / 2), math.ceil(w / 2)) if spatial else (h, w)


@dataclass
class CodecConfig:
    """Architecture of one codec, plain typed fields (serialisable with ``to_dict``); `plan_codec` fills it.

    Attributes:
        preset: a registered preset (codec.presets: bnpp, bottlenetpp, entropy, variable).
        in_channels: C, channels of the feature f.
        feature_hw: (H, W) of the feature f.
        code_channels: C', channels of the code z.
        spatial_reduction: stride-2 encoder / x2 decoder, H' = ceil(H/2); default False.
        hidden_channels: inner width of presets that have one; default None: the preset's default.
        output_activation: "relu" for a non-negative (post-ReLU) feature, else "none"; default "relu".
        decoder_condition: feed the channel parameter to the decoder too; default False.
        encoder_blocks: residual blocks in the encoder; default 0 (plan_codec: the preset's default).
        decoder_blocks: residual blocks in the decoder at the inner width (edge side; device MACs
            unchanged); default 0.
        layout: how f is laid out (FeatureLayout); default nchw, as runs before layouts.
        prefix_code_channels: k, code symbols per prefix token (tokens layouts with prefix tokens
            only); default 0.
        standardize: per-channel (f - mean) / std around the codec, measured in training
            (codec.standardize); default False.
    """


    preset: str  # a registered preset (codec.presets)
    in_channels: int  # C, channels of the feature f
    feature_hw: tuple[int, int]  # (H, W) of the feature f
    code_channels: int  # C', channels of the code z
    spatial_reduction: bool = False  # stride-2 encoder / x2 decoder: H' = ceil(H/2)
    hidden_channels: int | None = None  # inner width of presets that have one; None -> the preset's default
    output_activation: str = "relu"  # "relu" for a non-negative feature (post-ReLU), else "none"
    decoder_condition: bool = False  # feed the channel parameter to the decoder too
    encoder_blocks: int = 0  # residual blocks in the encoder (plan_codec: the preset's default)
    decoder_blocks: int = 0  # residual blocks in the decoder, at the inner width (edge side; device MACs unchanged)
    layout: FeatureLayout = field(default_factory=FeatureLayout)  # how f is laid out; runs before layouts: nchw
    prefix_code_channels: int = 0  # k, code symbols per prefix token (tokens layouts with prefix tokens only)
    standardize: bool = False  # per-channel (f - mean) / std around the codec, measured in training (codec.standardize)

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
        if (self.prefix_code_channels >= 1) != (self.layout.prefix_tokens > 0) or self.prefix_code_channels < 0:
            raise CodecError(f"prefix_code_channels {self.prefix_code_channels} must be >= 1 exactly when the "
                             f"layout has prefix tokens ({self.layout.describe()})")
        if self.layout.one_d and self.feature_hw[1] != 1 or self.layout.kind == "vector" and self.feature_hw[0] != 1:
            raise CodecError(f"a {self.layout.describe()} feature is coded as a (D, T, 1) map, not "
                             f"{self.in_channels} x {self.feature_hw[0]} x {self.feature_hw[1]}")
        if self.standardize and self.output_activation != "none":
            raise CodecError("a standardised feature is signed: its decoder ends without an output activation")
        if self.spatial_reduction and not any(self.conv_axes):
            raise CodecError("spatial reduction needs an axis to halve: a vector feature has none")
        if int(self.decoder_blocks) != self.decoder_blocks or self.decoder_blocks < 0:
            raise CodecError(f"decoder_blocks {self.decoder_blocks} must be an integer >= 0")
        if self.decoder_blocks and preset.default_encoder_blocks is None:
            have = [n for n in list_presets() if get_preset(n).default_encoder_blocks is not None]
            raise CodecError(f"decoder_blocks {self.decoder_blocks}: only the {', '.join(have)} preset has residual "
                             f"blocks (preset {self.preset!r} is the paper's one-conv decoder)")
        if self.encoder_blocks and preset.default_encoder_blocks is None:
            have = [n for n in list_presets() if get_preset(n).default_encoder_blocks is not None]
            raise CodecError(f"encoder_blocks {self.encoder_blocks}: only the {', '.join(have)} preset has residual "
                             f"blocks (preset {self.preset!r} is the paper's one-conv encoder)")

    @property
    def map_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the map the conv codec sees (f itself for an nchw layout)."""
        return (self.in_channels, *self.feature_hw)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of f in its own layout: (C, H, W), (H, W, C), (P + Hp Wp, D), (T, D) or (D,)."""
        return self.layout.feature_shape(self.map_shape)

    @property
    def conv_axes(self) -> tuple[bool, bool]:
        """Which map axes the codec convolves (and halves) along: both for maps and patch grids,
        only T for the 1-D codec of a token sequence, none for a vector (kernels of 1 there)."""
        if not self.layout.one_d:
            return (True, True)
        return (self.feature_hw[0] > 1, False)

    @property
    def map_code_shape(self) -> tuple[int, int, int]:
        """(C', H', W') of the map's code; H' = ceil(H/2) along the halved axes."""
        h, w = self.feature_hw
        ah, aw = self.conv_axes
        s = self.spatial_reduction
        return (self.code_channels, *_code_hw(h, w, s and ah)[:1], *_code_hw(h, w, s and aw)[1:])

    @property
    def code_shape(self) -> tuple[int, ...]:
        """Shape of z: the map's (C', H', W'), or with prefix tokens one flat vector of
        C' H' W' + P k symbols (the map's code, then each prefix token's k)."""
        if not self.layout.prefix_tokens:
            return self.map_code_shape
        return (math.prod(self.map_code_shape) + self.layout.prefix_tokens * self.prefix_code_channels,)

    @property
    def variable_length(self) -> bool:
        """Every prefix of the code is a code, its length chosen per condition (the preset says; codec.variable)."""
        return get_preset(self.preset).variable_length

    @property
    def code_symbols(self) -> int:
        """Real channel symbols per image: C' H' W' (+ P k)."""
        return math.prod(self.code_shape)

    @property
    def bandwidth_ratio(self) -> float:
        """Feature elements per channel symbol: elements / (C' H' W' + P k)."""
        return math.prod(self.feature_shape) / self.code_symbols

    def bit_ratio(self, bits: int) -> float:
        """float32 feature bits per transmitted bit: 32 elements / (bits symbols)."""
        return 32 * self.bandwidth_ratio / bits

    def prefix_config(self) -> "CodecConfig | None":
        """The prefix tokens' own small code: each token a vector (D,) -> k symbols, same preset."""
        if not self.layout.prefix_tokens:
            return None
        return CodecConfig(preset=self.preset, in_channels=self.in_channels, feature_hw=(1, 1),
                           code_channels=self.prefix_code_channels,  # the preset's inner width for D -> k
                           output_activation=self.output_activation, decoder_condition=self.decoder_condition,
                           encoder_blocks=self.encoder_blocks, decoder_blocks=self.decoder_blocks,
                           layout=FeatureLayout("vector"),
                           standardize=self.standardize)

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
        except (ConfigError, LayoutError) as e:  # a stored layout that does not hold is the codec's error
            raise CodecError(str(e)) from None


def _largest_ratio(elements: int, h: int, w: int, prefix: int, spatial: bool) -> float:
    """Ratio with C' = 1 (and k = 1)."""
    return elements / (math.prod(_code_hw(h, w, spatial)) + prefix)


def _checked_shape(feature_shape, layout: FeatureLayout | None) -> tuple[tuple[int, ...], FeatureLayout]:
    """The feature shape as positive ints, and its layout (None: a (C, H, W) conv map)."""
    shape = tuple(feature_shape)
    if any(not isinstance(d, int) and int(d) != d or d < 1 for d in shape):
        raise CodecError(f"feature shape {shape} must hold positive integers")
    shape = tuple(int(d) for d in shape)
    if layout is None:
        if len(shape) != 3:
            raise CodecError(f"feature shape {shape} has no layout: give the split point's layout "
                             f"(tokens, vector; see `bnpp profile`), or a (C, H, W) map")
        layout = FeatureLayout("nchw")
    return shape, layout


class _Grid:
    """The feature as the codec plans it: its map (C, H, W), elements and P prefix tokens."""

    def __init__(self, shape: tuple[int, ...], layout: FeatureLayout, c: int, h: int, w: int):
        self.shape, self.layout, self.c, self.h, self.w = shape, layout, c, h, w
        self.elements, self.prefix, self.one_d = math.prod(shape), layout.prefix_tokens, layout.one_d
        self.can_halve = h >= 2 and (self.one_d or w >= 2)

    def positions(self, spatial: bool) -> int:
        """H' W' of the code (T' for the 1-D codec)."""
        return math.prod(_code_hw(self.h, 1 if self.one_d else self.w, spatial))

    def from_channels(self, code_channels, spatial: bool) -> tuple[bool, int, int]:
        """(spatial, C', k) for a given C'."""
        if int(code_channels) != code_channels or code_channels < 1:
            raise CodecError(f"code_channels {code_channels} must be a positive integer")
        c_code = int(code_channels)
        k = max(1, round(c_code * self.positions(spatial) / (self.h * self.w))) if self.prefix else 0
        return spatial, c_code, k

    def from_ratio(self, ratio, spatial_reduction: bool | None, spec) -> tuple[bool, int, int]:
        """(spatial, C', k) for a target ratio R (plan_codec's docstring has the rules)."""
        r, c, prefix = float(ratio), self.c, self.prefix
        if not (math.isfinite(r) and r > 0):
            raise CodecError(f"ratio {ratio} must be a finite number > 0")
        spatial = spatial_reduction
        if spatial_reduction is None:
            spatial = (c / r < 1 and self.can_halve) or (not self.one_d and spec.halves_thin_code(c, self.h, self.w, r))
        k = max(1, round(c / r)) if prefix else 0
        if prefix and spec.prefix_share:  # the preset's share of the symbols for the prefix tokens (at most D each)
            k_share = max(k, min(c, round(spec.prefix_share * self.elements / r / prefix)))
            if (self.elements / r - prefix * k_share) / self.positions(spatial) >= 1:
                k = k_share
        ideal = (self.elements / r - prefix * k) / self.positions(spatial)
        if ideal < 1:
            raise CodecError(f"ratio {r:g} cannot be met at this split ({' x '.join(map(str, self.shape))}, "
                             f"{self.layout.describe()}): the code would need C' < 1; the largest ratio here is "
                             f"{_largest_ratio(self.elements, self.h, 1 if self.one_d else self.w, prefix, spatial):g}")
        return spatial, max(1, round(ideal)), k


def plan_codec(feature_shape: tuple[int, ...], *, layout: FeatureLayout | None = None, ratio: float | None = None,
               code_channels: int | None = None, spatial_reduction: bool | None = None,
               preset: str = "bnpp", output_activation: str | None = None,
               feature_nonnegative: bool = True, hidden_channels: int | None = None,
               encoder_blocks: int | None = None, decoder_blocks: int = 0,
               num_classes: int | None = None) -> CodecConfig:
    """Choose C' (and whether to halve H, W) for a target bandwidth ratio or a given C'.

    ``layout`` is the split point's (split.layouts); None means a (C, H, W) conv map. The feature is
    planned as its map (C, H, W) (see the module docstring). ``ratio`` R with ``spatial_reduction=None``
    (auto): stride 2 with C' = round(C H W / (R H' W')) (= round(4 C / R) for even H, W) when C / R < 1
    (the paper's rule), or when the preset's own thin-code rule says so (``CodecPreset.halves_thin_code``:
    bnpp, C / R < 4 on maps >= 4 x 4, where the code keeps >= 2 x 2 positions and gets 4x the channels);
    otherwise no reduction, C' = round(C / R). Measured on resnet18 / CIFAR-10 (benchmarks/rate_accuracy.py): the
    stride-2 code won at C / R = 1 and 2 and lost badly at C / R = 4 (layer1 16x). The 1-D codec of a
    token sequence halves T only by the paper's rule; a vector is never halved. P prefix tokens get
    k = round(D / R) symbols each (at least 1), or with a preset's ``prefix_share`` s (bnpp) at least
    round(s x elements / R / P), at most D, and the map the rest of the budget:
    C' = round((elements / R - P k) / (H' W')). The achieved ratio is ``config.bandwidth_ratio`` and
    may differ from R by that rounding: the symbols are within H' W' / 2 (half a code channel) of
    elements / R. ``num_classes`` (the task's classes, None where unknown) goes to the preset's inner
    width rule (presets.default_hidden_channels) when ``hidden_channels`` is None."""
    shape, layout = _checked_shape(feature_shape, layout)
    try:
        c, h, w = layout.map_shape(shape)
    except LayoutError as e:
        raise CodecError(str(e)) from None
    spec = get_preset(preset)
    if (ratio is None) == (code_channels is None):
        raise CodecError(f"give exactly one of ratio ({ratio}) and code_channels ({code_channels})")
    grid = _Grid(shape, layout, c, h, w)
    if spatial_reduction and not grid.can_halve:
        raise CodecError(f"spatial reduction needs H, W >= 2 (T >= 2 for tokens); this split is "
                         f"{c} x {h} x {w} as a map ({layout.describe()})")
    if code_channels is not None:
        spatial, c_code, k = grid.from_channels(code_channels, bool(spatial_reduction))
    else:
        spatial, c_code, k = grid.from_ratio(ratio, spatial_reduction, spec)

    if output_activation is None:
        output_activation = "relu" if feature_nonnegative else "none"
    if hidden_channels is None and spec.hidden_width is not None:  # the preset's width for the task's classes
        hidden_channels = spec.hidden_width(c, c_code, num_classes)
    blocks = encoder_blocks or 0
    if spec.default_encoder_blocks is not None and encoder_blocks is None:
        blocks = spec.default_encoder_blocks
    return CodecConfig(preset=preset, in_channels=c, feature_hw=(h, w), code_channels=c_code,
                       spatial_reduction=spatial, output_activation=output_activation,
                       decoder_condition=spec.decoder_condition,
                       hidden_channels=hidden_channels if spec.hidden_width is not None else None,
                       encoder_blocks=blocks, decoder_blocks=decoder_blocks, layout=layout, prefix_code_channels=k,
                       standardize=spec.standardize_signed and output_activation == "none")
