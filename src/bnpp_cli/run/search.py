"""`bnpp search`: recommend the split AND the rate from measured accuracy, not an assumed ratio.

    search_split_rate(SearchConfig) -> SearchResult      read_search(DIR) -> SearchResult (finished)
      the options and the fits' own checks (the preset over the channel), before anything is loaded
      -> trace the model, count each split's MACs -> the candidate split points: every point whose
      feature layout (nchw, nhwc, tokens, vector; split.layouts) the codec plans at the rates
      (codec.config.plan_codec), none: an error -> the validation images (those every fit holds out)
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
from ..errors import BnppError, CodecError, RunError
from ..files import write_json
from ..link.config import ChannelConfig
from ..split.backbone import Backbone, BackboneConfig, load_backbone
from ..split.graph import TracedModel, trace_model
from ..split.macs import node_macs
from ..split.profile import Budget
from . import baselines as bl
from .candidates import (Measured, TimeLeft, choose_candidates, latest, latency_ms, pareto, promote, rate_to_ratio,
                         recommend, round_budget, round_sizes)
from .config import FitConfig
from .fit import check_fit_inputs, resolve_recipe
from .measure import fit_and_measure, sent_per_image
from .rundir import RunDir

SEARCH_FILE = "search.json"
CANDIDATES_DIR = "candidates"  # one bnpp run per candidate
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
    splits: list[dict[str, Any]]  # name, shape, layout (split.layouts), elements, head MACs
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
    """Short fits of every (split, rate), more budget to the promising, measured on validation images.

    Refused before anything is built or written: bad options, a preset that cannot be fitted over
    the channel (the checks every candidate's fit makes), and a model with no split point the codec
    can plan at the rates (BnppError naming the model and why)."""
    t0 = time.perf_counter()
    _check(config)
    out = Path(config.out)
    state = _read_state(out, config)
    model = _load_model(config)
    channel = config.channel.build()
    points, skipped = _candidates(config, model, channel.bits_per_element)
    val = _validation(config, model, out, state)
    base = bl.baselines(state["images"], model.total_macs, model.backbone.num_classes, config.budget,
                        config.max_drop)
    callback("baselines", base)
    search = _Halving(config, out, state, model, channel, points, val, base, callback, t0)
    search.skipped.update(skipped)
    search.run()
    result = search.result()
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
    """The search's own options, then the checks every candidate's fit makes before it builds
    anything (run.fit.check_fit_inputs: numbers, paths, the device, the channel, the feature cache,
    and the preset's code over the channel), once, before a model is loaded."""
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
    bits = c.channel.build().bits_per_element  # validates the channel; None on analog ones
    for rate in c.rates:
        rate_to_ratio(rate, 1, bits, c.bits_per_image)
    fit = _checked_fit(c)
    if c.first_images < fit.batch_size:
        raise BnppError(f"--first-images {c.first_images} is fewer than a batch ({fit.batch_size}): nothing would train")


def _checked_fit(c: SearchConfig) -> FitConfig:
    """The fit every candidate runs, less its split and ratio (planned per candidate), with the
    preset's recipe filled in, through the fit's own checks. Its directory is one that no candidate
    has and nothing creates, so the output-directory check finds it new."""
    fit = resolve_recipe(_fit_config(c, Path(c.out) / CANDIDATES_DIR / ".check", split="", ratio=None,
                                     images=c.first_images, epochs=c.first_epochs))
    check_fit_inputs(fit, RunDir(fit.out))
    return fit


def _read_state(out: Path, config: SearchConfig) -> dict[str, Any]:
    """search.json of a search of the same model, data and channel (to resume), or a new state."""
    path = out / SEARCH_FILE
    if not path.is_file():
        if out.is_dir() and any(p.name not in (CANDIDATES_DIR, VAL_FILE, FEATURES_DIR) for p in out.iterdir()):
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


@dataclass
class _Model:
    """The backbone, traced, with the MACs per image up to each graph node (the head's at a split)."""

    backbone: Backbone
    traced: TracedModel
    cumulative: dict[str, int]
    total_macs: int


def _load_model(config: SearchConfig) -> _Model:
    torch.manual_seed(config.seed)
    backbone = load_backbone(config.backbone)
    traced = trace_model(backbone.model, backbone.input_size, config.backbone.model)
    per_node = node_macs(traced.graph_module, torch.zeros(1, *backbone.input_size))
    cumulative, running = {}, 0
    for n in traced.graph_module.graph.nodes:
        running += per_node.get(n.name, 0)
        cumulative[n.name] = running
    return _Model(backbone, traced, cumulative, running)


def _candidates(config: SearchConfig, model: _Model, bits: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The split points to search, with their shapes, layouts and head MACs (per image), and the
    (split, rate) pairs the codec cannot plan (skipped, with why): --splits as given (a point whose
    layout the model does not settle is refused), or 'auto' over every point whose layout is known,
    the last one (the logits) excluded (candidates.choose_candidates)."""
    if config.splits:
        points = [model.traced.find(name) for name in config.splits]
        for p in points:
            p.require_layout()
    else:
        points = [p for p in model.traced.list_points()
                  if p.layout is not None and model.cumulative[p.node] < model.total_macs]
    chosen, why = choose_candidates(points, [model.cumulative[p.node] for p in points], model.total_macs,
                                    config.rates, config.preset, bits, config.bits_per_image,
                                    None if config.splits else config.auto_splits, config.backbone.model)
    skipped = {}
    for p in chosen:
        for rate, reason in why[p.name].items():
            name = _name(p.name, rate, config.bits_per_image, config.first_images, config.first_epochs)
            skipped[name] = {"name": name, "split": p.name, "rate": rate, "reason": reason}
    rows = [{"name": p.name, "shape": list(p.shape), "layout": p.layout.describe(), "elements": p.elements,
             "head_macs": model.cumulative[p.node]} for p in chosen]
    return rows, skipped


@dataclass
class _Validation:
    path: str  # the images as `bnpp eval` reads them (--val-data, or DIR/val.npz)
    source: str  # where they come from, in words
    images: int
    train_images: int  # what a fit trains on once they are held out


def _validation(config: SearchConfig, model: _Model, out: Path, state: dict[str, Any]) -> _Validation:
    """The validation images (written as DIR/val.npz when held out of --data), and the uncut model's
    and the image encodings' figures on them (measured once, kept in the state)."""
    b = model.backbone
    x, y, classes, source, train_images = bl.validation_images(
        config.data, config.val_data, config.val_fraction, config.seed, tuple(b.input_size[1:]), b.num_classes,
        config.data_root)
    if not config.val_data and not (out / VAL_FILE).is_file():
        bl.write_images_npz(out / VAL_FILE, x, y, classes)
    if "images" not in state:
        state["images"] = bl.measure_images(b.model, x, y, b.data_config)
        _write(out, state)
    return _Validation(config.val_data or str(out / VAL_FILE), source, len(y), train_images)


def _name(split: str, rate: float, per_image: bool, images: int, epochs: int) -> str:
    return f"{split}-{'b' if per_image else 'r'}{rate:g}-n{images}-e{epochs}"


def _fit_config(config: SearchConfig, out: Path, split: str, ratio: float | None, images: int,
                epochs: int) -> FitConfig:
    """A candidate's fit: the search's backbone, data, channel, preset and recipe at one split and ratio."""
    return FitConfig(backbone=config.backbone, split=split, data=config.data, out=str(out), channel=config.channel,
                     ratio=ratio, preset=config.preset, val_data=config.val_data, val_fraction=config.val_fraction,
                     data_root=config.data_root, limit=images, codec_epochs=epochs, batch_size=config.batch_size,
                     augment=config.augment,
                     feature_cache=str(Path(config.out) / FEATURES_DIR) if _caching(config) else False,
                     device=config.device, seed=config.seed)


def _caching(config: SearchConfig) -> bool:
    """Do the search's fits share the feature cache? Asked: as asked (a fit refuses it with
    augmentation); by default, whenever they do not augment."""
    return config.feature_cache if config.feature_cache is not None else not config.augment


class _Halving:
    """Successive halving over (split, rate): round r fits what round r - 1 kept at eta^r times round 0's
    budget; finished fits (and their measurements) are reused, every new one is written to the state."""

    def __init__(self, config: SearchConfig, out: Path, state: dict[str, Any], model: _Model, channel,
                 points: list[dict[str, Any]], val: _Validation, base: dict[str, Any], callback: Callback, t0: float):
        self.config, self.out, self.state, self.model, self.channel = config, out, state, model, channel
        self.points, self.val, self.base, self.callback, self.t0 = points, val, base, callback, t0
        self.target = channel.condition_from_param(channel.param_range[1]) if channel.condition_name else None
        self.condition = channel.format_condition(self.target) if self.target is not None else "noiseless link"
        self.done: dict[str, dict[str, Any]] = {m["name"]: m for m in state.get("candidates", [])}
        for m in self.done.values():  # measured under another budget, maybe: the latency is this one's
            m["latency_ms"] = latency_ms(m["device_macs"], m["bits_per_image"], m["edge_macs"], config.budget)
        self.measured = [Measured(**m) for m in self.done.values()]
        self.skipped: dict[str, dict[str, Any]] = {s["name"]: s for s in state.get("skipped", [])}
        self.timing = TimeLeft()
        self.count = 0
        self.plan: list[int] = []

    @property
    def _baselines(self) -> list[dict[str, Any]]:
        return [self.base["label_on_device"], self.base["image_to_edge"]]

    def run(self) -> None:
        """Every round, each keeping ~1/eta of its candidates for the next."""
        c = self.config
        pool = [(p, r) for p in self.points for r in c.rates
                if _name(p["name"], r, c.bits_per_image, c.first_images, c.first_epochs) not in self.skipped]
        self.plan = round_sizes(len(pool), c.rounds, c.eta)
        self.callback("start", {"splits": [p["name"] for p in self.points], "rates": c.rates, "planned": sum(self.plan),
                                "rounds": self.plan, "condition": self.condition, "validation": self.val.source,
                                "images": self.val.images})
        for r in range(c.rounds):
            images, epochs = round_budget(r, c.first_images, c.first_epochs, c.eta, self.val.train_images)
            this_round = [m for point, rate in pool if (m := self._candidate(point, rate, r, images, epochs))]
            kept = promote(this_round, c.eta, c.max_drop)
            self.callback("round", {"round": r, "images": images, "epochs": epochs, "kept": [m.name for m in kept]})
            if not kept or r + 1 == c.rounds:
                break
            pool = [(next(p for p in self.points if p["name"] == m.split), m.rate) for m in kept]
        if not self.measured:
            reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in self.skipped.values())
            raise BnppError(f"{c.backbone.model}: no candidate could be fitted ({reasons[:300]})",
                            hint="try other rates or --splits (see `bnpp profile`)")

    def _candidate(self, point: dict[str, Any], rate: float, r: int, images: int, epochs: int) -> Measured | None:
        """One (split, rate) at round r's budget: its measurement, reused or fitted now (None: skipped)."""
        c = self.config
        name = _name(point["name"], rate, c.bits_per_image, images, epochs)
        self.count += 1
        if name in self.skipped:
            return None
        if name in self.done:
            m = Measured(**self.done[name])
        else:
            m = self._fit(point, rate, r, images, epochs, name)
            if m is None:
                return None
        rec = recommend(latest(self.measured), self._baselines, c.max_drop)
        self.callback("candidate", {"measured": m.to_dict(), "done": self.count, "planned": sum(self.plan),
                                    "best": rec["candidate"], "elapsed_s": time.perf_counter() - self.t0,
                                    "left_s": self.timing.left(self.plan, self.count, images * epochs, c.eta)})
        return m

    def _fit(self, point: dict[str, Any], rate: float, r: int, images: int, epochs: int, name: str) -> Measured | None:
        """Fit and measure one candidate now, and write it to the state (a CodecError: skipped, with why)."""
        started = time.perf_counter()
        self.callback("fit", {"name": name, "round": r, "images": images, "epochs": epochs, "done": self.count - 1,
                              "planned": sum(self.plan)})
        try:
            m = _measure(self.config, point, rate, r, images, epochs, name, self.out, self.val.path, self.target,
                         self.model.total_macs, self.channel.bits_per_element)
        except CodecError as e:
            self.skipped[name] = {"name": name, "split": point["name"], "rate": rate, "reason": str(e)}
            self.state["skipped"] = list(self.skipped.values())
            _write(self.out, self.state)
            return None
        self.timing.add(time.perf_counter() - started, m.fit_seconds, images * epochs)
        self.measured.append(m)
        self.done[name] = m.to_dict()
        self.state["candidates"] = list(self.done.values())
        _write(self.out, self.state)
        return m

    def result(self) -> SearchResult:
        """Each (split, rate) of this search at its longest fit, the Pareto set and the recommendation."""
        c, base = self.config, self.base
        names = {(p["name"], rate) for p in self.points for rate in c.rates}
        final = [m for m in latest(self.measured) if (m.split, m.rate) in names]
        rows = [m.to_dict() for m in final] + self._baselines
        b = self.model.backbone
        return SearchResult(
            out=str(self.out), model=c.backbone.model, channel=self.channel.name, condition=self.condition,
            validation={"source": self.val.source, "images": self.val.images, "backbone_top1": base["backbone_val_top1"],
                        "backbone_may_have_seen": not c.val_data and b.weights != "random"},
            splits=self.points, rates=list(c.rates), rate_unit="bits per image" if c.bits_per_image else "ratio",
            candidates=[m.to_dict() for m in self.measured], skipped=list(self.skipped.values()),
            final=[m.name for m in final], pareto=pareto(rows), baselines=base,
            recommendation=recommend(final, self._baselines, c.max_drop), budget=asdict(c.budget),
            seconds=time.perf_counter() - self.t0)


def _measure(config: SearchConfig, point: dict[str, Any], rate: float, r: int, images: int, epochs: int,
             name: str, out: Path, val_path: str, target: float | None, total_macs: int,
             bits: int | None) -> Measured:
    """Fit one candidate (or reuse / resume its run), then measure it on the validation images."""
    ratio = rate_to_ratio(rate, point["elements"], bits, config.bits_per_image)
    fit = _fit_config(config, out / CANDIDATES_DIR / name, point["name"], ratio, images, epochs)
    t = fit_and_measure(fit, val_path, [target] if target is not None else None, config.draws)
    ev = t.evaluation
    top1 = ev.results[0]["top1_mean"] if ev.results else ev.noiseless_top1
    symbols, sent = sent_per_image(ev)
    device_macs = point["head_macs"] + t.encoder_macs
    edge_macs = total_macs - point["head_macs"] + t.decoder_macs
    return Measured(name=name, split=point["name"], rate=rate, round=r, images=images, epochs=epochs,
                    device_macs=device_macs, edge_macs=edge_macs, symbols=symbols, bits_per_image=sent,
                    bandwidth_ratio=ev.bandwidth_ratio, val_top1=top1, val_drop=100 * (ev.backbone_top1 - top1),
                    fit_seconds=t.fit_seconds, run=t.run, features_s=t.features_s,
                    latency_ms=latency_ms(device_macs, sent, edge_macs, config.budget))
