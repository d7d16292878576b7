"""Split points: where a model can be cut into a device head and an edge tail.

    model --torch.fx trace (timm's leaf modules + autowrapped functions)--> graph of N nodes
    cut after node i is VALID when exactly one value computed at or before i is used after i
    head = nodes <= i  (x -> f)          tail = nodes > i  (f -> logits)
    each point's feature layout (nchw, nhwc, tokens, vector) from split.layouts.detect_layout

Parameters and buffers (``get_attr`` nodes) are module state, not crossing values: the half that
uses one owns it. Extra forward arguments with defaults (a ViT's ``attn_mask=None``) are traced as
constants, so they never cross. Each valid point is named by the coarsest module whose output it is
(``layer3`` rather than ``layer3.1.act2``, which stays an alias). Head and tail are real
``torch.fx.GraphModule``s holding only their own submodules; they run the same ops in the same order
as the model, so ``tail(head(x))`` equals ``model(x)`` bit for bit.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ..errors import ModelError, SplitError, choices_hint
from .layouts import FeatureLayout, LayoutError, detect_layout


@dataclass(frozen=True)
class SplitPoint:
    """One place a traced model can be cut: a single value crosses from the head to the tail.

    Attributes:
        name: the coarsest module whose output crosses the cut (or the fx node name).
        aliases: finer modules with the same output, e.g. ("layer3.1", "layer3.1.act2").
        index: position of the last head node in execution order.
        node: fx node name of the crossing value.
        shape: the feature's shape without the batch dimension.
        coarse: listed by default (top-level modules and the blocks of timm's feature stages).
        layout: how the feature is laid out (FeatureLayout); default None: the model does not
            settle it (``layout_note`` says why).
        layout_note: how the layout was found, or why it was not; default "".
    """

    name: str  # coarsest module whose output crosses the cut (or the fx node name)
    aliases: tuple[str, ...]  # finer modules with the same output, e.g. ("layer3.1", "layer3.1.act2")
    index: int  # position of the last head node in execution order
    node: str  # fx node name of the crossing value
    shape: tuple[int, ...]  # feature shape without the batch dimension
    coarse: bool  # listed by default (top-level modules and the blocks of timm's feature stages)
    layout: FeatureLayout | None = None  # None: the model does not settle it (layout_note says why)
    layout_note: str = ""  # how the layout was found, or why it was not

    def require_layout(self) -> FeatureLayout:
        """The feature layout; LayoutError naming the point and the reason when it is unknown."""
        if self.layout is None:
            raise LayoutError(f"split point '{self.name}' ({' x '.join(map(str, self.shape))}): {self.layout_note}",
                              hint="pick a split point with a known layout (see `bnpp profile`)")
        return self.layout

    @property
    def elements(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n


@dataclass
class TracedModel:
    """A traced model with its valid split points, in execution order."""

    model: nn.Module
    graph_module: fx.GraphModule
    input_size: tuple[int, ...]
    points: list[SplitPoint] = field(default_factory=list)

    def list_points(self, all_points: bool = False) -> list[SplitPoint]:
        return list(self.points) if all_points else [p for p in self.points if p.coarse]

    def find(self, name: str) -> SplitPoint:
        """The point called `name` (or with that alias); SplitError with the valid names otherwise."""
        for p in self.points:
            if p.name == name or name in p.aliases:
                return p
        names = [p.name for p in self.points if p.coarse] or [p.name for p in self.points]
        raise SplitError(f"'{name}' is not a valid split point of this model",
                         hint=choices_hint(name, names, n=40))


class _TimmTracer(fx.Tracer):
    """fx tracer with timm's notrace modules as leaves and its notrace functions autowrapped."""

    def __init__(self) -> None:
        from timm.layers import _fx as timm_fx

        fns = tuple(f for f in timm_fx.get_notrace_functions() if callable(f))
        super().__init__(autowrap_functions=fns)
        self._leaf_types = tuple(timm_fx.get_notrace_modules())

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self._leaf_types and isinstance(m, self._leaf_types):
            return True
        return super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, model_name: str) -> fx.GraphModule:
    params = list(inspect.signature(model.forward).parameters.values())
    concrete = {p.name: p.default for p in params[1:] if p.default is not inspect.Parameter.empty}
    try:
        graph = _TimmTracer().trace(model, concrete_args=concrete or None)
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelError(f"model '{model_name}' cannot be traced with torch.fx: {reason}") from None
    _inline_constant_placeholders(graph)
    return fx.GraphModule(model, graph, class_name=type(model).__name__ + "Traced")


def _inline_constant_placeholders(graph: fx.Graph) -> None:
    """Turn the placeholders of defaulted arguments into constants (drop fx's `is None` asserts)."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for p in placeholders[1:]:
        value = p.args[0] if p.args else None
        for user in list(p.users):
            if user.op == "call_function" and getattr(user.target, "__name__", "") == "_assert_is_none":
                graph.erase_node(user)
                continue
            user.args = fx.node.map_arg(user.args, lambda a: value if a is p else a)
            user.kwargs = fx.node.map_arg(user.kwargs, lambda a: value if a is p else a)
        graph.erase_node(p)
    graph.lint()


def _module_path(entry) -> str:
    return entry[0] if isinstance(entry, tuple) else str(entry)


def trace_model(model: nn.Module, input_size: tuple[int, ...], model_name: str = "model") -> TracedModel:
    """Trace once, find every valid split point, name it and record its feature shape."""
    from torch.fx.passes.shape_prop import ShapeProp

    model.eval()
    gm = _trace(model, model_name)
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(1, *input_size))
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    pos = {n: i for i, n in enumerate(nodes)}
    end = len(nodes)
    last_use = {n: max((pos.get(u, end) for u in n.users), default=-1) for n in nodes}

    # the last node inside each module's scope: that node is the module's output
    scope_end: dict[str, int] = {}
    for n in nodes:
        for entry in (n.meta.get("nn_module_stack") or {}).values():
            scope_end[_module_path(entry)] = pos[n]
    containers = _stage_containers(model)

    points: list[SplitPoint] = []
    live: set[fx.Node] = set()
    seen: set[fx.Node] = set()
    for i, n in enumerate(nodes):
        if n.op != "get_attr" and last_use[n] > i:
            live.add(n)
        live = {m for m in live if last_use[m] > i}
        if len(live) != 1:
            continue
        (c,) = live
        if c in seen or c.op == "placeholder" or last_use[c] == end and all(u.op == "output" for u in c.users):
            continue  # same value as an earlier point, the raw input, or the final output (empty tail)
        meta = c.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            continue  # a non-tensor value (e.g. a tuple) crossing: not a feature to compress
        seen.add(c)
        stack = [_module_path(e) for e in (c.meta.get("nn_module_stack") or {}).values()]
        owners = [m for m in stack if scope_end.get(m) == pos[c]]
        name = owners[0] if owners else c.name
        aliases = tuple(owners[1:]) + ((c.name,) if owners and c.name not in owners else ())
        coarse = bool(owners) and any(_is_coarse(m, containers) for m in owners) and not _is_passthrough(gm, c)
        shape = tuple(int(s) for s in meta.shape[1:])
        try:
            layout, note = detect_layout(model, gm, c, shape, input_size, tuple(owners))
        except LayoutError as e:
            layout, note = None, str(e)
        points.append(SplitPoint(name, aliases, i, c.name, shape, coarse, layout, note))
    if not points:
        raise ModelError(f"model '{model_name}' has no valid split point (no place where one tensor crosses)")
    return TracedModel(model, gm, tuple(input_size), points)


def _stage_containers(model: nn.Module) -> set[str]:
    """Parents of timm's feature-stage modules (e.g. `blocks` for blocks.6, `stages` for stages.2)."""
    info = getattr(model, "feature_info", None)
    modules = []
    if info is not None:
        try:
            modules = [d["module"] for d in (info.get_dicts() if hasattr(info, "get_dicts") else info)]
        except Exception:  # pragma: no cover - unusual feature_info layouts
            modules = []
    return {m.rsplit(".", 1)[0] for m in modules if "." in m}


def _is_passthrough(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Identity and dropout (eval) modules: their output is the previous point's feature again."""
    if node.op != "call_module":
        return False
    return isinstance(gm.get_submodule(node.target), (nn.Identity, nn.Dropout))


def _is_coarse(path: str, containers: set[str]) -> bool:
    return "." not in path or path.rsplit(".", 1)[0] in containers


def split_model(traced: TracedModel, point: SplitPoint | str) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Build (head, tail): head(x) -> f, tail(f) -> the model's output, each owning only its modules."""
    if isinstance(point, str):
        point = traced.find(point)
    gm = traced.graph_module
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    output = next(n for n in gm.graph.nodes if n.op == "output")
    crossing = next(n for n in nodes if n.name == point.node)

    head_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for n in nodes[: point.index + 1]:
        env[n] = head_graph.node_copy(n, lambda a: env[a])
    head_graph.output(env[crossing])

    tail_graph = fx.Graph()
    tail_env: dict[fx.Node, fx.Node] = {crossing: tail_graph.placeholder("f")}

    def lookup(a: fx.Node) -> fx.Node:
        if a not in tail_env:  # only parameters/buffers of the head side can be missing here
            if a.op != "get_attr":
                raise SplitError(f"'{point.name}' is not a valid split point: '{a.name}' crosses too")
            tail_env[a] = tail_graph.node_copy(a, lookup)
        return tail_env[a]

    for n in nodes[point.index + 1:]:
        tail_env[n] = tail_graph.node_copy(n, lookup)
    tail_graph.output(fx.node.map_arg(output.args[0], lookup))

    # a parameter fetched before the cut but used only after it belongs to the tail alone
    for graph in (head_graph, tail_graph):
        for n in [n for n in graph.nodes if n.op == "get_attr" and not n.users]:
            graph.erase_node(n)
    head = fx.GraphModule(gm, head_graph, class_name="Head")
    tail = fx.GraphModule(gm, tail_graph, class_name="Tail")
    return head.eval(), tail.eval()
