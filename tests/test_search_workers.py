"""bnpp search as an Optuna study: claims, twins and lost workers on a real journal storage (no fits),
two worker processes sharing one search (each candidate fitted once, the one-worker answer), a worker
killed mid-candidate and resumed from its checkpoint, PostgreSQL as the storage, and what a search
says when its candidates did not learn."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bnpp_cli.cli import app
from bnpp_cli.errors import BnppError, RunError
from bnpp_cli.link.config import ChannelConfig
from bnpp_cli.run import study as study_mod
from bnpp_cli.run.candidates import Measured, latency_ms, promote, recommend
from bnpp_cli.run.search import SearchConfig, read_search, search_split_rate
from bnpp_cli.run.study import SearchStudy, hide_password, open_storage
from bnpp_cli.split.backbone import BackboneConfig
from bnpp_cli.split.profile import Budget

from .helpers import tiny_npz

SAME = ("seed", "data")


def _study(path: Path, **config) -> SearchStudy:
    """A second SearchStudy on the same file is another worker (its own storage object)."""
    return SearchStudy(open_storage(f"journal:{path}", path.parent), "s", {"seed": 0, "data": "d", **config}, SAME,
                       str(path))


def _cand(name: str, rnd: int = 0) -> dict:
    return {"name": name, "split": name.split("-")[0], "rate": 4.0, "round": rnd, "images": 32, "epochs": 1}


def _measured(name: str, drop: float = 1.0, learned: bool = True) -> Measured:
    return Measured(name=name, split=name.split("-")[0], rate=4.0, round=0, images=32, epochs=1, device_macs=1000,
                    edge_macs=10, symbols=4, bits_per_image=128.0, bandwidth_ratio=4.0, val_top1=0.5, val_drop=drop,
                    fit_seconds=1.0, latency_ms=0.1, run=f"runs/{name}", learned=learned)


# ---- the study: claims, twins, lost workers (a real journal file, no fits) ----------------------
def test_a_claim_is_held_by_one_worker_and_twins_are_dropped(tmp_path):
    a, b = _study(tmp_path / "j"), _study(tmp_path / "j")
    a.enqueue([_cand("layer1-r4"), _cand("layer2-r4")])
    a.enqueue([_cand("layer1-r4")])  # already queued: not again
    # two workers that queue a round at the same moment leave a twin (forced here past enqueue's check)
    b.study.enqueue_trial({}, user_attrs=_cand("layer1-r4"))
    first = a.claim({"layer1-r4", "layer2-r4"})
    assert first.candidate["name"] == "layer1-r4" and first.number == 0
    second = b.claim({"layer1-r4", "layer2-r4"})
    assert second.candidate["name"] == "layer2-r4"  # the twin of layer1 was claimed and dropped by a
    assert a.claim({"layer1-r4", "layer2-r4"}) is None and b.claim({"layer1-r4"}) is None
    a.complete(first, _measured("layer1-r4"))
    b.skip(second, "ratio 4 cannot be met")
    assert a.settled(["layer1-r4", "layer2-r4", "layer3-r4"]) == {"layer1-r4", "layer2-r4"}
    assert b.skipped()["layer2-r4"]["reason"] == "ratio 4 cannot be met"
    assert [m.name for m in b.measured()] == ["layer1-r4"]
    assert a.counts()["trials"] == {"COMPLETE": 1, "FAIL": 2, "FAIL_skipped": 1, "FAIL_duplicate_of": 1}
    trial = a.study.get_trials()[0]  # what optuna-dashboard shows: the candidate and its measurement
    assert trial.values == [1000.0, 128.0, 1.0]
    assert {k: trial.user_attrs[k] for k in ("split", "rate", "device_macs", "bits_per_image", "run", "learned")} == \
        {"split": "layer1", "rate": 4.0, "device_macs": 1000, "bits_per_image": 128.0, "run": "runs/layer1-r4",
         "learned": True}
    a.enqueue([_cand("layer1-r4"), _cand("layer2-r4")])  # settled: never queued again
    assert a.claim({"layer1-r4", "layer2-r4"}) is None


def test_a_lost_workers_trial_is_queued_again(tmp_path):
    a, b = _study(tmp_path / "j"), _study(tmp_path / "j")
    a.enqueue([_cand("layer1-r4"), _cand("layer2-r4")])
    c1, c2 = a.claim({"layer1-r4"}), a.claim({"layer2-r4"})
    a._stop_heartbeat()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid is gone
    a.storage.set_trial_user_attr(c1.trial_id, "pid", dead.pid)  # this host, a dead worker
    a.storage.set_trial_user_attr(c2.trial_id, "host", "elsewhere")  # another host, silent too long
    a.storage.set_trial_user_attr(c2.trial_id, "heartbeat", time.time() - study_mod.STALE_S - 5)
    assert sorted(b.recover_lost()) == ["layer1-r4", "layer2-r4"]
    assert a.recover_lost() == []  # recovered once
    again = b.claim({"layer1-r4", "layer2-r4"})
    assert again.candidate == _cand("layer1-r4") and b.study.get_trials()[again.number].user_attrs["retry_of"] == 0
    b.fail(again, "KeyboardInterrupt: ")  # an interruption: the candidate is not settled and is queued again
    assert b.settled(["layer1-r4"]) == set()
    b.enqueue([_cand("layer1-r4")])
    assert b.claim({"layer1-r4"}).candidate["name"] == "layer1-r4"
    assert a.counts()["trials"]["FAIL_lost"] == 2
    a._stop_heartbeat()
    b._stop_heartbeat()


def test_a_study_refuses_a_worker_with_other_options_and_bad_storages(tmp_path):
    _study(tmp_path / "j")
    with pytest.raises(RunError, match=r"is a search with other seed \(seed 0\)"):
        _study(tmp_path / "j", seed=1)
    with pytest.raises(BnppError, match=r"^--storage redis://u:\*\*\*@host/0: not a storage bnpp knows") as e:
        open_storage("redis://u:secret@host/0", tmp_path)
    assert "secret" not in str(e.value) and "postgresql://" in e.value.hint
    assert hide_password("postgresql://bnpp:pw@db:5432/s") == "postgresql://bnpp:***@db:5432/s"
    data = tiny_npz(tmp_path / "d.npz", n=32)
    r = CliRunner().invoke(app, ["search", "test_resnet", "--data", str(data), "--out", str(tmp_path / "s"),
                                 "--storage", "mongodb://u:secret@h/db"])
    assert r.exit_code == 2 and "--storage mongodb://u:***@h/db: not a storage bnpp knows" in r.output
    assert "secret" not in r.output and not (tmp_path / "s").exists()  # refused before any work
    assert hide_password("sqlite:///x.db") == "sqlite:///x.db"


def test_a_search_dir_made_before_studies_is_read_and_refused_with_other_options(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    config = SearchConfig(backbone=BackboneConfig("test_resnet", num_classes=10, img_size=32),
                          data=str(tiny_npz(tmp_path / "d.npz", n=32)), out=str(old), rates=[4.0], batch_size=16,
                          first_images=32)
    summary = {"out": str(old), "model": "test_resnet", "channel": "awgn", "condition": "20 dB", "validation": {},
               "splits": [], "rates": [4.0], "rate_unit": "ratio", "candidates": [], "skipped": [], "final": [],
               "pareto": [], "baselines": {}, "recommendation": {"candidate": None}, "budget": {}, "seconds": 1.0,
               "status": "done", "schema": 1, "config": dict(config.to_dict(), seed=1)}
    for key in ("storage", "study", "poll_s"):  # what a search.json of schema 1 did not have
        del summary["config"][key]
    (old / "search.json").write_text(json.dumps(summary))
    assert read_search(old).schema == 1  # `bnpp profile --search` still reads it
    with pytest.raises(RunError, match=r"made by an older bnpp \(search.json schema 1, no study.journal\) with other "
                                       r"seed \(seed 1\)") as e:
        search_split_rate(config)
    assert "its fits are reused" in e.value.hint and sorted(p.name for p in old.iterdir()) == ["search.json"]
    (old / "search.json").write_text("{not json")
    with pytest.raises(RunError, match="is not a bnpp search summary this bnpp reads"):
        search_split_rate(config)


@pytest.mark.slow
def test_a_search_made_before_studies_is_taken_up_without_refitting(tmp_path):
    tiny_npz(tmp_path / "train.npz", n=64)
    config = _tiny(tmp_path, "s", splits=["layer4"], rounds=1)
    first = search_split_rate(config)
    out = Path(config.out)
    for p in out.glob("study.journal*"):  # what a search made before studies leaves: search.json was the state
        p.unlink()
    summary = json.loads((out / "search.json").read_text())
    summary["schema"] = 1
    for key in ("storage", "study", "poll_s"):
        del summary["config"][key]
    (out / "search.json").write_text(json.dumps(summary))
    events = []
    again = search_split_rate(config, lambda e, i: events.append((e, i)))
    assert [i["reused"] for e, i in events if e == "fit"] == [True]  # its finished run measured, not fitted
    assert again.recommendation == first.recommendation and again.schema == 2


# ---- a candidate that did not learn --------------------------------------------------------------
def test_an_unlearned_candidate_is_never_recommended_or_promoted_as_feasible():
    fast_unlearned = _measured("layer1-r4", drop=0.5, learned=False)
    fast_unlearned.latency_ms = 0.01
    slow = _measured("layer3-r4", drop=0.8)
    slow.latency_ms = latency_ms(1e9, 128, 10, Budget())
    label = {"name": "label-on-device", "device_macs": 1e12, "bits_per_image": 3.3, "val_drop": 0.0, "latency_ms": 1e6}
    rec = recommend([fast_unlearned, slow], [label], max_drop=1.0)
    assert rec["candidate"]["name"] == "layer3-r4" and not rec["budget_too_small"]
    assert promote([fast_unlearned, slow], eta=2, max_drop=1.0)[0].name == "layer3-r4"
    rec = recommend([fast_unlearned], [label], max_drop=1.0, too_small="raise --first-images")
    assert rec == {"max_drop": 1.0, "candidate": None, "winner": None, "note": "raise --first-images",
                   "budget_too_small": True}


def test_round_lines_say_what_happens():
    from bnpp_cli.cli.search_render import _round_line

    info = {"round": 0, "images": 32, "epochs": 1, "measured": 3, "learned": 0, "kept": ["a"], "last": True,
            "next": None}
    line = _round_line(info)
    assert "the budget is too small for any candidate to learn" in line and "last round" in line
    assert "go on" not in line
    line = _round_line(dict(info, learned=2, last=False, next=(64, 1)))
    assert line.endswith("a go on to round 1 (64 images x 1 epochs)") and "too small" not in line


def _tiny(tmp: Path, out: str, **kw) -> SearchConfig:
    opts = dict(backbone=BackboneConfig("test_resnet", num_classes=10, img_size=32),
                data=str(tmp / "train.npz"), out=str(tmp / out), channel=ChannelConfig("awgn", 20.0),
                splits=["layer1", "layer2", "layer3", "layer4"], rates=[4.0], first_images=32, first_epochs=1, eta=2,
                rounds=2, batch_size=16, max_drop=100.0, draws=1, val_fraction=0.25, poll_s=0.2)
    opts.update(kw)
    return SearchConfig(**opts)


@pytest.mark.slow
def test_a_search_whose_candidates_did_not_learn_says_its_budget_is_too_small(tmp_path, monkeypatch):
    import bnpp_cli.run.rungs as rungs

    monkeypatch.setattr(rungs, "learned_check", lambda cut, uncut, k: {"learned": False, "reason": "near chance"})
    tiny_npz(tmp_path / "train.npz", n=64)
    r = CliRunner().invoke(app, ["search", "test_resnet", "--num-classes", "10", "--img-size", "32", "--data",
                                 str(tmp_path / "train.npz"), "--out", str(tmp_path / "s"), "--snr", "20", "--splits",
                                 "layer4", "--ratios", "4", "--rounds", "1", "--first-images", "32", "--batch-size",
                                 "16", "--max-drop", "100", "--draws", "1", "--json", str(tmp_path / "s.json"),
                                 "--plot", str(tmp_path / "s.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    said = " ".join(r.output.split())  # as one line, whatever the console's width
    assert "1 measured, 0 learned - the budget is too small for any candidate to learn; that was the last round" \
        in said and "go on" not in said
    assert "No recommendation: no candidate learned" in said and "--first-images 32 x --first-epochs 1" in said
    assert "Recommended split" not in said and "did NOT learn" in said
    d = json.loads((tmp_path / "s.json").read_text())
    assert d["recommendation"]["budget_too_small"] and d["recommendation"]["winner"] is None
    assert d["pareto"] == ["label-on-device", "image-to-edge"] or set(d["pareto"]) <= {"label-on-device",
                                                                                      "image-to-edge"}
    assert d["candidates"][0]["learned"] is False
    r = CliRunner().invoke(app, ["profile", "test_resnet", "--img-size", "32", "--repeats", "1", "--samples", "2",
                                 "--search", str(tmp_path / "s")])
    assert r.exit_code == 0 and "no recommendation, no candidate learned" in " ".join(r.output.split())


# ---- worker processes ------------------------------------------------------------------------------
_WORKER = r"""
import json, os, signal, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from bnpp_cli.run import measure, rundir
from bnpp_cli.run.search import SearchConfig, search_split_rate

args = json.loads(sys.argv[1])
log = open(args["log"], "a")
def note(*row):
    log.write(json.dumps(row) + "\n")
    log.flush()
fit_codec = measure.fit_codec
def logged_fit(c):
    note("fit_codec", Path(c.out).name, c.resume)
    return fit_codec(c)
measure.fit_codec = logged_fit
if args.get("kill_in"):
    save = rundir.RunDir.save_checkpoint
    def save_then_die(self, *a, **kw):
        save(self, *a, **kw)
        if self.path.name == args["kill_in"]:
            note("killed", self.path.name)
            os.kill(os.getpid(), signal.SIGKILL)
    rundir.RunDir.save_checkpoint = save_then_die
if args.get("barrier"):
    Path(args["barrier"], str(os.getpid())).touch()
    while len(list(Path(args["barrier"]).iterdir())) < args["workers"]:
        time.sleep(0.05)
def event(e, i):
    m = i.get("measured")
    note(e, i.get("name") or (m["name"] if isinstance(m, dict) else None))
result = search_split_rate(SearchConfig.from_dict(args["config"]), event)
note("result", result.to_dict())
"""


def _worker(config: SearchConfig, log: Path, **kw) -> subprocess.Popen:
    args = {"config": config.to_dict(), "log": str(log), **kw}
    return subprocess.Popen([sys.executable, "-c", _WORKER, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _log(path: Path) -> list[list]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _finish(p: subprocess.Popen, timeout: float = 240) -> None:
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]


def _trials(config: SearchConfig):
    import optuna

    return optuna.load_study(study_name=config.study, storage=open_storage(config.storage, Path(config.out))).trials


@pytest.mark.slow
def test_two_workers_fit_each_candidate_once_and_agree_with_one(tmp_path):
    tiny_npz(tmp_path / "train.npz", n=96)
    one = _tiny(tmp_path, "one")
    _finish(_worker(one, tmp_path / "one.log"))
    single = next(row[1] for row in _log(tmp_path / "one.log") if row[0] == "result")

    shared = _tiny(tmp_path, "two")
    (tmp_path / "barrier").mkdir()
    workers = [_worker(shared, tmp_path / f"w{i}.log", barrier=str(tmp_path / "barrier"), workers=2) for i in (0, 1)]
    for p in workers:
        _finish(p)
    logs = [_log(tmp_path / f"w{i}.log") for i in (0, 1)]
    fitted = [[row[1] for row in log if row[0] == "fit_codec"] for log in logs]
    names = [c["name"] for c in single["candidates"]]
    # round 0: 4 splits; round 1: the fastest within 100 points (nothing is faster to go on beside it)
    assert len(names) == 5 and sum(c["round"] == 1 for c in single["candidates"]) == 1
    assert sorted(fitted[0] + fitted[1]) == sorted(names)  # every candidate fitted once, by one of the two
    assert fitted[0] and fitted[1]  # and both worked
    trials = _trials(shared)
    assert sorted(t.user_attrs["name"] for t in trials if t.state.name == "COMPLETE") == sorted(names)
    # two workers queueing a round at the same moment leave twins: each one claimed and dropped, never fitted
    assert all(t.state.name == "COMPLETE" or "duplicate_of" in t.user_attrs for t in trials)
    for log in logs:
        result = next(row[1] for row in log if row[0] == "result")
        assert result["recommendation"]["candidate"]["name"] == single["recommendation"]["candidate"]["name"]
        assert sorted(result["final"]) == sorted(single["final"]) and result["pareto"] == single["pareto"]
    assert read_search(shared.out).recommendation["candidate"]["name"] == single["recommendation"]["candidate"]["name"]


@pytest.mark.slow
def test_a_killed_worker_leaves_its_candidate_to_the_next_who_resumes_it(tmp_path):
    tiny_npz(tmp_path / "train.npz", n=96)
    config = _tiny(tmp_path, "s", splits=["layer2", "layer4"], rounds=1, first_epochs=2)
    victim = "layer4-r4-n32-e2"
    p = _worker(config, tmp_path / "a.log", kill_in=victim)
    p.communicate(timeout=240)
    assert p.returncode == -signal.SIGKILL
    assert ["killed", victim] in _log(tmp_path / "a.log")
    (running,) = [t for t in _trials(config) if t.state.name == "RUNNING"]
    assert running.user_attrs["name"] == victim and running.user_attrs["host"] == study_mod.worker_host()

    _finish(_worker(config, tmp_path / "b.log"))
    log = _log(tmp_path / "b.log")
    assert ["lost", victim] in log
    assert [row[1:] for row in log if row[0] == "fit_codec"] == [[victim, True]]  # resumed from its checkpoint
    trials = _trials(config)
    by_state = sorted((t.user_attrs["name"], t.state.name) for t in trials)
    assert by_state == [("layer2-r4-n32-e2", "COMPLETE"), (victim, "COMPLETE"), (victim, "FAIL")]
    retry = next(t for t in trials if t.user_attrs["name"] == victim and t.state.name == "COMPLETE")
    assert retry.user_attrs["retry_of"] == running.number
    assert next(t for t in trials if t.state.name == "FAIL").user_attrs["lost"] == "worker gone"
    metrics = json.loads(Path(retry.user_attrs["run"], "metrics.json").read_text())
    assert len(metrics["epochs"]) == 2  # the epoch from before the kill and the one after


# ---- PostgreSQL as the storage ---------------------------------------------------------------------
def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@pytest.fixture
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL cluster on a free port (trust auth, localhost only), stopped after."""
    required = os.environ.get("BNPP_REQUIRE_POSTGRES") == "1"  # CI (.ci/run) sets it: a skip would be a failure
    bin_dir = _pg_bin()
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        bin_dir = None
    if bin_dir is None:
        if required:
            pytest.fail("BNPP_REQUIRE_POSTGRES=1 but no initdb (Debian: apt-get install postgresql) or no psycopg2")
        pytest.skip("no PostgreSQL here (initdb, from Debian's postgresql, and psycopg2-binary are needed); CI runs it")
    root = Path(tmp_path_factory.mktemp("pg"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(root, 0o777)
        for parent in root.parents:
            if parent == Path("/tmp") or parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o011)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    def run(*cmd: str) -> None:
        # from the cluster's own folder: the postgres user may not enter the suite's working directory
        done = subprocess.run(as_user + [str(bin_dir / cmd[0]), *cmd[1:]], capture_output=True, text=True, cwd=root)
        assert done.returncode == 0, f"{cmd[0]} {cmd[-1]}: {done.stdout}{done.stderr}"

    run("initdb", "-D", str(data), "--auth=trust", "-U", "bnpp")
    run("pg_ctl", "-D", str(data), "-l", str(root / "log"), "-w", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start")
    try:
        yield f"postgresql+psycopg2://bnpp@127.0.0.1:{port}/postgres"
    finally:
        run("pg_ctl", "-D", str(data), "-m", "immediate", "stop")


@pytest.mark.slow
def test_postgresql_as_the_storage(tmp_path, postgres):
    import optuna

    tiny_npz(tmp_path / "train.npz", n=64)
    config = _tiny(tmp_path, "s", splits=["layer4"], rounds=1, storage=postgres, study="pg-search")
    events = []
    result = search_split_rate(config, lambda e, i: events.append(e))
    assert events.count("fit") == 1 and not (Path(config.out) / "study.journal").exists()
    assert result.study["storage"] == postgres and result.study["trials"] == {"COMPLETE": 1}
    (trial,) = optuna.load_study(study_name="pg-search", storage=postgres).trials
    assert trial.user_attrs["run"] == result.recommendation["candidate"]["run"]
    assert trial.values == [trial.user_attrs["device_macs"], trial.user_attrs["bits_per_image"],
                            trial.user_attrs["val_drop"]]
    events.clear()
    again = search_split_rate(_tiny(tmp_path, "elsewhere", splits=["layer4"], rounds=1, storage=postgres,
                                    study="pg-search"), lambda e, i: events.append(e))
    assert "fit" not in events and again.recommendation["candidate"]["name"] == trial.user_attrs["name"]
    # two worker processes on one PostgreSQL study: each candidate fitted once (claims by row lock)
    shared = _tiny(tmp_path, "pg2", splits=["layer2", "layer3", "layer4"], rounds=1, storage=postgres,
                   study="pg-two")
    (tmp_path / "barrier").mkdir()
    workers = [_worker(shared, tmp_path / f"pg{i}.log", barrier=str(tmp_path / "barrier"), workers=2) for i in (0, 1)]
    for p in workers:
        _finish(p)
    fitted = [row[1] for i in (0, 1) for row in _log(tmp_path / f"pg{i}.log") if row[0] == "fit_codec"]
    assert sorted(fitted) == ["layer2-r4-n32-e1", "layer3-r4-n32-e1", "layer4-r4-n32-e1"]
    done = [t.user_attrs["name"] for t in optuna.load_study(study_name="pg-two", storage=postgres).trials
            if t.state.name == "COMPLETE"]
    assert sorted(done) == sorted(fitted)
