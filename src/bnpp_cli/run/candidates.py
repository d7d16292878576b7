"""The search's arithmetic: which splits and rates to try, what each costs, which to keep, which wins.

    choose_splits(points, cumulative_macs, total_macs, k)   'auto': k split points spread over device MACs
    rate_to_ratio(rate, elements, bits)                      a rate as a bandwidth ratio for plan_codec
    unplannable(shape, layout, rates, preset, ...)           the rates the codec cannot plan at a split, and why
    choose_candidates(points, ...)                           the split points to search (an error when none)
    round_budget(r, ...)                                     images and epochs of halving round r
    promote(measured, eta, max_drop)                         who gets the next round's budget
    pareto(points)                                           non-dominated over (device MACs, bits, drop)
    recommend(final, baselines, max_drop)                    the fastest that learned within tolerance
    latency_ms(device_macs, bits, edge_macs, budget)         split.profile's formula
    round_sizes(n, rounds, eta), TimeLeft                    candidates per round, the seconds still to go

Plain numbers in, plain numbers out (no model, no data), so every rule is tested on its own; whether
a split point can be coded at a rate is the codec's own planning (codec.config.plan_codec) on its
shape and feature layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..codec.config import plan_codec
from ..errors import BnppError, CodecError
from ..split.graph import SplitPoint
from ..split.layouts import LAYOUT_KINDS, FeatureLayout
from ..split.profile import Budget


@dataclass
class Measured:
    """One fitted candidate measured on the validation images at the target condition."""

    name: str  # run directory name under DIR/candidates
    split: str
    rate: float  # as asked: a bandwidth ratio, or bits per image (digital --bits-per-image)
    round: int
    images: int  # training images of its fit
    epochs: int
    device_macs: int  # head + encoder, per image
    edge_macs: int  # decoder + tail, per image
    symbols: int  # real channel symbols per image sent at the target condition
    bits_per_image: float  # as evaluated (measure.sent_per_image): digital frames measured; analog 32 x symbols
    bandwidth_ratio: float
    val_top1: float  # mean over noise draws, at the target condition
    val_drop: float  # points of top-1 vs the uncut model on the same images
    fit_seconds: float
    latency_ms: float  # under the search's budget
    run: str  # the run directory: `bnpp eval` and `bnpp export` take it
    features_s: float = 0.0  # feature cache seconds (build and key) this candidate paid besides fit_seconds
    learned: bool = True  # run.checks.learned_check on its noiseless top-1 vs the uncut model's, same images
    learned_reason: str | None = None  # why not, when it did not learn

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def latency_ms(device_macs: float, bits: float, edge_macs: float, budget: Budget) -> float:
    """End-to-end latency as `bnpp profile` estimates it (split.profile): device compute, then the
    payload over the link, then edge compute; milliseconds."""
    return 1e3 * (device_macs / (budget.device_gmacs * 1e9) + bits / (budget.bandwidth_mbps * 1e6)
                  + edge_macs / (budget.edge_gmacs * 1e9))


def choose_splits(names: Sequence[str], macs: Sequence[int], total_macs: int, k: int) -> list[str]:
    """k points (in model order) nearest to the device-MAC fractions 1/k, 2/k, ..., 1 of the whole
    model: an even spread from early (cheap device, big feature) to late (the classic split)."""
    if k < 1:
        raise BnppError(f"--auto-splits {k} must be at least 1")
    chosen: list[int] = []
    for i in range(1, k + 1):
        target = total_macs * i / k
        free = [j for j in range(len(names)) if j not in chosen]
        if not free:
            break
        chosen.append(min(free, key=lambda j: (abs(macs[j] - target), -j)))
    return [names[j] for j in sorted(chosen)]


def rate_to_ratio(rate: float, elements: int, bits: int | None, per_image: bool) -> float:
    """The bandwidth ratio (elements / symbols) that plan_codec takes for one rate: a ratio as it
    is, or bits per image (digital channels) as elements x bits / rate."""
    if not rate > 0:
        raise BnppError(f"rate {rate:g} must be positive")
    if not per_image:
        return float(rate)
    if bits is None:
        raise BnppError("--bits-per-image needs a digital channel (bec, bsc)", hint="use --ratios for analog ones")
    return elements * bits / rate


def unplannable(shape: Sequence[int], layout: FeatureLayout, rates: Sequence[float], preset: str,
                bits: int | None, per_image: bool) -> dict[float, str]:
    """{rate: why} for each rate at which plan_codec plans no codec for a feature of ``shape`` in
    ``layout`` (nchw, nhwc, tokens, vector; split.layouts) with ``preset``; ``bits`` per symbol on a
    digital channel (None on analog ones) turns bits per image into a ratio."""
    elements = math.prod(int(s) for s in shape)
    why: dict[float, str] = {}
    for rate in rates:
        try:
            plan_codec(tuple(int(s) for s in shape), layout=layout, preset=preset,
                       ratio=rate_to_ratio(rate, elements, bits, per_image))
        except CodecError as e:
            why[rate] = str(e)
    return why


def choose_candidates(points: Sequence[SplitPoint], head_macs: Sequence[int], total_macs: int,
                      rates: Sequence[float], preset: str, bits: int | None, per_image: bool, auto: int | None,
                      model: str) -> tuple[list[SplitPoint], dict[str, dict[float, str]]]:
    """(the points to search, {point: {rate: why}} for the rates the codec cannot plan there).

    A point is a candidate when the codec plans it at one rate at least (``unplannable``); ``auto``
    k: k of those spread over device MACs (``choose_splits``), None: all of them. None left: a
    BnppError naming the model and why."""
    why = {p.name: unplannable(p.shape, p.require_layout(), rates, preset, bits, per_image) for p in points}
    codable = [i for i, p in enumerate(points) if len(why[p.name]) < len(rates)]
    if not points:
        raise BnppError(f"{model}: no split point has a feature layout the codec plans ({', '.join(LAYOUT_KINDS)}), "
                        "so there is nothing to search",
                        hint=f"`bnpp profile {model}` shows each point's layout, or why it is unknown")
    if not codable:
        split, reasons = next(iter(why.items()))
        unit = "bits per image" if per_image else "ratios"
        raise BnppError(f"{model}: the {preset} codec cannot be planned at any of the {len(points)} split points for "
                        f"{unit} {', '.join(f'{r:g}' for r in rates)} (e.g. {split}: {next(iter(reasons.values()))})",
                        hint="try other rates, or other --splits (see `bnpp profile`)")
    chosen = [points[i] for i in codable]
    if auto is not None:
        names = choose_splits([p.name for p in chosen], [head_macs[i] for i in codable], total_macs, auto)
        chosen = [p for p in chosen if p.name in names]
    return chosen, {p.name: why[p.name] for p in chosen}


def round_budget(r: int, first_images: int, first_epochs: int, eta: int, train_images: int) -> tuple[int, int]:
    """(images, epochs) of round r: eta^r times round 0's image passes, more images first, then
    more epochs once all training images are in."""
    passes = first_images * first_epochs * eta ** r
    images = min(train_images, first_images * eta ** r)
    return images, max(first_epochs, math.ceil(passes / images))


def promote(measured: Sequence[Measured], eta: int, max_drop: float) -> list[Measured]:
    """Successive halving under a constraint: keep about 1/eta of a round's candidates.

    The fastest candidate within the tolerance (the recommendation so far) is kept to be confirmed
    by a longer fit; the rest of the places go to candidates FASTER than it (over the tolerance now,
    but a longer fit lowers the drop), those with the lowest drop first. Slower ones cannot become
    the recommendation and get no more budget. With none within tolerance (a candidate that did not
    learn never is), the lowest drops go on."""
    if not measured:
        return []
    keep = max(1, math.ceil(len(measured) / eta))
    ok = [m for m in measured if m.val_drop <= max_drop and m.learned]
    by_drop = sorted(measured, key=lambda m: (m.val_drop, m.latency_ms))
    if not ok:
        return by_drop[:keep]
    best = min(ok, key=lambda m: (m.latency_ms, m.val_drop))
    faster = [m for m in by_drop if m.latency_ms < best.latency_ms]
    return [best] + faster[:keep - 1]


def pareto(points: Sequence[dict[str, Any]]) -> list[str]:
    """Names of the points no other point beats or equals on all of (device_macs, bits_per_image,
    val_drop) while beating it on one (lower is better on each)."""
    keys = ("device_macs", "bits_per_image", "val_drop")

    def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return all(a[k] <= b[k] for k in keys) and any(a[k] < b[k] for k in keys)

    return [p["name"] for p in points if not any(dominates(o, p) for o in points if o is not p)]


def latest(measured: Sequence[Measured]) -> list[Measured]:
    """Each candidate (split, rate) once: its measurement with the largest fit (the latest round)."""
    best: dict[tuple[str, float], Measured] = {}
    for m in measured:
        key = (m.split, m.rate)
        if key not in best or (m.round, m.images * m.epochs) > (best[key].round, best[key].images * best[key].epochs):
            best[key] = m
    return list(best.values())


def recommend(final: Sequence[Measured], baselines: Sequence[dict[str, Any]], max_drop: float,
              too_small: str = "no candidate learned at its budget") -> dict[str, Any]:
    """The fastest candidate that learned and whose measured validation drop is within ``max_drop``
    (never one over it, never one that did not learn), and whether a baseline (label on device, image
    to edge) within tolerance is faster still. When no candidate learned, nothing is recommended: the
    budget was too small to measure any split (``too_small`` says so, naming the options to raise),
    and a baseline winning against untrained codecs would be no answer."""
    ok = sorted((m for m in final if m.val_drop <= max_drop and m.learned), key=lambda m: (m.latency_ms, m.val_drop))
    rec = ok[0] if ok else None
    fits = [b for b in baselines if b["val_drop"] <= max_drop]
    fastest_baseline = min(fits, key=lambda b: b["latency_ms"]) if fits else None
    out: dict[str, Any] = {"max_drop": max_drop, "candidate": None, "winner": None, "note": "",
                           "budget_too_small": bool(final) and not any(m.learned for m in final)}
    if out["budget_too_small"]:
        out["note"] = too_small
        return out
    if rec is not None:
        out["candidate"] = {"split": rec.split, "rate": rec.rate, "bandwidth_ratio": rec.bandwidth_ratio,
                            "device_macs": rec.device_macs, "bits_per_image": rec.bits_per_image,
                            "symbols": rec.symbols, "val_drop": rec.val_drop, "latency_ms": rec.latency_ms,
                            "run": rec.run, "name": rec.name, "learned": rec.learned}
    if rec is not None and (fastest_baseline is None or rec.latency_ms <= fastest_baseline["latency_ms"]):
        out["winner"] = rec.name
        out["note"] = (f"split at {rec.split}, rate {rec.rate:g}: {rec.latency_ms:.3f} ms, "
                       f"validation drop {rec.val_drop:.2f} points (<= {max_drop:g})")
    elif fastest_baseline is not None:
        out["winner"] = fastest_baseline["name"]
        beaten = (f"; the fastest split within tolerance, {rec.split} at rate {rec.rate:g}, takes "
                  f"{rec.latency_ms:.3f} ms" if rec is not None else "; no split candidate is within tolerance")
        out["note"] = (f"the {fastest_baseline['name']} baseline wins under this budget: "
                       f"{fastest_baseline['latency_ms']:.3f} ms{beaten}")
    else:
        out["note"] = f"no candidate is within --max-drop {max_drop:g} points"
    return out


def round_sizes(n: int, rounds: int, eta: int) -> list[int]:
    """Candidates per round if every round keeps ceil(n / eta)."""
    plan = [n]
    for _ in range(rounds - 1):
        plan.append(max(1, math.ceil(plan[-1] / eta)))
    return plan


class TimeLeft:
    """Seconds left: the fits so far give seconds per image pass and per-candidate overhead."""

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
