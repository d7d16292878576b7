"""`bnpp search`: recommend the split AND the rate from measured accuracy, not an assumed ratio.

    search_split_rate(SearchConfig) -> SearchResult      read_search(DIR) -> SearchResult (finished)
      the options and the fits' own checks (the preset over the channel), before anything is loaded
      -> trace the model, count each split's MACs -> the candidate split points: every point whose
      feature layout (nchw, nhwc, tokens, vector; split.layouts) the codec plans at the rates
      (codec.config.plan_codec), none: an error -> the study (run.study: DIR/study.journal, or
      --storage) -> the validation images (those every fit holds out) -> baselines on them (label on
      device, image to edge) -> the rounds (run.rungs): round 0 fits every (split, rate) at a short
      budget, round r the ~1/eta that round r - 1 promoted (candidates.promote) at eta^r times it, each
      fit claimed by one worker and measured on the validation images at the target condition
      -> the Pareto set and the recommendation (the fastest that learned within --max-drop, never
      one over it) -> DIR/search.json

    DIR/study.journal             THE search's state: the Optuna study (unless --storage names another)
    DIR/search.json               the summary of the finished search (what `bnpp profile --search` reads)
    DIR/val.npz                   the validation images (when they are held out of --data)
    DIR/candidates/NAME/          each candidate is a bnpp run: `bnpp eval` and `bnpp export` take it
    DIR/features/                 the frozen head's features and teacher logits (run.features), when the
                                  fits run without augmentation: computed once per split and images

A worker is any process that runs the same search on the same storage: start the command again
(here or on another machine, with --storage) and the workers split the fits; run it again after an
interruption and it picks up where the study stopped (a fit stopped half way resumes from its
checkpoint). The library never prints: progress goes to the callback ("measuring", "baselines",
"start", "fit", "candidate", "wait", "lost", "round").
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
from ..errors import BnppError, RunError
from ..files import write_json
from ..link.config import ChannelConfig
from ..split.backbone import Backbone, BackboneConfig, load_backbone
from ..split.graph import TracedModel, trace_model
from ..split.macs import node_macs
from ..split.profile import Budget
from . import baselines as bl
from .candidates import choose_candidates, rate_to_ratio
from .fit import check_fit_inputs, resolve_recipe
from .rundir import RunDir
from .rungs import CANDIDATES_DIR, FEATURES_DIR, Rungs, candidate_name, fit_config
from .study import STUDY_FILE, SearchStudy, check_storage, hide_password, open_storage

SEARCH_FILE = "search.json"
VAL_FILE = "val.npz"
SEARCH_SCHEMA = 2  # 1: before the study (search.json was the state); still read by read_search
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
            candidates and by the workers that share DIR).
        draws: noise draws per measurement; default 2 (the drop's spread is a few tenths at 2,500
            images).
        device: torch device; default "cpu".
        seed: seed of every random draw; default 0.
        storage: the study's storage; default None: DIR/study.journal. An RDB URL (postgresql://,
            mysql://, sqlite:///) or journal:PATH on a shared filesystem lets workers on many machines
            share one search.
        study: the study's name in the storage; default "bnpp-search" (one storage can hold many).
        poll_s: seconds a worker waits between looks at the study while others finish a round;
            default 2.0.
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
    storage: str | None = None  # None: DIR/study.journal; an RDB URL or journal:PATH for many machines
    study: str = "bnpp-search"  # one storage holds many studies
    poll_s: float = 2.0  # a waiting worker looks at the study this often: seconds against fits of minutes

    def to_dict(self) -> dict[str, Any]:
        return configs.to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchConfig":
        return configs.from_dict(cls, d)


# what a candidate's name means: a study refuses a worker that changes one of these
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
    candidates: list[dict[str, Any]]  # every measurement, every round (each with ``learned``)
    skipped: list[dict[str, Any]]  # candidates a codec cannot be planned for, with the reason
    final: list[str]  # each (split, rate) once: its longest fit
    pareto: list[str]  # over (device MACs, bits, drop), baselines included, candidates that learned only
    baselines: dict[str, Any]
    recommendation: dict[str, Any]
    budget: dict[str, Any]
    seconds: float
    status: str = "done"
    schema: int = SEARCH_SCHEMA
    study: dict[str, Any] = field(default_factory=dict)  # storage (password hidden), name, trials by state

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _noop(event: str, info: dict[str, Any]) -> None:
    pass


def search_split_rate(config: SearchConfig, callback: Callback = _noop) -> SearchResult:
    """Short fits of every (split, rate), more budget to the promising, measured on validation images.

    Refused before anything is built or written: bad options, a preset that cannot be fitted over
    the channel (the checks every candidate's fit makes), a search directory made before searches
    were Optuna studies, and a model with no split point the codec can plan at the rates (BnppError
    naming the model and why)."""
    t0 = time.perf_counter()
    _check(config)
    out = Path(config.out)
    _check_out(out, config)
    model = _load_model(config)
    channel = config.channel.build()
    points, skipped = _candidates(config, model, channel.bits_per_element)
    out.mkdir(parents=True, exist_ok=True)
    study = SearchStudy(open_storage(config.storage, out), config.study, config.to_dict(), _SAME,
                        _where(config))
    val = _validation(config, model, out, study, callback)
    base = bl.baselines(study.get_attr("images"), model.total_macs, model.backbone.num_classes, config.budget,
                        config.max_drop)
    callback("baselines", base)
    rungs = Rungs(config, out, study, model, channel, points, val, base, callback, t0)
    rungs.skipped.update(skipped)
    rungs.run()
    result = rungs.result()
    result.study = {"storage": _where(config), "name": config.study, **study.counts()}
    _write(out, {**result.to_dict(), "config": config.to_dict()})
    return result


def read_search(out: str | Path) -> SearchResult:
    """The summary of a finished search in ``out`` (for `bnpp profile --search DIR`, or a program);
    a summary written before searches were studies (schema 1) reads too."""
    path = Path(out) / SEARCH_FILE
    if not path.is_file():
        hint = ("the search has not finished: run the same `bnpp search` command again to finish it"
                if (Path(out) / STUDY_FILE).is_file() else "run `bnpp search MODEL --data ... --out DIR` first")
        raise RunError(f"'{out}' holds no bnpp search summary ({SEARCH_FILE} is missing)", hint=hint)
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


def _where(config: SearchConfig) -> str:
    return hide_password(config.storage) if config.storage else str(Path(config.out) / STUDY_FILE)


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
    if not c.study.strip():
        raise BnppError("--study '' is empty: give the study a name (default bnpp-search)")
    check_storage(c.storage)
    if not c.rates:
        raise BnppError("no rates to try: give --ratios (or --bits-per-image) with at least one value")
    bits = c.channel.build().bits_per_element  # validates the channel; None on analog ones
    for rate in c.rates:
        rate_to_ratio(rate, 1, bits, c.bits_per_image)
    fit = _checked_fit(c)
    if c.first_images < fit.batch_size:
        raise BnppError(f"--first-images {c.first_images} is fewer than a batch ({fit.batch_size}): nothing would train")


def _checked_fit(c: SearchConfig):
    """The fit every candidate runs, less its split and ratio (planned per candidate), with the
    preset's recipe filled in, through the fit's own checks. Its directory is one that no candidate
    has and nothing creates, so the output-directory check finds it new."""
    fit = resolve_recipe(fit_config(c, Path(c.out) / CANDIDATES_DIR / ".check", split="", ratio=None,
                                    images=c.first_images, epochs=c.first_epochs))
    check_fit_inputs(fit, RunDir(fit.out))
    return fit


_OURS = (CANDIDATES_DIR, VAL_FILE, FEATURES_DIR, SEARCH_FILE)


def _check_out(out: Path, config: SearchConfig) -> None:
    """--out: new, empty, or a search's directory (a study's, or a summary beside a --storage study).
    A search made before searches were studies (search.json schema 1 was its state, no study) is
    taken up when it searched the same model, data and channel (_SAME): its finished candidate runs
    are reused as they are, measured again into the new study; with other options it is refused,
    naming them, as a study refuses a worker."""
    if not out.is_dir():
        return
    summary, journal = out / SEARCH_FILE, out / STUDY_FILE
    if summary.is_file() and not journal.exists() and config.storage is None:
        try:
            old = json.loads(summary.read_text())
            schema, saved = old.get("schema", 0), SearchConfig.from_dict(old["config"])
        except (ValueError, AttributeError, KeyError, TypeError, BnppError) as e:
            raise RunError(f"--out {out}: '{summary}' is not a bnpp search summary this bnpp reads ({str(e)[:120]})",
                           hint="give another --out to search again") from None
        mine, theirs = config.to_dict(), saved.to_dict()
        diff = [k for k in _SAME if mine[k] != theirs[k]]
        if schema < SEARCH_SCHEMA and diff:
            raise RunError(f"--out {out} holds a search made by an older bnpp (search.json schema {schema}, no "
                           f"{STUDY_FILE}) with other {', '.join(diff)} "
                           f"({', '.join(f'{k} {theirs[k]!r}' for k in diff)})",
                           hint="give its options to take it up (its fits are reused), or another --out")
    foreign = [p.name for p in out.iterdir() if p.name not in _OURS and not p.name.startswith(STUDY_FILE)]
    if foreign:
        raise RunError(f"--out {out} holds files that are not a bnpp search's ({', '.join(sorted(foreign)[:3])})",
                       hint="choose an empty or new directory")


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
            name = candidate_name(p.name, rate, config.bits_per_image, config.first_images, config.first_epochs)
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


def _validation(config: SearchConfig, model: _Model, out: Path, study: SearchStudy, callback: Callback) -> _Validation:
    """The validation images (written as DIR/val.npz when held out of --data), and the uncut model's
    and the image encodings' figures on them (measured by the first worker, kept in the study)."""
    b = model.backbone
    x, y, classes, source, train_images = bl.validation_images(
        config.data, config.val_data, config.val_fraction, config.seed, tuple(b.input_size[1:]), b.num_classes,
        config.data_root)
    if not config.val_data and not (out / VAL_FILE).is_file():
        bl.write_images_npz(out / VAL_FILE, x, y, classes)
    if study.get_attr("images") is None:
        callback("measuring", {"images": len(y), "qualities": list(bl.JPEG_QUALITIES)})
        study.set_attr("images", bl.measure_images(b.model, x, y, b.data_config))
    return _Validation(config.val_data or str(out / VAL_FILE), source, len(y), train_images)
