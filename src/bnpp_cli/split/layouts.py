"""Feature layouts: what the one tensor crossing a split point holds, and its exact map adapter.

    nchw     (C, H, W)        a conv map                                  -> map (C, H, W)
    nhwc     (H, W, C)        a channels-last map (Swin, MambaOut, NesT)  -> map (C, H, W), permuted
    tokens   (P + Hp Wp, D)   P prefix tokens (cls, distillation,         -> map (D, Hp, Wp) + prefix (P, D)
                              registers), then the patch grid in raster order
    tokens   (T, D)           a token sequence without a known grid       -> map (D, T, 1)
    vector   (D,)             a pooled feature                            -> map (D, 1, 1)

``FeatureLayout.to_maps`` and ``from_maps`` are pure reshapes and permutes: ``from_maps(*to_maps(f))``
equals ``f`` bit for bit, so the conv codec (codec.model) serves every layout and its decoder hands
the tail the feature in the layout the tail expects.

``detect_layout`` finds the layout of a split point from the model, never by guessing:
- timm's metadata first: ``num_prefix_tokens`` and the patch grid (``patch_embed.dynamic_feat_size``
  of the traced input, i.e. ``patch_embed.grid_size``; ``dynamic_img_size`` models too) for tokens;
  the ``output_fmt`` of the model's feature stages for channels-last maps;
- then shape inference against the input: (a, b, c) is C x H x W when (b, c) is the spatial size
  of a stride of the input, H x W x C when (a, b) is; with a square input the spatial pair is square;
- then the graph: the nearest channel-defining op before or after the cut (Conv2d / BatchNorm2d /
  pooling act on dim 1; LayerNorm / Linear on the last dim).
A shape that these do not settle (e.g. 8 x 8 x 8 with no conv or norm next to the cut) raises
LayoutError naming the shape and why; `bnpp profile` shows such a point as ``unknown``.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, fx, nn

from .. import configs
from ..errors import SplitError

LAYOUT_KINDS = ("nchw", "nhwc", "tokens", "vector")


class LayoutError(SplitError):
    """A split point whose feature layout the model does not settle."""


@dataclass(frozen=True)
class FeatureLayout:
    """How a feature is laid out (without the batch dimension); plain typed fields (configs.py)."""

    kind: str = "nchw"  # one of LAYOUT_KINDS; "nchw" is what every run before layouts had
    grid: tuple[int, int] | None = None  # tokens: patch grid (Hp, Wp) in raster order; None: a sequence
    prefix_tokens: int = 0  # tokens with a grid: cls / distillation / register tokens before it

    def __post_init__(self) -> None:
        if self.kind not in LAYOUT_KINDS:
            raise LayoutError(f"unknown feature layout {self.kind!r}; valid: {', '.join(LAYOUT_KINDS)}")
        if self.grid is not None:
            object.__setattr__(self, "grid", tuple(int(v) for v in self.grid))
            if self.kind != "tokens" or len(self.grid) != 2 or min(self.grid) < 1:
                raise LayoutError(f"a patch grid {self.grid} belongs to a tokens layout with two sizes >= 1")
        if int(self.prefix_tokens) != self.prefix_tokens or self.prefix_tokens < 0:
            raise LayoutError(f"prefix_tokens {self.prefix_tokens} must be an integer >= 0")
        if self.prefix_tokens and self.grid is None:
            raise LayoutError("prefix tokens are told apart from a patch grid: a sequence has none")

    @property
    def one_d(self) -> bool:
        """Coded along one axis at most (token sequences, vectors): the codec's 1-D form."""
        return self.kind == "vector" or (self.kind == "tokens" and self.grid is None)

    def describe(self) -> str:
        if self.kind == "tokens" and self.grid is not None:
            prefix = f" + {self.prefix_tokens} prefix" if self.prefix_tokens else ""
            return f"tokens {self.grid[0]}x{self.grid[1]}{prefix}"
        return "tokens (sequence)" if self.kind == "tokens" else self.kind

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    def map_shape(self, feature_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """(C, H, W) of the map the conv codec sees for a feature of this shape."""
        shape = tuple(int(s) for s in feature_shape)
        want = {"nchw": 3, "nhwc": 3, "tokens": 2, "vector": 1}[self.kind]
        if len(shape) != want or min(shape, default=0) < 1:
            raise LayoutError(f"feature shape {shape} is not a {self.describe()} feature "
                              f"({want} positive sizes without the batch dimension)")
        if self.kind == "nchw":
            return shape  # type: ignore[return-value]
        if self.kind == "nhwc":
            return (shape[2], shape[0], shape[1])
        if self.kind == "vector":
            return (shape[0], 1, 1)
        t, d = shape
        if self.grid is None:
            return (d, t, 1)
        if t != self.prefix_tokens + self.grid[0] * self.grid[1]:
            raise LayoutError(f"feature shape {shape}: {t} tokens are not {self.prefix_tokens} prefix + "
                              f"{self.grid[0]} x {self.grid[1]} patch tokens")
        return (d, *self.grid)

    def feature_shape(self, map_shape: tuple[int, int, int]) -> tuple[int, ...]:
        """Inverse of ``map_shape``."""
        c, h, w = (int(s) for s in map_shape)
        if self.kind == "nchw":
            return (c, h, w)
        if self.kind == "nhwc":
            return (h, w, c)
        if self.kind == "vector":
            return (c,)
        return (self.prefix_tokens + h * w, c)

    def to_maps(self, f: Tensor) -> tuple[Tensor, Tensor | None]:
        """f (N, *feature) -> (map (N, C, H, W), prefix tokens (N, P, D) or None)."""
        n = f.shape[0]
        if self.kind == "nchw":
            return f, None
        if self.kind == "nhwc":
            return f.permute(0, 3, 1, 2), None
        if self.kind == "vector":
            return f.reshape(n, -1, 1, 1), None
        p = self.prefix_tokens
        grid = f[:, p:].transpose(1, 2)  # (N, D, T - P)
        if self.grid is None:
            return grid.unsqueeze(-1), None
        return grid.reshape(n, grid.shape[1], *self.grid), (f[:, :p] if p else None)

    def from_maps(self, m: Tensor, prefix: Tensor | None = None) -> Tensor:
        """Inverse of ``to_maps``: (map, prefix) -> f (N, *feature), contiguous."""
        n = m.shape[0]
        if self.kind == "nchw":
            return m
        if self.kind == "nhwc":
            return m.permute(0, 2, 3, 1).contiguous()
        if self.kind == "vector":
            return m.reshape(n, -1)
        tokens = m.flatten(2).transpose(1, 2)  # (N, H W, D)
        if self.prefix_tokens:
            if prefix is None:
                raise LayoutError(f"a {self.describe()} feature needs its prefix tokens back")
            tokens = torch.cat([prefix, tokens], dim=1)
        return tokens.contiguous()


def detect_layout(model: nn.Module, gm: fx.GraphModule, node: fx.Node, shape: tuple[int, ...],
                  input_size: tuple[int, ...], owners: tuple[str, ...] = ()) -> tuple[FeatureLayout, str]:
    """(layout, how it was found) of the feature `shape` produced by `node`; LayoutError otherwise.

    `owners` are the modules whose output the feature is (for timm's per-stage ``output_fmt``)."""
    hw = tuple(int(s) for s in input_size[-2:])
    label = " x ".join(map(str, shape))
    if len(shape) == 1:
        return FeatureLayout("vector"), "shape: one axis"
    if len(shape) == 2:
        return _token_layout(model, gm, node, shape, hw, label)
    if len(shape) != 3:
        raise LayoutError(f"feature {label} has {len(shape)} axes: bnpp codes maps (3), tokens (2) and vectors (1)")
    a, b, c = shape
    as_nchw, as_nhwc = _spatial(b, c, hw), _spatial(a, b, hw)
    if as_nchw != as_nhwc:
        kind = "nchw" if as_nchw else "nhwc"
        axes = f"{b} x {c}" if as_nchw else f"{a} x {b}"
        return FeatureLayout(kind), f"shape: {axes} is the spatial size of a stride of the {hw[0]} x {hw[1]} input"
    if not as_nchw:
        raise LayoutError(f"feature {label} is neither a C x H x W nor an H x W x C map of the "
                          f"{hw[0]} x {hw[1]} input: bnpp will not guess its layout")
    fmt = _stage_output_fmt(model, owners)
    if fmt is not None:
        return FeatureLayout(fmt), f"timm metadata: output_fmt {fmt.upper()} of the feature stage"
    evidence = _axis_evidence(gm, node, len(shape) + 1)
    if len(evidence) == 1:
        (axis, op), = evidence.items()
        kind = "nchw" if axis == "first" else "nhwc"
        return FeatureLayout(kind), f"graph: {op} acts on the {'first' if axis == 'first' else 'last'} axis"
    why = "ops on both axes" if evidence else "no conv, norm, pooling or linear op next to the cut"
    raise LayoutError(f"feature {label} could be C x H x W or H x W x C ({why}): bnpp will not guess "
                      f"its layout", hint="pick a split point whose shape settles it (see `bnpp profile`)")


def _token_layout(model: nn.Module, gm: fx.GraphModule, node: fx.Node, shape: tuple[int, ...],
                  hw: tuple[int, int], label: str) -> tuple[FeatureLayout, str]:
    t, d = shape
    grid, where = _patch_grid(model, hw)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    if grid is not None:
        gh, gw = grid
        meta = f"timm metadata: {where} {gh} x {gw}"
        if prefix and t == prefix + gh * gw:
            return FeatureLayout("tokens", grid, prefix), f"{meta}, num_prefix_tokens {prefix}"
        if t == gh * gw:
            return FeatureLayout("tokens", grid, 0), meta
    evidence = _axis_evidence(gm, node, 3)
    if set(evidence) == {"last"}:
        return FeatureLayout("tokens"), f"graph: {evidence['last']} acts on the last axis ({d} per token)"
    raise LayoutError(f"feature {label} matches no patch grid of the model and the graph does not tell "
                      f"its token axis from its embedding axis: bnpp will not guess its layout",
                      hint="pick a split point whose layout `bnpp profile` shows")


def _patch_grid(model: nn.Module, hw: tuple[int, int]) -> tuple[tuple[int, int] | None, str]:
    """The patch grid of timm's patch embedding for input size `hw` (ViT/DeiT/EVA `patch_embed`,
    MLP-Mixer `stem`), or None."""
    for attr in ("patch_embed", "stem"):
        embed = getattr(model, attr, None)
        if embed is None or not hasattr(embed, "grid_size"):
            continue
        if hasattr(embed, "dynamic_feat_size"):
            try:
                grid = tuple(int(v) for v in embed.dynamic_feat_size(hw))
            except Exception:  # an embedding that cannot say: fall back to its fixed grid
                grid = tuple(int(v) for v in embed.grid_size)
            name = f"{attr}.dynamic_feat_size" if getattr(model, "dynamic_img_size", False) else f"{attr}.grid_size"
        else:
            grid, name = tuple(int(v) for v in embed.grid_size), f"{attr}.grid_size"
        if len(grid) == 2:
            return grid, name  # type: ignore[return-value]
    return None, ""


def _spatial(h: int, w: int, hw: tuple[int, int]) -> bool:
    """Can (h, w) be the spatial size of the input `hw` at some stride? A square input gives square maps."""
    big_h, big_w = hw
    if h > big_h or w > big_w:
        return False
    if big_h == big_w:
        return h == w
    s = (big_h + big_w) / (h + w)  # the stride both axes share (valid padding shrinks a few pixels)
    return all(abs(v - big / s) <= max(1.0, 0.05 * big / s) for v, big in ((h, big_h), (w, big_w)))


def _stage_output_fmt(model: nn.Module, owners: tuple[str, ...]) -> str | None:
    """timm's ``output_fmt`` ("NHWC" for Swin, MambaOut) when the feature is a feature-stage output."""
    fmt = getattr(model, "output_fmt", None)
    info = getattr(model, "feature_info", None)
    if fmt is None or info is None:
        return None
    try:
        stages = {d["module"] for d in (info.get_dicts() if hasattr(info, "get_dicts") else info)}
    except Exception:  # pragma: no cover - unusual feature_info layouts
        return None
    value = str(getattr(fmt, "value", fmt)).lower()
    return value if value in ("nchw", "nhwc") and stages & set(owners) else None


_FIRST_AXIS_MODULES = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d,
                       nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_FIRST_AXIS_FUNCTIONS = {"conv2d", "batch_norm", "group_norm", "instance_norm", "max_pool2d", "avg_pool2d",
                         "adaptive_avg_pool2d", "adaptive_max_pool2d"}
_ELEMENTWISE = {operator.add, operator.mul, operator.sub, operator.truediv, torch.add, torch.mul}
_ELEMENTWISE_NAMES = {"relu", "gelu", "silu", "sigmoid", "hardswish", "hardsigmoid", "tanh", "dropout",
                      "add", "mul", "contiguous", "clone", "relu_", "add_", "mul_"}


def _axis_evidence(gm: fx.GraphModule, node: fx.Node, ndim: int, depth: int = 8) -> dict[str, str]:
    """{"first" | "last": the op that says so}: the nearest channel-defining ops that produce or
    consume `node`, walking through elementwise ops of the same shape (activations, residual adds)."""
    last = int(node.meta["tensor_meta"].shape[-1])
    found: dict[str, str] = {}
    seen: set[tuple[fx.Node, str]] = set()
    frontier = [(node, "back"), *((u, "forward") for u in node.users)]
    for _ in range(depth):
        nxt = []
        for n, direction in frontier:
            if (n, direction) in seen:
                continue
            seen.add((n, direction))
            verdict = _channel_axis(gm, n, direction, last, ndim)
            if verdict is not None:
                found.setdefault(*verdict)
            elif _elementwise(gm, n):
                if direction == "back":
                    nxt += [(a, "back") for a in n.all_input_nodes if _same_shape(a, node)]
                else:
                    nxt += [(u, "forward") for u in n.users if _same_shape(u, node)]
        frontier = nxt
    return found


def _same_shape(a: fx.Node, b: fx.Node) -> bool:
    ma, mb = a.meta.get("tensor_meta"), b.meta.get("tensor_meta")
    return hasattr(ma, "shape") and hasattr(mb, "shape") and tuple(ma.shape) == tuple(mb.shape)


def _elementwise(gm: fx.GraphModule, n: fx.Node) -> bool:
    if n.op == "call_function":
        return n.target in _ELEMENTWISE or getattr(n.target, "__name__", "") in _ELEMENTWISE_NAMES
    if n.op == "call_method":
        return n.target in _ELEMENTWISE_NAMES
    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        mod = type(m).__module__
        return (isinstance(m, (nn.Identity, nn.Dropout)) or type(m).__name__ == "DropPath"
                or mod.startswith(("torch.nn.modules.activation", "timm.layers.activations")))
    return False


def _channel_axis(gm: fx.GraphModule, n: fx.Node, direction: str, last: int, ndim: int) -> tuple[str, str] | None:
    """("first" | "last", op name) when `n` fixes which axis holds the channels, else None."""
    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        name = type(m).__name__
        if "2d" in name.lower() and isinstance(m, nn.LayerNorm):  # timm LayerNorm2d: normalises dim 1
            return "first", name
        if isinstance(m, _FIRST_AXIS_MODULES) and ndim == 4:
            return "first", name
        if isinstance(m, nn.LayerNorm) and tuple(m.normalized_shape) == (last,):
            return "last", name
        if isinstance(m, nn.Linear) and (m.out_features if direction == "back" else m.in_features) == last:
            return "last", name
        return None
    if n.op != "call_function":
        return None
    fname = getattr(n.target, "__name__", "")
    if fname in _FIRST_AXIS_FUNCTIONS and ndim == 4:
        return "first", fname
    if fname == "layer_norm" and len(n.args) > 1 and tuple(n.args[1]) == (last,):
        return "last", fname
    if fname == "linear" and len(n.args) > 1 and isinstance(n.args[1], fx.Node):
        weight = n.args[1].meta.get("tensor_meta")
        size = None if weight is None else weight.shape[0 if direction == "back" else -1]
        return ("last", fname) if size == last else None
    return None
