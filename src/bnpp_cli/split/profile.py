"""Profile a model's split points and recommend where to cut under a stated budget.

For every valid split point (see split.py): feature shape and size, sparsity of the feature,
cumulative device MACs and params, edge MACs and params, and the measured latency of the head on
this machine. Then, under a budget (link bandwidth, device and edge speed, and the payload: an expected codec
ratio, or bits per image):

    latency_ms = device_macs / device speed + payload_bits / bandwidth + edge_macs / edge speed
    payload_bits = 32 * elements / ratio          (float32 feature, compressed `ratio` times), or
    payload_bits = bits_per_image                 (the same payload at every point, e.g. a measured
                                                   entropy code's bits; its ratio there is 32 * elements / bits)

the best point (lowest estimated latency) and the Pareto set in (device MACs, payload bits).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .backbone import BackboneConfig, load_backbone
from .macs import node_macs
from .. import timing
from ..errors import BnppError
from .graph import SplitPoint, TracedModel, split_model, trace_model


@dataclass
class Budget:
    """The deployment a profile ranks split points for: link rate, both sides' speeds, the payload.

    Attributes:
        bandwidth_mbps: uplink rate in Mbit/s; default 10.0, a modest LTE/Wi-Fi uplink.
        device_gmacs: device speed in GMAC/s; default 10.0, what a phone CPU reaches on a CNN.
        edge_gmacs: edge speed in GMAC/s; default 1000.0, a server GPU, conservatively.
        ratio: bit compression of the codec against the float32 feature, assumed at every point;
            default 64.0 (BottleNet++ reaches 64-256).
        bits_per_image: instead of ``ratio``, this payload in bits per image at every point
            (``ratio`` must then be None); default None.
    """

    bandwidth_mbps: float = 10.0
    device_gmacs: float = 10.0
    edge_gmacs: float = 1000.0
    ratio: float | None = 64.0
    bits_per_image: float | None = None

    def validate(self) -> None:
        if (self.ratio is None) == (self.bits_per_image is None):
            given = "both" if self.ratio is not None else "neither"
            raise BnppError(f"budget: {given} of ratio={self.ratio} and bits_per_image={self.bits_per_image} given: "
                            "the payload is one of them (`ratio` or `bits_per_image`)")
        for key, value in asdict(self).items():
            if value is not None and (not value > 0 or value == float("inf")):
                raise BnppError(f"budget {key}={value} must be a positive finite number")

    def payload_bits(self, elements: int) -> float:
        """Bits per image crossing the link at a point with this many float32 feature elements."""
        return float(self.bits_per_image) if self.bits_per_image is not None else 32 * elements / self.ratio

    def describe(self) -> str:
        """The payload assumption in words: a ratio, or bits per image, at every point."""
        if self.bits_per_image is not None:
            return f"{self.bits_per_image:g} bits per image"
        return f"a {self.ratio:g}x codec"


@dataclass
class ProfileConfig:
    """What `profile_model` measures: one backbone's split points under a budget.

    Attributes:
        backbone: the model to profile; required.
        all_points: every valid split point, not only the named coarse ones; default False (the
            short list a user chooses from).
        data: images for the sparsity figures (.npz, ImageFolder, dataset name); default None:
            random normal inputs.
        samples: images behind the sparsity figures; default 16 (a stable fraction, fast).
        near_zero: |f| below this counts as near-zero, absolute in the feature's units; default 1e-2.
        repeats: timed runs of each head (the median reported), after one warm-up; default 5.
        threads: torch threads the timed runs use; default 1 (bnpp_cli.timing: batch-1 latency as a
            device core gives it, not inflated by other work on the machine).
        verify: check tail(head(x)) == model(x) at every listed point; default False (it costs a
            forward pass per point).
        budget: the deployment the points are ranked for; default Budget().
        seed: seed of the inputs and the random weights; default 0.
    """

    backbone: BackboneConfig
    all_points: bool = False
    data: str | None = None
    samples: int = 16
    near_zero: float = 1e-2
    repeats: int = 5
    threads: int = timing.DEFAULT_THREADS
    verify: bool = False
    budget: Budget = field(default_factory=Budget)
    seed: int = 0


@dataclass
class PointProfile:
    """One split point's measurements (a row of `bnpp profile`).

    Attributes:
        name: the split point's name (what `fit` takes as its split).
        aliases: other names of the same cut (graph node names).
        shape: the feature's shape without the batch axis, e.g. [C, H, W] or [T, D].
        elements: the feature's element count, prod(shape).
        bytes: the feature's size as float32, bytes (4 x elements).
        zero_fraction: share of feature elements exactly 0, in [0, 1].
        near_zero_fraction: share with |f| below the config's ``near_zero``, in [0, 1].
        device_macs: MACs of the head (device side), batch 1.
        device_params: parameters of the head.
        edge_macs: MACs of the tail (edge side), batch 1.
        edge_params: parameters of the tail.
        latency_ms: the head's latency on this machine, ms, batch 1, median of the timed runs.
        payload_bits: bits per image crossing the link under the budget's ratio or bits_per_image.
        est_latency_ms: estimated device + link + edge latency under the budget, ms.
        max_abs_diff: max |tail(head(x)) - model(x)| where verified; default None (not verified).
        layout: the feature's layout (split.layouts): kind, grid, prefix_tokens, source; default {}.
        latency_range_ms: [min, max] of the head's timed runs, ms (their spread); default [].
        payload_ratio: 32 x elements / payload_bits, the bit compression the payload means here;
            default 0.0.
    """

    name: str
    aliases: list[str]
    shape: list[int]
    elements: int
    bytes: int
    zero_fraction: float
    near_zero_fraction: float
    device_macs: int
    device_params: int
    edge_macs: int
    edge_params: int
    latency_ms: float
    payload_bits: int
    est_latency_ms: float
    max_abs_diff: float | None = None
    layout: dict[str, Any] = field(default_factory=dict)
    latency_range_ms: list[float] = field(default_factory=list)
    payload_ratio: float = 0.0


@dataclass
class ModelProfile:
    """`profile_model`'s result: the whole model's figures, every split point's, and a ranking.

    Attributes:
        model: the timm model name.
        input_size: the input's shape without the batch axis, [C, H, W].
        weights: where the weights came from: "random", "pretrained" or the checkpoint path.
        inputs: what the sparsity figures were measured on: "random" or the data source.
        total_macs: MACs of the whole model, batch 1 (1 MAC = 2 FLOPs).
        total_params: parameters of the whole model.
        latency_ms: the whole model's latency on this machine, ms, batch 1, median.
        split_points: one PointProfile per listed split point, input to output.
        recommendation: the ranking under the budget: "best" (the point of least estimated
            latency), "best_est_latency_ms", "pareto" (device MACs against payload), "budget",
            "formula", "payload", "ratio_assumed", "note" and "baselines".
        notes: caveats in words (random weights, random inputs, unknown layouts, ...).
        latency_range_ms: the whole model's [min, max] over the timed runs, ms; default [].
        latency_repeats: timed runs behind each median, after one untimed warm-up; default 0.
        latency_threads: torch threads the timed runs used (ProfileConfig.threads); default 1.
        latency_load: the machine's 1-minute load average before timing (None: not known).
        latency_warning: why the latencies may overstate the cost (a busy machine), or None.
    """

    model: str
    input_size: list[int]
    weights: str
    inputs: str
    total_macs: int
    total_params: int
    latency_ms: float
    split_points: list[PointProfile]
    recommendation: dict[str, Any]
    notes: list[str]
    latency_range_ms: list[float] = field(default_factory=list)
    latency_repeats: int = 0
    latency_threads: int = timing.DEFAULT_THREADS
    latency_load: float | None = None
    latency_warning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["macs_convention"] = "MACs (1 MAC = 2 FLOPs): conv/linear/matmul incl. attention, norms 1/element"
        return d


def profile_model(config: ProfileConfig) -> ModelProfile:
    """Trace, measure and rank the split points of one model."""
    config.budget.validate()
    if config.samples < 1 or config.repeats < 1:
        raise BnppError(f"`samples` {config.samples} and `repeats` {config.repeats} must be at least 1")
    timing.check_threads(config.threads)
    torch.manual_seed(config.seed)
    backbone = load_backbone(config.backbone)
    input_size = backbone.input_size
    traced = trace_model(backbone.model, input_size, config.backbone.model)
    points = traced.list_points(config.all_points)

    x1 = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(config.seed))
    per_node = node_macs(traced.graph_module, x1)
    order = [n.name for n in traced.graph_module.graph.nodes]
    cumulative, running = {}, 0
    for name in order:
        running += per_node.get(name, 0)
        cumulative[name] = running
    total_macs = running
    total_params = sum(p.numel() for p in backbone.model.parameters())

    inputs, source = _sample_inputs(config, backbone)
    load_before = timing.load()
    with timing.threads(config.threads):
        latency, full_ms, sparsity, spread, runs = _measure(traced, points, x1, inputs, config.near_zero,
                                                            config.repeats)

    rows: list[PointProfile] = []
    with torch.no_grad():
        reference = backbone.model(inputs[:8]) if config.verify else None
    for p, head_ms, (zero, near), head_range in zip(points, latency, sparsity, spread):
        head, tail = split_model(traced, p)
        device_params = sum(t.numel() for t in head.parameters())
        edge_params = sum(t.numel() for t in tail.parameters())
        device_macs = cumulative[p.node]
        edge_macs = total_macs - device_macs
        payload_bits = int(round(config.budget.payload_bits(p.elements)))
        row = PointProfile(
            name=p.name, aliases=list(p.aliases), shape=list(p.shape), layout=_layout_of(p),
            elements=p.elements, bytes=4 * p.elements,
            zero_fraction=zero, near_zero_fraction=near, device_macs=device_macs, device_params=device_params,
            edge_macs=edge_macs, edge_params=edge_params, latency_ms=head_ms,
            payload_bits=payload_bits, est_latency_ms=_estimate_ms(device_macs, payload_bits, edge_macs, config.budget),
            latency_range_ms=head_range, payload_ratio=32 * p.elements / max(payload_bits, 1),
        )
        if reference is not None:
            with torch.no_grad():
                row.max_abs_diff = float((tail(head(inputs[:8])) - reference).abs().max())
        rows.append(row)

    notes = _notes(rows, backbone.weights, source, config.budget)
    return ModelProfile(
        model=config.backbone.model, input_size=list(input_size), weights=backbone.weights, inputs=source,
        total_macs=total_macs, total_params=total_params, latency_ms=full_ms, split_points=rows,
        recommendation=recommend(rows, config.budget, input_size, total_macs), notes=notes,
        latency_range_ms=spread[-1], latency_repeats=config.repeats, latency_threads=config.threads,
        latency_load=load_before, latency_warning=timing.busy_warning(runs, config.threads, load_before),
    )


def _notes(rows: list[PointProfile], weights: str, source: str, budget: Budget) -> list[str]:
    """The caveats of a profile in words: random weights or inputs, unknown layouts, expanding payloads."""
    notes = []
    if weights == "random":
        notes.append("weights are random (timm init): sparsity figures describe an untrained model")
    unknown = [r.name for r in rows if r.layout["kind"] == "unknown"]
    if unknown:
        notes.append(f"feature layout unknown at {', '.join(unknown)}: bnpp will not guess it, so fit refuses "
                     "there (--json gives the reason)")
    expanded = [r.name for r in rows if r.payload_ratio < 1]
    if expanded:
        notes.append(f"{budget.bits_per_image:g} bits per image exceed the float32 feature at "
                     f"{', '.join(expanded)} (ratio below 1): sending the feature itself would be smaller there")
    if source == "random":
        notes.append("sparsity measured on random normal inputs, not images: pass --data for real figures")
    return notes


def _layout_of(p: SplitPoint) -> dict[str, Any]:
    """The point's feature layout as JSON: {kind, grid, prefix_tokens, source} or {kind: unknown, reason}."""
    if p.layout is None:
        return {"kind": "unknown", "reason": p.layout_note}
    return {**p.layout.to_dict(), "source": p.layout_note}


def _estimate_ms(device_macs: int, payload_bits: float, edge_macs: int, budget: Budget) -> float:
    return 1e3 * (device_macs / (budget.device_gmacs * 1e9) + payload_bits / (budget.bandwidth_mbps * 1e6)
                  + edge_macs / (budget.edge_gmacs * 1e9))


def recommend(rows: list[PointProfile], budget: Budget, input_size, total_macs: int) -> dict[str, Any]:
    """Best point by estimated latency, the Pareto set (device MACs vs payload), and two baselines."""
    best = min(rows, key=lambda r: r.est_latency_ms)
    pareto = [r.name for r in rows
              if not any(o.device_macs <= r.device_macs and o.payload_bits <= r.payload_bits
                         and (o.device_macs, o.payload_bits) != (r.device_macs, r.payload_bits) for o in rows)]
    image_bits = 8 * int(torch.tensor(input_size).prod())  # uint8 pixels, no image codec
    return {
        "best": best.name,
        "best_est_latency_ms": best.est_latency_ms,
        "pareto": pareto,
        "budget": asdict(budget),
        "formula": ("device_macs/device_gmacs + bits_per_image/bandwidth + edge_macs/edge_gmacs"
                    if budget.bits_per_image is not None else
                    "device_macs/device_gmacs + 32*elements/ratio/bandwidth + edge_macs/edge_gmacs"),
        "payload": {"bits_per_image": budget.bits_per_image} if budget.bits_per_image is not None
        else {"ratio": budget.ratio},
        "ratio_assumed": True,  # the same codec ratio (or payload) at every point, accuracy not measured
        "note": f"assumes {budget.describe()} at every split point and does not measure accuracy; "
                f"`bnpp search MODEL --data DIR --max-drop 1` chooses the split and rate from measured accuracy",
        "baselines": {
            "edge_only_ms": _estimate_ms(0, image_bits, total_macs, budget),  # send raw 8-bit pixels
            "device_only_ms": _estimate_ms(total_macs, 0, 0, budget),
        },
    }


def _sample_inputs(config: ProfileConfig, backbone) -> tuple[torch.Tensor, str]:
    input_size = backbone.input_size
    if config.data is None:
        g = torch.Generator().manual_seed(config.seed)
        return torch.randn(config.samples, *input_size, generator=g), "random"
    from ..data.batching import BatchTransform
    from ..data.datasets import load_dataset

    ds = load_dataset(config.data, input_size=tuple(input_size[1:]), train=False)
    n = min(config.samples, len(ds))
    x = torch.stack([ds[i][0] for i in range(n)])
    cfg = backbone.data_config
    return BatchTransform(cfg["mean"], cfg["std"], augment=False)(x), f"{config.data} ({n} images)"


_STAMPS: list[float] = []


def _stamp(value):
    """Record the time a value became available (inserted into the instrumented graph)."""
    _STAMPS.append(time.perf_counter())
    return value


def _instrument(traced: TracedModel, points: list[SplitPoint]) -> torch.fx.GraphModule:
    """A copy of the traced model that time-stamps each point's feature and returns all of them.

    Runs as generated Python like the model itself (no interpreter), so the time to a point's stamp
    is the latency of the head that ends there, measured on the whole model in one pass.
    """
    graph = torch.fx.Graph()
    env: dict = {}
    wanted = {p.node for p in points}
    captured = []
    for n in traced.graph_module.graph.nodes:
        if n.op == "output":
            continue
        env[n] = graph.node_copy(n, lambda a: env[a])
        if n.op == "placeholder":
            graph.call_function(_stamp, (env[n],))
        if n.name in wanted:
            env[n] = graph.call_function(_stamp, (env[n],))
            captured.append(env[n])
    output = next(n for n in traced.graph_module.graph.nodes if n.op == "output")
    graph.call_function(_stamp, (torch.fx.node.map_arg(output.args[0], lambda a: env[a]),))  # whole model
    graph.output(tuple(captured))
    return torch.fx.GraphModule(traced.graph_module, graph)


def _measure(traced: TracedModel, points: list[SplitPoint], x1: torch.Tensor, inputs: torch.Tensor,
             eps: float, repeats: int):
    """Per point: head latency (ms, batch 1, median of repeats); the whole model's; (zero, near-zero)
    fractions; [min, max] of the timed runs per point, the whole model last (the spread: a median
    taken on a loaded machine is not a fact without it); and the whole model's timed runs."""
    gm = _instrument(traced, points)
    runs = []
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first run is a warm-up
            _STAMPS.clear()
            gm(x1)
            runs.append([1e3 * (t - _STAMPS[0]) for t in _STAMPS[1:]])
        latency = [statistics.median(r[i] for r in runs[1:]) for i in range(len(points) + 1)]
        spread = [[min(r[i] for r in runs[1:]), max(r[i] for r in runs[1:])] for i in range(len(points) + 1)]
        counts = [[0, 0, 0] for _ in points]
        for chunk in inputs.split(16):
            for c, f in zip(counts, gm(chunk)):
                c[0] += int((f == 0).sum())
                c[1] += int((f.abs() < eps).sum())
                c[2] += f.numel()
    _STAMPS.clear()
    whole = [r[-1] for r in runs[1:]]
    return latency[:-1], latency[-1], [(c[0] / c[2], c[1] / c[2]) for c in counts], spread, whole
