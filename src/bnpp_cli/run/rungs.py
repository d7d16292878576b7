"""The search's budget schedule: successive halving as a rung scheduler over the shared study.

    Rungs(config, out, study, ...).run()   round by round: queue the round's candidates in the study,
                                           claim and fit them (any number of workers), wait for the
                                           round to settle, promote ~1/eta (candidates.promote)
    Rungs.result()                          each (split, rate) at its longest fit, the Pareto set over
                                           the candidates that learned and the baselines, the recommendation

Why a rung scheduler and not Optuna's pruners (SuccessiveHalvingPruner, HyperbandPruner): those
rank trials on one reported value and promote asynchronously (ASHA), as each trial reaches a rung.
The search's promotion is a rule under a constraint (the fastest candidate within --max-drop, then
the faster ones by drop; candidates.promote), over three objectives, and an asynchronous promotion
would make the recommendation depend on how many workers ran and in which order they finished. A
round here starts when the round before it has settled (every candidate measured or skipped), so
one worker and many find the same candidates, fit each once and recommend the same one; workers
with nothing left to claim wait at the rung (the "wait" event) while the others finish.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BnppError, CodecError
from .candidates import (Measured, TimeLeft, latest, latency_ms, pareto, promote, rate_to_ratio, recommend,
                         round_budget, round_sizes)
from .checks import learned_check
from .config import FitConfig
from .measure import fit_and_measure, sent_per_image
from .rundir import RunDir
from .study import Claim, SearchStudy

if TYPE_CHECKING:
    from .search import SearchConfig, SearchResult

CANDIDATES_DIR = "candidates"  # one bnpp run per candidate
FEATURES_DIR = "features"  # the feature cache's entries (run.features), one per split and images


def candidate_name(split: str, rate: float, per_image: bool, images: int, epochs: int) -> str:
    return f"{split}-{'b' if per_image else 'r'}{rate:g}-n{images}-e{epochs}"


def fit_config(config: "SearchConfig", out: Path, split: str, ratio: float | None, images: int,
               epochs: int) -> FitConfig:
    """A candidate's fit: the search's backbone, data, channel, preset and recipe at one split and ratio."""
    return FitConfig(backbone=config.backbone, split=split, data=config.data, out=str(out), channel=config.channel,
                     ratio=ratio, preset=config.preset, val_data=config.val_data, val_fraction=config.val_fraction,
                     data_root=config.data_root, limit=images, codec_epochs=epochs, batch_size=config.batch_size,
                     augment=config.augment,
                     feature_cache=str(Path(config.out) / FEATURES_DIR) if _caching(config) else False,
                     device=config.device, seed=config.seed)


def _caching(config: "SearchConfig") -> bool:
    """Do the search's fits share the feature cache? Asked: as asked (a fit refuses it with
    augmentation); by default, whenever they do not augment."""
    return config.feature_cache if config.feature_cache is not None else not config.augment


class Rungs:
    """Successive halving over (split, rate) on the study: round r fits what round r - 1 kept at eta^r
    times round 0's budget; a fit the study holds (by any worker, in any earlier run) is reused."""

    def __init__(self, config: "SearchConfig", out: Path, study: SearchStudy, model, channel,
                 points: list[dict[str, Any]], val, base: dict[str, Any], callback, t0: float):
        self.config, self.out, self.study, self.model, self.channel = config, out, study, model, channel
        self.points, self.val, self.base, self.callback, self.t0 = points, val, base, callback, t0
        self.target = channel.condition_from_param(channel.param_range[1]) if channel.condition_name else None
        self.condition = channel.format_condition(self.target) if self.target is not None else "noiseless link"
        self.skipped: dict[str, dict[str, Any]] = {}
        self.timing = TimeLeft()
        self.plan: list[int] = []
        self.seen: set[str] = set()  # the names reported to the callback

    @property
    def _baselines(self) -> list[dict[str, Any]]:
        return [self.base["label_on_device"], self.base["image_to_edge"]]

    def _measured(self) -> dict[str, Measured]:
        """The study's measurements by name, their latency under this search's budget."""
        out = {}
        for m in self.study.measured():
            m.latency_ms = latency_ms(m.device_macs, m.bits_per_image, m.edge_macs, self.config.budget)
            out[m.name] = m
        return out

    def run(self) -> None:
        """Every round, each keeping ~1/eta of its candidates for the next."""
        c = self.config
        pool = [(p, r) for p in self.points for r in c.rates
                if candidate_name(p["name"], r, c.bits_per_image, c.first_images, c.first_epochs) not in self.skipped]
        self.plan = round_sizes(len(pool), c.rounds, c.eta)
        self.callback("start", {"splits": [p["name"] for p in self.points], "rates": c.rates, "planned": sum(self.plan),
                                "rounds": self.plan, "condition": self.condition, "validation": self.val.source,
                                "images": self.val.images, "storage": self.study.where, "study": self.study.name})
        for r in range(c.rounds):
            images, epochs = round_budget(r, c.first_images, c.first_epochs, c.eta, self.val.train_images)
            names = {candidate_name(p["name"], rate, c.bits_per_image, images, epochs): (p, rate) for p, rate in pool}
            self._settle(r, images, epochs, names)
            measured, skipped = self._measured(), self.study.skipped()
            self.skipped.update(skipped)
            this_round = [measured[n] for n in names if n in measured]
            kept = promote(this_round, c.eta, c.max_drop)
            last = not kept or r + 1 == c.rounds
            self.callback("round", {"round": r, "images": images, "epochs": epochs, "measured": len(this_round),
                                    "learned": sum(m.learned for m in this_round), "kept": [m.name for m in kept],
                                    "last": last, "next": None if last else
                                    round_budget(r + 1, c.first_images, c.first_epochs, c.eta, self.val.train_images)})
            if last:
                break
            pool = [(next(p for p in self.points if p["name"] == m.split), m.rate) for m in kept]
        if not self._measured():
            reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in self.skipped.values())
            raise BnppError(f"{c.backbone.model}: no candidate could be fitted ({reasons[:300]})",
                            hint="try other rates or --splits (see `bnpp profile`)")

    def _settle(self, r: int, images: int, epochs: int, names: dict[str, tuple[dict[str, Any], float]]) -> None:
        """Queue round r's candidates, fit what this worker can claim, until every one is measured or
        skipped (by this worker or another)."""
        self.study.enqueue([{"name": n, "split": p["name"], "rate": rate, "round": r, "images": images,
                             "epochs": epochs} for n, (p, rate) in names.items()])
        waiting = False
        while True:
            self._report(names)
            for name in self.study.recover_lost():
                self.callback("lost", {"name": name})
            claim = self.study.claim(set(names))
            if claim is not None:
                self._fit(claim, *names[claim.candidate["name"]])
                waiting = False
                continue
            left = set(names) - self.study.settled(list(names))
            if not left:
                self._report(names)
                return
            if not waiting:
                self.callback("wait", {"round": r, "running": sorted(left)})
                waiting = True
            self.study.enqueue([{"name": n, "split": names[n][0]["name"], "rate": names[n][1], "round": r,
                                 "images": images, "epochs": epochs} for n in left])  # an errored fit, again
            time.sleep(self.config.poll_s)

    def _report(self, names) -> None:
        """A "candidate" event for each measurement of this round not reported yet (fitted here,
        by another worker, or found in the study)."""
        measured = self._measured()
        for n in names:
            if n in measured and n not in self.seen:
                self.seen.add(n)
                rec = recommend(latest(list(measured.values())), self._baselines, self.config.max_drop)
                self.callback("candidate", {"measured": measured[n].to_dict(), "done": len(self.seen),
                                            "planned": sum(self.plan), "best": rec["candidate"],
                                            "elapsed_s": time.perf_counter() - self.t0,
                                            "left_s": self.timing.left(self.plan, len(self.seen),
                                                                       measured[n].images * measured[n].epochs,
                                                                       self.config.eta)})

    def _fit(self, claim: Claim, point: dict[str, Any], rate: float) -> None:
        """Fit and measure the claimed candidate, and finish its trial (a CodecError: skipped, with
        why; an error or an interruption: failed, to be claimed again)."""
        cand = claim.candidate
        started = time.perf_counter()
        try:
            reused = RunDir(self.out / CANDIDATES_DIR / cand["name"]).finished  # a finished run: measured only
            self.callback("fit", {"name": cand["name"], "round": cand["round"], "images": cand["images"],
                                  "epochs": cand["epochs"], "done": len(self.seen), "planned": sum(self.plan),
                                  "trial": claim.number, "reused": reused})
            m = _measure(self.config, point, rate, cand, self.out, self.val.path, self.target, self.model,
                         self.channel.bits_per_element)
        except CodecError as e:
            self.study.skip(claim, str(e))
            return
        except BaseException as e:  # noqa: B036 -- Ctrl-C too: the trial is given back, then it propagates
            self.study.fail(claim, f"{type(e).__name__}: {e}")
            raise
        self.study.complete(claim, m)
        self.timing.add(time.perf_counter() - started, m.fit_seconds, m.images * m.epochs)

    def result(self) -> "SearchResult":
        """Each (split, rate) of this search at its longest fit, the Pareto set and the recommendation."""
        from .search import SearchResult

        c, base = self.config, self.base
        measured = list(self._measured().values())
        names = {(p["name"], rate) for p in self.points for rate in c.rates}
        final = [m for m in latest(measured) if (m.split, m.rate) in names]
        rows = [m.to_dict() for m in final if m.learned] + self._baselines
        b = self.model.backbone
        return SearchResult(
            out=str(self.out), model=c.backbone.model, channel=self.channel.name, condition=self.condition,
            validation={"source": self.val.source, "images": self.val.images, "backbone_top1": base["backbone_val_top1"],
                        "backbone_may_have_seen": not c.val_data and b.weights != "random"},
            splits=self.points, rates=list(c.rates), rate_unit="bits per image" if c.bits_per_image else "ratio",
            candidates=[m.to_dict() for m in measured], skipped=list(self.skipped.values()),
            final=[m.name for m in final], pareto=pareto(rows), baselines=base,
            recommendation=recommend(final, self._baselines, c.max_drop, self._too_small()), budget=asdict(c.budget),
            seconds=time.perf_counter() - self.t0)

    def _too_small(self) -> str:
        c = self.config
        return (f"no candidate learned (each one's validation top-1 is near chance or far below the uncut model's): "
                f"the budget is too small to measure any split (round 0: --first-images {c.first_images} x "
                f"--first-epochs {c.first_epochs}, {c.rounds} round{'s' * (c.rounds != 1)}); raise --first-images "
                f"or --first-epochs and run again (the fits made so far are kept)")


def _measure(config: "SearchConfig", point: dict[str, Any], rate: float, cand: dict[str, Any], out: Path,
             val_path: str, target: float | None, model, bits: int | None) -> Measured:
    """Fit one candidate (or reuse / resume its run), then measure it on the validation images."""
    ratio = rate_to_ratio(rate, point["elements"], bits, config.bits_per_image)
    images, epochs = cand["images"], cand["epochs"]
    fit = fit_config(config, out / CANDIDATES_DIR / cand["name"], point["name"], ratio, images, epochs)
    t = fit_and_measure(fit, val_path, [target] if target is not None else None, config.draws)
    ev = t.evaluation
    top1 = ev.results[0]["top1_mean"] if ev.results else ev.noiseless_top1
    symbols, sent = sent_per_image(ev)
    device_macs = point["head_macs"] + t.encoder_macs
    edge_macs = model.total_macs - point["head_macs"] + t.decoder_macs
    learned = learned_check(ev.noiseless_top1, ev.backbone_top1, model.backbone.num_classes)
    return Measured(name=cand["name"], split=point["name"], rate=rate, round=cand["round"], images=images,
                    epochs=epochs, device_macs=device_macs, edge_macs=edge_macs, symbols=symbols, bits_per_image=sent,
                    bandwidth_ratio=ev.bandwidth_ratio, val_top1=top1, val_drop=100 * (ev.backbone_top1 - top1),
                    fit_seconds=t.fit_seconds, run=t.run, features_s=t.features_s,
                    latency_ms=latency_ms(device_macs, sent, edge_macs, config.budget),
                    learned=learned["learned"], learned_reason=learned["reason"])
