"""`bnpp search` for people: progress on stderr while it runs, the table and the answer on stdout."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .render import console


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


class SearchProgress:
    """One line per event on stderr: candidates done, the best so far, time left."""

    def __init__(self, console_: Console | None = None):
        self.err = console_ or Console(stderr=True, highlight=False, soft_wrap=True)

    def _line(self, text: str) -> None:
        self.err.print(Text(text))

    def __call__(self, event: str, info: dict) -> None:
        if event == "start":
            self._line(f"search: {len(info['splits'])} splits ({', '.join(info['splits'])}) x {len(info['rates'])} "
                       f"rates, up to {info['planned']} fits in {len(info['rounds'])} rounds {info['rounds']}; "
                       f"measured at {info['condition']} on {info['images']} validation images ({info['validation']})")
            self._line(f"study {info['study']} in {info['storage']}: more workers join with the same command "
                       f"(watch: optuna-dashboard {info['storage']})")
        elif event == "measuring":
            self._line(f"measuring the uncut model and the image encodings (PNG, JPEG {info['qualities']}) on "
                       f"{info['images']} validation images ...")
        elif event == "baselines":
            lab, img = info["label_on_device"], info["image_to_edge"]
            self._line(f"baselines: uncut model {info['backbone_val_top1']:.2%} on validation; label on device "
                       f"{lab['latency_ms']:.3f} ms; image to edge {img['latency_ms']:.3f} ms ({img['what']}, "
                       f"drop {img['val_drop']:.2f} pt)")
        elif event == "fit":
            what = "measuring (its run is finished)" if info.get("reused") else "fitting"
            self._line(f"[{info['done'] + 1}/{info['planned']}] {what} {info['name']} (round {info['round']}: "
                       f"{info['images']} images x {info['epochs']} epochs)")
        elif event == "candidate":
            m, best = info["measured"], info["best"]
            best_s = (f"best so far {best['split']} {best['rate']:g} ({best['val_drop']:.2f} pt, "
                      f"{best['latency_ms']:.3f} ms)" if best else "none within tolerance yet")
            learned = "" if m.get("learned", True) else " (did NOT learn)"
            self._line(f"[{info['done']}/{info['planned']}] {m['name']}: drop {m['val_drop']:.2f} pt{learned}, "
                       f"{_si(m['device_macs'])} device MACs, {m['bits_per_image']:.0f} bits; {best_s}; "
                       f"{_duration(info['elapsed_s'])} elapsed, ~{_duration(info['left_s'])} left")
        elif event == "wait":
            self._line(f"round {info['round']}: nothing left to claim; waiting for {len(info['running'])} fit"
                       f"{'s' * (len(info['running']) != 1)} of other workers ({', '.join(info['running'][:4])}"
                       f"{', ...' if len(info['running']) > 4 else ''})")
        elif event == "lost":
            self._line(f"{info['name']}: its worker is gone; queued again (it resumes from its checkpoint)")
        elif event == "round":
            self._line(_round_line(info))


def _round_line(info: dict) -> str:
    """What round r did and what comes next, as it happens: the last round says so, a round in which
    no candidate learned says its budget was too small."""
    r, n, learned = info["round"], info["measured"], info["learned"]
    head = (f"round {r} done ({info['images']} images x {info['epochs']} epochs): {n} measured, "
            f"{learned} learned")
    if n and not learned:
        head += " - the budget is too small for any candidate to learn"
    if info["last"]:
        return head + "; that was the last round"
    nxt = info["next"]
    return head + f"; {', '.join(info['kept'])} go on to round {r + 1} ({nxt[0]} images x {nxt[1]} epochs)"


def render_search(r) -> None:
    v = r.validation
    console.print(f"[bold]{r.model}[/] {r.channel} at {r.condition}; drops on {v['images']} validation images "
                  f"({v['source']}), uncut model {v['backbone_top1']:.2%}; {r.seconds / 60:.1f} min")
    t = Table(header_style="bold")
    for col in ("candidate", "split", "rate", "images x ep", "device MACs", "symbols", "bits/img", "val drop (pt)",
                "learned", "fit s", "est ms"):
        t.add_column(col, justify="left" if col in ("candidate", "split") else "right")
    rec = r.recommendation
    for c in sorted(r.candidates, key=lambda c: (c["round"], c["device_macs"], -c["rate"])):
        mark = " *" if rec["candidate"] and c["name"] == rec["candidate"]["name"] else \
            (" ·" if c["name"] in r.pareto else "")
        t.add_row(c["name"] + mark, c["split"], f"{c['rate']:g}", f"{c['images']} x {c['epochs']}",
                  _si(c["device_macs"]), f"{c['symbols']:.0f}", f"{c['bits_per_image']:.0f}", f"{c['val_drop']:.2f}",
                  _learned(c), f"{c['fit_seconds']:.0f}", f"{c['latency_ms']:.3f}")
    for b in (r.baselines["label_on_device"], r.baselines["image_to_edge"]):
        t.add_row(b["name"] + (" ·" if b["name"] in r.pareto else ""), "-", "-", "-", _si(b["device_macs"]), "-",
                  f"{b['bits_per_image']:.0f}", f"{b['val_drop']:.2f}", "-", "-", f"{b['latency_ms']:.3f}")
    console.print(t)
    for s in r.skipped:
        console.print(f"[yellow]Skipped[/] {s['name']}: {s['reason']}")
    b = r.budget
    console.print(f"Budget: {b['bandwidth_mbps']:g} Mbit/s link, device {b['device_gmacs']:g} GMAC/s, edge "
                  f"{b['edge_gmacs']:g} GMAC/s; tolerance {rec['max_drop']:g} points.  * recommended  · Pareto  "
                  f"(learned NO: never either)")
    cand = rec["candidate"]
    if cand:
        console.print(f"Recommended split: [bold green]{cand['split']}[/], rate {cand['rate']:g} "
                      f"({_si(cand['device_macs'])} device MACs, {cand['bits_per_image']:.0f} bits per image, validation "
                      f"drop {cand['val_drop']:.2f} pt); run: {cand['run']} (for `bnpp eval` / `bnpp export`)")
    if rec.get("budget_too_small"):
        console.print(Text(f"No recommendation: {rec['note']}", style="bold yellow"))
    else:
        console.print(f"Fastest within tolerance: [bold]{rec['winner'] or 'none'}[/]: {rec['note']}")
    study = getattr(r, "study", None) or {}
    if study.get("storage"):
        console.print(Text(f"Study {study['name']} in {study['storage']} ({_trials(study.get('trials', {}))}); "
                           f"optuna-dashboard {study['storage']} shows every fit"))


def _learned(c: dict) -> str:
    """yes / no (did the codec learn: run.checks.learned_check); '?' for a search made before it was measured."""
    return "?" if "learned" not in c else ("yes" if c["learned"] else "NO")


def _trials(counts: dict) -> str:
    done = counts.get("COMPLETE", 0)
    extra = [f"{counts[k]} {what}" for k, what in (("FAIL_skipped", "skipped"), ("FAIL_lost", "lost and refitted"),
                                                   ("FAIL_duplicate_of", "twin claims dropped")) if counts.get(k)]
    return f"{done} fits" + (f"; {', '.join(extra)}" if extra else "")
