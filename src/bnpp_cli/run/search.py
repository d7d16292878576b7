"""`bnpp search`: recommend the split AND the rate from measured accuracy, not an assumed ratio.

    search_split_rate(SearchConfig) -> SearchResult      read_search(DIR) -> SearchResult (finished)
      trace the model, count each split's MACs -> the validation images (those every fit holds out)
      -> baselines on them (label on device, image to edge) -> round 0: a short fit of every
      (split, rate), measured on the validation images at the target condition (measure.fit_and_measure)
      -> promote about 1/eta (candidates.promote) -> round r: eta^r times the budget ... -> Pareto set and
      the recommendation under the budget (the fastest within --max-drop, never one over it)

    DIR/search.json               the summary, rewritten atomically after every candidate
    DIR/val.npz                   the validation images (when they are held out of --data)
    DIR/candidates/NAME/          each candidate is a bnpp run: `bnpp eval` and `bnpp export` take it
    DIR/features/                 the frozen head's features and teacher logits (run.features), when the
                                  fits run without augmentation: computed once per split and images

Finished fits are reused (their measurement too, kept in search.json); a fit stopped half way
resumes from its checkpoint, so an interrupted search picks up where it stopped. The library never
prints: progress goes to the callback ("start", "baselines", "fit", "candidate", "round").
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from .. import configs
from ..codec.presets import get_preset
from ..errors import BnppError, CodecError, RunError
from ..files import write_json
from ..link.config import ChannelConfig
from ..split.backbone import BackboneConfig, load_backbone
from ..split.graph import trace_model
from ..split.macs import node_macs
from ..split.profile import Budget
from . import baselines as bl
from .candidates import Measured, choose_splits, latest, latency_ms, pareto, promote, rate_to_ratio, recommend, \
    round_budget
from .config import FitConfig
from .measure import fit_and_measure

SEARCH_FILE = "search.json"
FEATURES_DIR = "features"  # the feature cache's entries (run.features), one per split and images
VAL_FILE = "val.npz"
SEARCH_SCHEMA = 1
Callback = Callable[[str, dict[str, Any]], None]


@dataclass
class SearchConfig:
    """What `search` explores: split points x rates, fitted in rounds that keep the best candidates.

    Attributes:
        backbone: the model to search; required.
        data: training images; the validation ones are held out of them unless ``val_data``.
        out: the search directory.
        channel: the channel, trained for its condition and measured at the worst; default awgn.
        splits: split points to try; default None: ``auto_splits`` points spread over device MACs.
        auto_splits: how many points to pick; default 4: enough to see the trade-off, few enough
            to fit in minutes.
        rates: bandwidth ratios to try; default [16, 64, 256] (BottleNet++'s range).
        bits_per_image: the rates are bits per image (digital channels), not ratios; default False.
        max_drop: tolerated top-1 drop in points on the validation images; default 1.0.
        budget: the deployment for the end-to-end latency (its ratio is not used); default Budget().
        val_data: held-out images; default None: ``val_fraction`` of ``data``, as fit does.
        val_fraction: share held out; default 0.1, fit's, so a candidate's validation is the search's.
        data_root: where torchvision datasets live; default None.
        first_images: round 0 fits every candidate on this many images; default 2000.
        first_epochs: for this many epochs; default 1: ranks them in seconds each.
        eta: each round keeps ~1/eta of the candidates and gives them eta x the budget; default 3.
        rounds: rounds of fitting; default 3 (round 2 at eta^2 = 9x round 0's budget).
        preset: the codec preset; default "bnpp".
        batch_size: mini-batch size; default None: the preset's recipe.
        augment: random crop + flip; default False: the short fits lost nothing measurable
            without it, and it lets a split's candidates share the frozen head's features.
        feature_cache: default None: on when augment is off (DIR/features, shared by a split's
            candidates).
        draws: noise draws per measurement; default 2 (the drop's spread is a few tenths at 2,500
            images).
        device: torch device; default "cpu".
        seed: seed of every random draw; default 0.
    """

    backbone: BackboneConfig
    data: str  # training images; the validation ones are held out of them unless val_data
    out: str  # the search directory
    channel: ChannelConfig = field(default_factory=ChannelConfig)  # trained for its condition, measured at the worst
    splits: list[str] | None = None  # None: auto_splits points spread over device MACs
    auto_splits: int = 4  # enough to see the trade-off, few enough to fit in minutes
    rates: list[float] = field(default_factory=lambda: [16.0, 64.0, 256.0])  # bandwidth ratios (BottleNet++'s range)
    bits_per_image: bool = False  # rates are bits per image (digital channels), not ratios
    max_drop: float = 1.0  # tolerated top-1 drop in points, on the validation images
    budget: Budget = field(default_factory=Budget)  # for the end-to-end latency (its ratio is not used)
    val_data: str | None = None  # held-out images; default: val_fraction of --data, as fit does
    val_fraction: float = 0.1  # fit's default, so a candidate's own validation is the search's
    data_root: str | None = None
    first_images: int = 2000  # round 0: every candidate on this many images...
    first_epochs: int = 1  # ...for this many epochs: ranks them in seconds each
    eta: int = 3  # each round keeps ~1/eta of the candidates and gives them eta x the budget
    rounds: int = 3  # round 2 at eta^2 = 9x round 0's budget
    preset: str = "bnpp"
    batch_size: int | None = None  # None: the preset's recipe
    # off: the short fits lost nothing measurable without it (benchmarks/README.md, search_resnet18_cached),
    # and it lets every candidate at a split share the frozen head's features (feature_cache)
    augment: bool = False
    feature_cache: bool | None = None  # None: on when augment is off (DIR/features, shared by a split's candidates)
    draws: int = 2  # noise draws per measurement: the drop's spread is a few tenths at 2,500 images
    device: str = "cpu"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchConfig":
        return configs.from_dict(cls, d)


# what a candidate's name means: a search directory refuses a search that changes one of these
_SAME = ("backbone", "data", "channel", "bits_per_image", "val_data", "val_fraction", "preset", "batch_size",
         "augment", "draws", "seed")


@dataclass
class SearchResult:
    out: str
    model: str
    channel: str
    condition: str  # the target condition the drops are measured at, with its unit
    validation: dict[str, Any]  # source, images, the uncut model's top-1 on them
    splits: list[dict[str, Any]]  # name, shape, head MACs
    rates: list[float]
    rate_unit: str
    candidates: list[dict[str, Any]]  # every measurement, every round
    skipped: list[dict[str, Any]]  # candidates a codec cannot be planned for, with the reason
    final: list[str]  # each (split, rate) once: its longest fit
    pareto: list[str]  # over (device MACs, bits, drop), baselines included
    baselines: dict[str, Any]
    recommendation: dict[str, Any]
    budget: dict[str, Any]
    seconds: float
    status: str = "done"
    schema: int = SEARCH_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _noop(event: str, info: dict[str, Any]) -> None:
    pass


def search_split_rate(config: SearchConfig, callback: Callback = _noop) -> SearchResult:
    """Short fits of every (split, rate), more budget to the promising, measured on validation images."""
    t0 = time.perf_counter()
    _check(config)
    _caching(config)
    out = Path(config.out)
    state = _read_state(out, config)
    channel = config.channel.build()
    torch.manual_seed(config.seed)
    backbone = load_backbone(config.backbone)
    traced = trace_model(backbone.model, backbone.input_size, config.backbone.model)
    per_node = node_macs(traced.graph_module, torch.zeros(1, *backbone.input_size))
    cumulative, running = {}, 0
    for n in traced.graph_module.graph.nodes:
        running += per_node.get(n.name, 0)
        cumulative[n.name] = running
    total_macs = running
    points = _splits(config, traced, cumulative, total_macs)

    size = tuple(backbone.input_size[1:])
    x, y, classes, source, train_images = bl.validation_images(
        config.data, config.val_data, config.val_fraction, config.seed, size, backbone.num_classes, config.data_root)
    val_path = config.val_data or str(out / VAL_FILE)
    if not config.val_data and not (out / VAL_FILE).is_file():
        bl.write_images_npz(out / VAL_FILE, x, y, classes)
    batch = config.batch_size or get_preset(config.preset).recipe.batch_size
    if config.first_images < batch:
        raise BnppError(f"--first-images {config.first_images} is fewer than a batch ({batch}): nothing would train")
    if "images" not in state:  # the uncut model and the image encodings, measured once
        state["images"] = bl.measure_images(backbone.model, x, y, backbone.data_config)
        _write(out, state)
    base = bl.baselines(state["images"], total_macs, backbone.num_classes, config.budget, config.max_drop)
    callback("baselines", base)
    target = channel.condition_from_param(channel.param_range[1]) if channel.condition_name else None
    condition = channel.format_condition(target) if target is not None else "noiseless link"

    pool = [(p, r) for p in points for r in config.rates]
    plan = _plan(len(pool), config)
    callback("start", {"splits": [p["name"] for p in points], "rates": config.rates, "planned": sum(plan),
                       "rounds": plan, "condition": condition, "validation": source, "images": len(y)})
    done: dict[str, dict[str, Any]] = {m["name"]: m for m in state.get("candidates", [])}
    for m in done.values():  # measured under another budget, maybe: the latency is this one's
        m["latency_ms"] = latency_ms(m["device_macs"], m["bits_per_image"], m["edge_macs"], config.budget)
    measured: list[Measured] = [Measured(**m) for m in done.values()]
    skipped: dict[str, dict[str, Any]] = {s["name"]: s for s in state.get("skipped", [])}
    timing = _Timing()
    count = 0
    for r in range(config.rounds):
        images, epochs = round_budget(r, config.first_images, config.first_epochs, config.eta, train_images)
        this_round: list[Measured] = []
        for point, rate in pool:
            name = _name(point["name"], rate, config.bits_per_image, images, epochs)
            count += 1
            if name in skipped:
                continue
            if name in done:
                m = Measured(**done[name])
            else:
                started = time.perf_counter()
                callback("fit", {"name": name, "round": r, "images": images, "epochs": epochs, "done": count - 1,
                                 "planned": sum(plan)})
                try:
                    m = _measure(config, point, rate, r, images, epochs, name, out, val_path, target,
                                 total_macs, channel)
                except CodecError as e:
                    skipped[name] = {"name": name, "split": point["name"], "rate": rate, "reason": str(e)}
                    state["skipped"] = list(skipped.values())
                    _write(out, state)
                    continue
                timing.add(time.perf_counter() - started, m.fit_seconds, images * epochs)
                measured.append(m)
                done[name] = m.to_dict()
                state["candidates"] = list(done.values())
                _write(out, state)
            this_round.append(m)
            rec = recommend(latest(measured), [base["label_on_device"], base["image_to_edge"]], config.max_drop)
            callback("candidate", {"measured": m.to_dict(), "done": count, "planned": sum(plan),
                                   "best": rec["candidate"], "elapsed_s": time.perf_counter() - t0,
                                   "left_s": timing.left(plan, count, images * epochs, config.eta)})
        kept = promote(this_round, config.eta, config.max_drop)
        callback("round", {"round": r, "images": images, "epochs": epochs, "kept": [m.name for m in kept]})
        if not kept or r + 1 == config.rounds:
            break
        pool = [(next(p for p in points if p["name"] == m.split), m.rate) for m in kept]

    final = latest(measured)
    pool_names = {(p["name"], rate) for p in points for rate in config.rates}
    final = [m for m in final if (m.split, m.rate) in pool_names]
    rows = [m.to_dict() for m in final] + [base["label_on_device"], base["image_to_edge"]]
    result = SearchResult(
        out=str(out), model=config.backbone.model, channel=channel.name, condition=condition,
        validation={"source": source, "images": len(y), "backbone_top1": base["backbone_val_top1"],
                    "backbone_may_have_seen": not config.val_data and backbone.weights != "random"},
        splits=points, rates=list(config.rates), rate_unit="bits per image" if config.bits_per_image else "ratio",
        candidates=[m.to_dict() for m in measured], skipped=list(skipped.values()), final=[m.name for m in final],
        pareto=pareto(rows), baselines=base,
        recommendation=recommend(final, [base["label_on_device"], base["image_to_edge"]], config.max_drop),
        budget=asdict(config.budget), seconds=time.perf_counter() - t0,
    )
    _write(out, {**state, **result.to_dict(), "config": config.to_dict()})
    return result


def read_search(out: str | Path) -> SearchResult:
    """The summary of a finished search in ``out`` (for `bnpp profile --search DIR`, or a program)."""
    path = Path(out) / SEARCH_FILE
    if not path.is_file():
        raise RunError(f"'{out}' holds no bnpp search ({SEARCH_FILE} is missing)",
                       hint="run `bnpp search MODEL --data ... --out DIR` first")
    try:
        state = json.loads(path.read_text())
    except ValueError as e:
        raise RunError(f"'{path}' is not valid JSON: {e}") from None
    if not isinstance(state, dict) or state.get("status") != "done":
        raise RunError(f"the search in '{out}' has not finished (status {state.get('status')!r})",
                       hint="run the same `bnpp search` command again to finish it")
    if state.get("schema", 0) > SEARCH_SCHEMA:
        raise RunError(f"'{path}' has schema {state['schema']}, newer than this bnpp's ({SEARCH_SCHEMA})")
    names = {f.name for f in fields(SearchResult)}
    return SearchResult(**{k: v for k, v in state.items() if k in names})


def _check(c: SearchConfig) -> None:
    c.budget.validate()
    bad = [(k, v) for k, v in (("--eta", c.eta), ("--rounds", c.rounds), ("--first-images", c.first_images),
                               ("--first-epochs", c.first_epochs), ("--draws", c.draws),
                               ("--auto-splits", c.auto_splits)) if v < 1]
    bad += [("--eta", c.eta)] if c.eta < 2 else []
    bad += [("--max-drop", c.max_drop)] if not 0 <= c.max_drop < math.inf else []
    if bad:
        raise BnppError(f"{bad[0][0]} {bad[0][1]} is out of range",
                        hint="--eta >= 2; --rounds, --first-images, --first-epochs, --draws >= 1; --max-drop >= 0")
    if not c.rates:
        raise BnppError("no rates to try: give --ratios (or --bits-per-image) with at least one value")
    for rate in c.rates:
        rate_to_ratio(rate, 1, c.channel.bits if c.channel.build().digital else None, c.bits_per_image)


def _read_state(out: Path, config: SearchConfig) -> dict[str, Any]:
    """search.json of a search of the same model, data and channel (to resume), or a new state."""
    path = out / SEARCH_FILE
    if not path.is_file():
        if out.is_dir() and any(p.name not in ("candidates", VAL_FILE, FEATURES_DIR) for p in out.iterdir()):
            raise RunError(f"--out {out} holds files that are not a bnpp search's (no {SEARCH_FILE})",
                           hint="choose an empty or new directory")
        return {"schema": SEARCH_SCHEMA, "status": "running", "config": config.to_dict()}
    try:
        state = json.loads(path.read_text())
        saved = SearchConfig.from_dict(state["config"])
    except (ValueError, KeyError, TypeError, BnppError) as e:
        raise RunError(f"'{path}' is not a valid bnpp search summary: {str(e)[:200]}") from None
    mine, theirs = config.to_dict(), saved.to_dict()
    diff = [k for k in _SAME if mine[k] != theirs[k]]
    if diff:
        raise RunError(f"--out {out} holds a search with other {', '.join(diff)} "
                       f"({', '.join(f'{k} {theirs[k]!r}' for k in diff)})",
                       hint="give the same options to resume it, or another --out for a new search")
    state["config"] = config.to_dict()
    return state


def _write(out: Path, state: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / SEARCH_FILE, state)


def _splits(config: SearchConfig, traced, cumulative: dict[str, int], total_macs: int) -> list[dict[str, Any]]:
    """The candidate split points with their shapes and head MACs (per image)."""
    if config.splits:
        points = [traced.find(name) for name in config.splits]
    else:
        # conv maps (C, H, W): the feature kind every preset codes; the last point (the logits) is no split
        usable = [p for p in traced.list_points() if len(p.shape) == 3 and cumulative[p.node] < total_macs]
        names = choose_splits([p.name for p in usable], [cumulative[p.node] for p in usable], total_macs,
                              config.auto_splits)
        points = [p for p in usable if p.name in names]
    return [{"name": p.name, "shape": list(p.shape), "elements": p.elements, "head_macs": cumulative[p.node]}
            for p in points]


def _name(split: str, rate: float, per_image: bool, images: int, epochs: int) -> str:
    return f"{split}-{'b' if per_image else 'r'}{rate:g}-n{images}-e{epochs}"


def _measure(config: SearchConfig, point: dict[str, Any], rate: float, r: int, images: int, epochs: int,
             name: str, out: Path, val_path: str, target: float | None, total_macs: int, channel) -> Measured:
    """Fit one candidate (or reuse / resume its run), then measure it on the validation images."""
    ratio = rate_to_ratio(rate, point["elements"], channel.bits if channel.digital else None, config.bits_per_image)
    fit = FitConfig(backbone=config.backbone, split=point["name"], data=config.data,
                    out=str(out / "candidates" / name), channel=config.channel, ratio=ratio, preset=config.preset,
                    val_data=config.val_data, val_fraction=config.val_fraction, data_root=config.data_root,
                    limit=images, codec_epochs=epochs, batch_size=config.batch_size, augment=config.augment,
                    feature_cache=str(out / FEATURES_DIR) if _caching(config) else False,
                    device=config.device, seed=config.seed)
    t = fit_and_measure(fit, val_path, [target] if target is not None else None, config.draws)
    ev = t.evaluation
    top1 = ev.results[0]["top1_mean"] if ev.results else ev.noiseless_top1
    bits = ev.code_symbols * (ev.bits or 32)  # analog symbols as float32 on the wire
    device_macs = point["head_macs"] + t.encoder_macs
    edge_macs = total_macs - point["head_macs"] + t.decoder_macs
    return Measured(name=name, split=point["name"], rate=rate, round=r, images=images, epochs=epochs,
                    device_macs=device_macs, edge_macs=edge_macs, symbols=ev.code_symbols, bits_per_image=bits,
                    bandwidth_ratio=ev.bandwidth_ratio, val_top1=top1, val_drop=100 * (ev.backbone_top1 - top1),
                    fit_seconds=t.fit_seconds, run=t.run, features_s=t.features_s,
                    latency_ms=latency_ms(device_macs, bits, edge_macs, config.budget))


def _caching(config: SearchConfig) -> bool:
    """Does the search's fits use the feature cache (they can only without augmentation)?"""
    if config.feature_cache and config.augment:
        raise BnppError("--cache-features needs fixed inputs: it cannot be combined with --augment",
                        hint="add --no-augment")
    return config.feature_cache if config.feature_cache is not None else not config.augment


def _plan(n: int, config: SearchConfig) -> list[int]:
    """Candidates per round if every round keeps ceil(n / eta)."""
    plan = [n]
    for _ in range(config.rounds - 1):
        plan.append(max(1, math.ceil(plan[-1] / config.eta)))
    return plan


class _Timing:
    """Seconds left: this session's fits give seconds per image pass and per-candidate overhead."""

    def __init__(self):
        self.wall = self.fit = self.passes = 0.0
        self.n = 0

    def add(self, wall: float, fit: float, passes: int) -> None:
        self.wall, self.fit, self.passes, self.n = self.wall + wall, self.fit + fit, self.passes + passes, self.n + 1

    def left(self, plan: list[int], done: int, passes: int, eta: int) -> float | None:
        if not self.n or not self.passes:
            return None
        per_pass, overhead = self.fit / self.passes, (self.wall - self.fit) / self.n
        left, seen = 0.0, 0
        for r, k in enumerate(plan):
            remaining = max(0, min(k, seen + k - done))
            left += remaining * (overhead + per_pass * passes * eta ** max(0, r - _round_of(plan, done)))
            seen += k
        return left


def _round_of(plan: list[int], done: int) -> int:
    seen = 0
    for r, k in enumerate(plan):
        seen += k
        if done < seen:
            return r
    return len(plan) - 1
