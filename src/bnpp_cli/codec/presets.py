"""Codec presets: one registered object per preset, holding everything the preset decides.

    CodecPreset(name, layers: CodecConfig -> (encoder body, decoder body), recipe, planning rule, ...)

Registered by name the way timm registers models (``register_preset``, ``get_preset``,
``list_presets``); an unknown name fails naming the valid ones. Nothing outside this module
compares a preset's name: ``plan_codec``, ``CodecConfig`` and ``fit`` ask the preset object.

- ``bottlenetpp``: the paper (Shao & Zhang, ICC-W 2020). Encoder Conv3x3(C+1 -> C') [Conv2x2
  stride 2 with spatial reduction] -> BN -> sigmoid. Decoder Conv3x3(C' -> C) [ConvTranspose2x2
  stride 2] -> BN -> ReLU. The decoder pairing is the intended one; the official code swaps the two
  branches (a bug). Recipe: constant Adam 1e-4, batch 32, cross-entropy only. Halves H, W only
  when C / ratio < 1.
- ``bnpp``: two conv layers per side with ``hidden_channels`` in between (BN + ReLU), plus
  ``encoder_blocks`` residual blocks at that width in the encoder, the condition plane fed to the
  decoder too; the encoder still ends in BN -> sigmoid; the decoder in a biased conv and the output
  activation; ``decoder_blocks`` residual blocks after its first layer give the edge more capacity
  where the code is thin (device MACs unchanged). Also halves H, W for a thin code (C / ratio < 4) on a map of at least 4 x 4.

Both build the same layers for every feature layout: 3 x 3 convs on maps and patch grids, 3 x 1 on
a token sequence (the 1-D codec), 1 x 1 on a vector and on each prefix token (codec.layers ``axes``).
  Recipe: what won in benchmarks/codec_ablation.py and benchmarks/rate_accuracy.py (README).
- ``entropy``: the bnpp layers with the encoder's sigmoid replaced by a factorized prior (an integer
  code, its rate trained with `--lmbda`, range-coded: codec.entropy) and the decoder first holding
  the prior's integer tables. Coded over an error-free link (channel ``none``; a channel code at
  capacity is link.capacity's). Layouts without prefix tokens.
- ``variable``: the bnpp layers and recipe, trained so that every prefix of the flattened code is a
  code (nested dropout: each image keeps a random prefix); the length sent at each channel
  condition comes from a table chosen on validation images after the fit (codec.variable).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from torch import nn

from ..errors import CodecError, choices_hint
from .entropy import FactorizedPrior, SymbolTables
from .kinds import ENTROPY as ENTROPY_CODE, FIXED, VARIABLE as VARIABLE_CODE, FixedCode
from .layers import ResidualBlock, activation, conv3, down, up
from .standardize import standardizer_pair

CodecConfigLike = Any  # a codec.config.CodecConfig (that module imports this one: no import back)

LR_SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class Recipe:
    """How a preset's codec trains, where FitConfig leaves a field None."""

    lr: float  # Adam, phase codec
    batch_size: int  # per process
    distill: float  # weight of T^2 KL(uncut model || pipeline)
    distill_temperature: float  # softmax temperature T of that KL
    lr_schedule: str  # "cosine" (per step to 0 over each phase) or "constant"
    lmbda: float = 0.0  # rate weight (entropy-coded presets only): loss += lmbda x bits per image
    distill_features: float = 0.0  # weight of the tail's pre-logits features' relative squared error (run.loop)


@dataclass(frozen=True)
class CodecPreset:
    """Everything one preset decides: its layers, its recipe, its planning rules and its kind of code.

    Attributes:
        name: the registered name (``bnpp fit --preset NAME``).
        layers: CodecConfig -> (encoder body, decoder body), the layers for every feature layout.
        recipe: how it trains where FitConfig leaves a field None (``Recipe``).
        thin_code_channels: halve H, W when C / ratio is below this (maps >= 4 x 4); None: never
            (the paper's rule, C / ratio < 1, always applies).
        decoder_condition: the decoder also sees the channel parameter.
        hidden_width: (C, C', number of classes or None) -> inner width; None: the preset has no
            inner layer.
        default_encoder_blocks: residual blocks in the encoder; None: the preset has none.
        standardize_signed: standardise a signed feature per channel around the codec (codec.standardize).
        prefix_share: at least this share of a code's symbols for the prefix tokens (a ViT's class
            token); 0: D / ratio symbols each.
        code: the kind of code (codec.kinds): the hooks fit, eval, export and the halves call.
    """

    name: str
    layers: Callable[[CodecConfigLike], tuple[nn.Sequential, nn.Sequential]]
    recipe: Recipe
    thin_code_channels: float | None  # halve H, W when C / ratio is below this (maps >= 4 x 4); None: never
    decoder_condition: bool  # the decoder also sees the channel parameter
    hidden_width: Callable[[int, int, int | None], int] | None  # (C, C', classes) -> inner width; None: none
    default_encoder_blocks: int | None  # residual blocks in the encoder; None: the preset has none
    standardize_signed: bool = False
    prefix_share: float = 0.0
    code: FixedCode = FIXED

    @property
    def entropy_coded(self) -> bool:
        """An integer code with a learned prior and a real coder (codec.entropy)."""
        return self.code.entropy_coded

    @property
    def variable_length(self) -> bool:
        """Every prefix of the code is a code; its length follows the channel (codec.variable)."""
        return self.code.variable_length

    def halves_thin_code(self, c: int, h: int, w: int, ratio: float) -> bool:
        """The preset's own stride-2 rule, beyond the paper's C / ratio < 1."""
        t = self.thin_code_channels
        return t is not None and c / ratio < t and h >= 4 and w >= 4


_PRESETS: dict[str, CodecPreset] = {}


def register_preset(preset: CodecPreset) -> CodecPreset:
    if preset.name in _PRESETS:
        raise CodecError(f"codec preset {preset.name!r} is registered twice")
    _PRESETS[preset.name] = preset
    return preset


def list_presets() -> list[str]:
    return list(_PRESETS)


def get_preset(name: str) -> CodecPreset:
    preset = _PRESETS.get(name)
    if preset is None:
        raise CodecError(f"unknown codec preset {name!r}; valid: {', '.join(_PRESETS)}",
                         hint=choices_hint(str(name), _PRESETS))
    return preset


CLASS_WIDTH_CAP = 256  # the widest class floor measured (CIFAR-100 at layer3: C = 256); see docs/defaults.md


def default_hidden_channels(in_channels: int, code_channels: int, num_classes: int | None = None) -> int:
    """bnpp hidden width: the largest of 4 C', 64 and 4 K (at most 256), but never above C, and
    never below C'; K the number of classes (None: not known, no class floor).

    4 C' gives each side room to mix before the bottleneck; the floor of 64 matters at high
    ratios, where C' is 1-4 (resnet18 layer2 at 64x: width 16 lost 1.2 points more than 64,
    and 128 gained nothing over 64); 4 K is the floor a many-class task needs (resnet18 /
    CIFAR-100 at layer3 16x: width 256 lost 1.08 points less than 64 on validation images,
    with or without augmentation; 10 classes give 40, under the floor of 64, so CIFAR-10
    codecs are unchanged); capping at C keeps the codec small next to a wide backbone
    (C = 2048, C' = 32 -> 128 at 10 classes, 256 at 1,000)."""
    by_classes = min(4 * num_classes, CLASS_WIDTH_CAP) if num_classes else 0
    return max(code_channels, min(in_channels, max(4 * code_channels, 64, by_classes)))


def _bottlenetpp_layers(cfg: CodecConfigLike) -> tuple[nn.Sequential, nn.Sequential]:
    c, k, s, ax = cfg.in_channels, cfg.code_channels, cfg.spatial_reduction, cfg.conv_axes
    encoder = nn.Sequential(down(c + 1, k, s, ax), nn.BatchNorm2d(k), nn.Sigmoid())
    decoder = nn.Sequential(up(k + int(cfg.decoder_condition), c, s, ax), nn.BatchNorm2d(c),
                            *activation(cfg.output_activation))
    return encoder, decoder


def _bnpp_layers(cfg: CodecConfigLike) -> tuple[nn.Sequential, nn.Sequential]:
    c, k, s, ax = cfg.in_channels, cfg.code_channels, cfg.spatial_reduction, cfg.conv_axes
    hid = cfg.hidden_channels or default_hidden_channels(c, k)
    std = standardizer_pair(c) if cfg.standardize else ()  # (first encoder layer, last decoder layer)
    encoder = nn.Sequential(
        *std[:1], conv3(c + 1, hid, ax, bias=False), nn.BatchNorm2d(hid),
        nn.ReLU(inplace=True),
        *[ResidualBlock(hid, ax) for _ in range(cfg.encoder_blocks)],
        down(hid, k, s, ax), nn.BatchNorm2d(k), nn.Sigmoid(),
    )
    decoder = nn.Sequential(
        up(k + int(cfg.decoder_condition), hid, s, ax), nn.BatchNorm2d(hid), nn.ReLU(inplace=True),
        *[ResidualBlock(hid, ax) for _ in range(cfg.decoder_blocks)],
        conv3(hid, c, ax), *activation(cfg.output_activation), *std[1:],
    )
    return encoder, decoder


BOTTLENETPP = register_preset(CodecPreset(
    name="bottlenetpp", layers=_bottlenetpp_layers,
    recipe=Recipe(lr=1e-4, batch_size=32, distill=0.0, distill_temperature=1.0, lr_schedule="constant"),
    thin_code_channels=None, decoder_condition=False, hidden_width=None, default_encoder_blocks=None,
))

BNPP = register_preset(CodecPreset(
    name="bnpp", layers=_bnpp_layers,
    # 10x the paper's lr (the codec is small and starts from scratch) with cosine decay to 0, and
    # distillation from the uncut model's logits at T = 4 (benchmarks/codec_ablation.py)
    recipe=Recipe(lr=1e-3, batch_size=64, distill=1.0, distill_temperature=4.0, lr_schedule="cosine"),
    # stride-2 code below C / ratio = 4: won at C / R = 1 and 2, lost at 4 (layer1 16x; README)
    thin_code_channels=4,
    decoder_condition=True, hidden_width=default_hidden_channels,
    default_encoder_blocks=1,  # one residual block: -0.65 points of drop at layer2 64x (ablation)
    # signed features (a transformer's residual stream) standardised per channel: the shared ViT's
    # blocks.2 at 64x, validation top-1 30.4 -> 51.9 % (benchmarks/rate_accuracy_tokens.py)
    standardize_signed=True,
    # the class token summarises the image for the head: D / ratio symbols (3 at 64x) starve it
    # (same ViT, blocks.2 64x, with standardisation: 51.9 -> 54.9 % at a quarter of the symbols)
    prefix_share=0.25,
))


def _entropy_layers(cfg: CodecConfigLike) -> tuple[nn.Sequential, nn.Sequential]:
    if cfg.layout.prefix_tokens or cfg.prefix_code_channels:
        raise CodecError(f"the entropy preset codes maps, sequences and vectors; not a layout with prefix "
                         f"tokens ({cfg.layout.describe()})")
    encoder, decoder = _bnpp_layers(cfg)
    k = cfg.code_channels
    return (nn.Sequential(*list(encoder)[:-1], FactorizedPrior(k)),  # BN -> prior instead of BN -> sigmoid
            nn.Sequential(SymbolTables(k), *decoder))


ENTROPY = register_preset(CodecPreset(
    name="entropy", layers=_entropy_layers,
    # the bnpp recipe and a rate weight: 0.01 lost 0.4 points of validation top-1 against 0.003 for 23 %
    # fewer estimated bits (resnet18 / CIFAR-10 layer3 64x, 5 epochs; benchmarks/entropy_sweep.py)
    recipe=replace(BNPP.recipe, lmbda=0.01),
    thin_code_channels=BNPP.thin_code_channels, decoder_condition=True, hidden_width=default_hidden_channels,
    default_encoder_blocks=BNPP.default_encoder_blocks, code=ENTROPY_CODE,
))


VARIABLE = register_preset(replace(BNPP, name="variable", code=VARIABLE_CODE))
