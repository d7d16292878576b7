"""THE search's state: an Optuna study that any number of workers share through one storage.

    open_storage(url, out) -> optuna storage     DIR/study.journal by default; an RDB URL or journal:PATH
    SearchStudy(storage, name, config)           the study, created by the first worker, checked by the rest
      .enqueue(candidates)   round r's candidates as WAITING trials (those not already settled or queued)
      .claim(names)          pop one WAITING trial (Optuna's atomic WAITING -> RUNNING), twins dropped
      .complete / .skip / .fail   finish a claimed trial; .recover_lost() puts a dead worker's back in the queue
      .measured(), .skipped(), .settled(name)     what the study holds, as the search reads it

One trial is one fit: a candidate (split, rate) at one round's budget, named as its run directory
(split-rRATE-nIMAGES-eEPOCHS). Its user attrs carry the candidate (name, split, rate, round, images,
epochs) and, once measured, every field of run.candidates.Measured (device MACs, bits per image, the
run directory, the drop, whether it learned); its three values, all minimised, are (device MACs, bits
per image, validation drop), so optuna-dashboard draws the study's Pareto front over every fit.

A worker claims a candidate before fitting it: Optuna pops a WAITING trial by a compare-and-set in the
storage (a row lock in an RDB, the journal's file lock), so two workers never hold the same trial. Two
workers that queue the same round at the same moment leave twin trials; the one that pops a twin
claims the other twins too and the lowest-numbered claim keeps the candidate, so it is fitted once.
A running trial records its worker (host name and boot id, pid) and a heartbeat every HEARTBEAT_S
seconds; a trial whose worker is gone (the same host and the pid dead, or no heartbeat for STALE_S
seconds from any host) is failed and queued again (``retry_of``), and the next worker resumes the
candidate's run from its checkpoint when it can see the run directory.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import BnppError, RunError
from .candidates import Measured

STUDY_FILE = "study.journal"  # the default storage: an Optuna journal in the search directory
STUDY_SCHEMA = 2  # 1: the search before Optuna (its state was search.json)
HEARTBEAT_S = 30.0  # a running trial's worker says it is alive this often...
STALE_S = 300.0  # ...and a trial not heard from for this long (any host) is taken for lost
RDB_SCHEMES = ("postgresql", "mysql", "sqlite")  # Optuna's RDB storage, through SQLAlchemy
_CANDIDATE = ("name", "split", "rate", "round", "images", "epochs")  # what a queued trial carries
_MEASURED = tuple(f.name for f in fields(Measured))


def check_storage(url: str | None) -> None:
    """--storage's form, before any work: None, journal:PATH, or an RDB URL of a scheme bnpp knows."""
    if url is None:
        return
    if url.startswith("journal:"):
        if not url[len("journal:"):].strip():
            raise BnppError(f"--storage {url}: a journal needs a file path", hint="e.g. journal:/shared/search.journal")
        return
    if urlsplit(url).scheme.split("+")[0] not in RDB_SCHEMES:
        raise BnppError(f"--storage {hide_password(url)}: not a storage bnpp knows",
                        hint=f"give {', '.join(s + '://...' for s in RDB_SCHEMES)} or journal:PATH")


def open_storage(url: str | None, out: Path):
    """The Optuna storage of ``url``: None -> out/study.journal; ``journal:PATH`` -> a journal file (a
    shared filesystem for workers on many machines); postgresql://, mysql://, sqlite:/// -> Optuna's
    RDB storage. A bad URL is one line naming it (its password hidden) and the forms it may take."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    check_storage(url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the library never prints; Optuna's INFO would
    if url is None or url.startswith("journal:"):
        path = out / STUDY_FILE if url is None else Path(url[len("journal:"):]).expanduser()
        if path.is_dir():
            raise BnppError(f"--storage {url}: {path} is a directory; a journal is a file",
                            hint="e.g. journal:/shared/search.journal")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    except ImportError as e:
        raise BnppError(f"--storage {hide_password(url)}: its database driver is not installed ({e})",
                        hint="pip install psycopg2-binary (PostgreSQL) or PyMySQL (MySQL)") from None
    except Exception as e:  # SQLAlchemy's errors: a server that does not answer, a bad URL, bad credentials
        raise BnppError(f"--storage {hide_password(url)}: cannot open it ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]})", hint="check the URL, the server and its credentials") from None


def hide_password(url: str) -> str:
    """The URL with its password (if any) replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


@dataclass
class Claim:
    """A trial this worker holds: fit its candidate, then complete, skip or fail it."""

    number: int
    trial_id: int
    candidate: dict[str, Any]  # name, split, rate, round, images, epochs


class SearchStudy:
    """The study of one search (directions: device MACs, bits per image, drop; all minimised)."""

    def __init__(self, storage, name: str, config: dict[str, Any], same: tuple[str, ...], where: str):
        import optuna

        self.storage, self.name, self.where = storage, name, where
        self.study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                         directions=["minimize"] * 3)
        attrs = self.study.user_attrs
        if "config" not in attrs:
            self.study.set_user_attr("schema", STUDY_SCHEMA)
            self.study.set_user_attr("config", config)
            with warnings.catch_warnings():  # experimental since Optuna 3.2; the dashboard's axis names
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(["device_macs", "bits_per_image", "val_drop"])
            attrs = self.study.user_attrs
        if attrs.get("schema", STUDY_SCHEMA) > STUDY_SCHEMA:
            raise RunError(f"study '{name}' in {where} has schema {attrs['schema']}, newer than this bnpp's "
                           f"({STUDY_SCHEMA})", hint="upgrade bnpp on this worker")
        theirs = attrs["config"]
        diff = [k for k in same if config.get(k) != theirs.get(k)]
        if diff:
            raise RunError(f"study '{name}' in {where} is a search with other {', '.join(diff)} "
                           f"({', '.join(f'{k} {theirs.get(k)!r}' for k in diff)})",
                           hint="give the same options to join or resume it, or another --out / --study for a new search")
        self._beat: tuple[threading.Event, threading.Thread] | None = None

    # ---- what the study holds ---------------------------------------------------------------
    def _trials(self, *states):
        return [t for t in self.study.get_trials(deepcopy=False, states=states or None) if "name" in t.user_attrs]

    def get_attr(self, key: str) -> Any:
        return self.study.user_attrs.get(key)

    def set_attr(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, value)

    def counts(self) -> dict[str, int]:
        """How many trials the study holds in each state (COMPLETE, FAIL, ...), and how many failed
        ones were skips (the codec refused the candidate), twins or lost workers."""
        out: dict[str, int] = {}
        for t in self._trials():
            out[t.state.name] = out.get(t.state.name, 0) + 1
            for k in ("skipped", "duplicate_of", "lost"):
                if k in t.user_attrs and t.state.name == "FAIL":
                    out[f"FAIL_{k}"] = out.get(f"FAIL_{k}", 0) + 1
        return {"trials": out}

    def measured(self) -> list[Measured]:
        """Every completed fit, as measured (in trial order)."""
        from optuna.trial import TrialState

        return [Measured(**{k: t.user_attrs[k] for k in _MEASURED if k in t.user_attrs})
                for t in self._trials(TrialState.COMPLETE)]

    def skipped(self) -> dict[str, dict[str, Any]]:
        """{name: {name, split, rate, reason}} of the fits the codec refused (CodecError)."""
        from optuna.trial import TrialState

        return {t.user_attrs["name"]: {"name": t.user_attrs["name"], "split": t.user_attrs["split"],
                                       "rate": t.user_attrs["rate"], "reason": t.user_attrs["skipped"]}
                for t in self._trials(TrialState.FAIL) if "skipped" in t.user_attrs}

    def settled(self, names: list[str]) -> set[str]:
        """The names among ``names`` that have a completed or a skipped fit."""
        from optuna.trial import TrialState

        done = {t.user_attrs["name"] for t in self._trials(TrialState.COMPLETE)}
        return {n for n in names if n in done} | {n for n in names if n in self.skipped()}

    # ---- the queue -----------------------------------------------------------------------------
    def enqueue(self, candidates: list[dict[str, Any]]) -> None:
        """Queue each candidate that has no completed, skipped, queued or running trial."""
        from optuna.trial import TrialState

        busy = {t.user_attrs["name"] for t in self._trials(TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)}
        busy |= set(self.skipped())
        for c in candidates:
            if c["name"] not in busy:
                self.study.enqueue_trial({}, user_attrs={k: c[k] for k in _CANDIDATE})

    def _pop(self, trial) -> bool:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        try:
            return self.storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING)
        except UpdateFinishedTrialError:
            return False

    def _drop(self, trial_id: int, why: dict[str, Any]) -> None:
        from optuna.trial import TrialState

        for k, v in why.items():
            self.storage.set_trial_user_attr(trial_id, k, v)
        self.storage.set_trial_state_values(trial_id, state=TrialState.FAIL)

    def claim(self, names: set[str]) -> Claim | None:
        """Pop a WAITING trial of one of ``names`` (None: none is queued), claiming its twins too; the
        lowest-numbered claim of a candidate keeps it, a completed one wins over every claim."""
        from optuna.trial import TrialState

        for t in self._trials(TrialState.WAITING):
            name = t.user_attrs["name"]
            if name not in names or not self._pop(t):
                continue
            for twin in self._trials(TrialState.WAITING):
                if twin.user_attrs["name"] == name and self._pop(twin):
                    self._drop(twin._trial_id, {"duplicate_of": t.number})
            rivals = [o for o in self._trials(TrialState.RUNNING, TrialState.COMPLETE)
                      if o.user_attrs["name"] == name and o.number != t.number]
            winner = next((o for o in rivals if o.state == TrialState.COMPLETE or o.number < t.number), None)
            if winner is not None or name in self.skipped():
                self._drop(t._trial_id, {"duplicate_of": winner.number if winner else -1})
                continue
            claim = Claim(t.number, t._trial_id, {k: t.user_attrs[k] for k in _CANDIDATE})
            for k, v in (("host", worker_host()), ("pid", os.getpid()), ("heartbeat", time.time())):
                self.storage.set_trial_user_attr(t._trial_id, k, v)
            self._start_heartbeat(t._trial_id)
            return claim
        return None

    def recover_lost(self) -> list[str]:
        """Fail and queue again each running trial whose worker is gone; the names requeued."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        host, now, back = worker_host(), time.time(), []
        for t in self._trials(TrialState.RUNNING):
            a = t.user_attrs
            beat = a.get("heartbeat") or (t.datetime_start.timestamp() if t.datetime_start else now)
            dead = a.get("host") == host and a.get("pid") not in (None, os.getpid()) and not _alive(a["pid"])
            if not dead and now - beat <= STALE_S:
                continue
            try:
                self.storage.set_trial_user_attr(t._trial_id, "lost", "worker gone" if dead else
                                                 f"no heartbeat for {now - beat:.0f} s")
                self.storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except UpdateFinishedTrialError:  # finished meanwhile, or another worker recovered it first
                continue
            self.study.enqueue_trial({}, user_attrs={**{k: a[k] for k in _CANDIDATE}, "retry_of": t.number})
            back.append(a["name"])
        return back

    # ---- finishing a claim ---------------------------------------------------------------------
    def complete(self, claim: Claim, m: Measured) -> None:
        self._stop_heartbeat()
        for k, v in m.to_dict().items():
            self.storage.set_trial_user_attr(claim.trial_id, k, v)
        self.study.tell(claim.number, [float(m.device_macs), float(m.bits_per_image), float(m.val_drop)])

    def skip(self, claim: Claim, reason: str) -> None:
        """The codec cannot be planned for this candidate: settled, never queued again."""
        self._stop_heartbeat()
        self._drop(claim.trial_id, {"skipped": reason})

    def fail(self, claim: Claim, why: str) -> None:
        """An error or an interruption: the next worker (or the next run) queues the candidate again."""
        self._stop_heartbeat()
        self._drop(claim.trial_id, {"error": why[:500]})

    def _start_heartbeat(self, trial_id: int) -> None:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_S):
                try:
                    self.storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
                except Exception:  # finished under us, or the storage is briefly away: the next beat retries
                    pass

        thread = threading.Thread(target=beat, name=f"bnpp-heartbeat-{trial_id}", daemon=True)
        thread.start()
        self._beat = (stop, thread)

    def _stop_heartbeat(self) -> None:
        if self._beat is not None:
            stop, thread = self._beat
            stop.set()
            thread.join()
            self._beat = None


def worker_host() -> str:
    """This machine, as a trial records it: the host name and, on Linux, the boot id (two machines
    that share a name, VMs made from one image, are told apart; a pid is only checked on its own host)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
