"""The docs cannot drift: docs/json.md's key tables equal what the commands write, README.md stays one
screen, and no prose or comment names a work round."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bnpp_cli.cli import app

from .conftest import REPO

runner = CliRunner()
_MARKER = re.compile(r"^<!-- keys: ([\w.]+) -->$")
_FIRST_CELL = re.compile(r"^\|([^|]*)\|")
_KEY = re.compile(r"`([A-Za-z_]\w*)`")


def documented_keys() -> dict[str, list[str]]:
    """{table name: keys in its first column} for every `<!-- keys: NAME -->` table in docs/json.md
    (a cell may name several keys: "`name`, `aliases`")."""
    tables: dict[str, list[str]] = {}
    name = None
    for line in (REPO / "docs" / "json.md").read_text().splitlines():
        marker = _MARKER.search(line)
        if marker:
            name = marker.group(1)
            tables[name] = []
        elif name is not None and line.startswith("|"):
            cell = _FIRST_CELL.match(line)
            if cell:
                tables[name].extend(_KEY.findall(cell.group(1)))
        elif name is not None and tables[name]:
            name = None  # the table ended
    return tables


DOC = documented_keys()


def test_json_md_has_every_table():
    assert set(DOC) == {"profile", "profile.split_points", "profile.recommendation", "eval", "eval.results",
                        "eval.results.variable", "export", "predict", "predict.predictions", "infer", "search", "search.candidates"}
    for name, keys in DOC.items():
        assert keys and len(keys) == len(set(keys)), name


def test_profile_json_keys_are_documented(tmp_path):
    out = tmp_path / "p.json"
    r = runner.invoke(app, ["profile", "test_resnet", "--img-size", "32", "--repeats", "1", "--samples", "2",
                            "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert sorted(d) == sorted(DOC["profile"])
    for row in d["split_points"]:
        assert sorted(row) == sorted(DOC["profile.split_points"])
    assert sorted(d["recommendation"]) == sorted(DOC["profile.recommendation"])


def test_eval_json_keys_are_documented(tmp_path, fitted):
    run_dir, data, _ = fitted()
    out = tmp_path / "e.json"
    r = runner.invoke(app, ["eval", str(run_dir), "--data", str(data), "--snr", "10,20", "--draws", "2",
                            "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert sorted(d) == sorted(DOC["eval"])
    assert len(d["results"]) == 2
    for row in d["results"]:
        assert sorted(row) == sorted(DOC["eval.results"])


def test_eval_json_keys_of_a_variable_length_code(tmp_path, fitted):
    run_dir, data, _ = fitted(preset="variable", condition=(5.0, 25.0), ratio=2.0, val_fraction=0.25)
    out = tmp_path / "e.json"
    r = runner.invoke(app, ["eval", str(run_dir), "--data", str(data), "--snr", "5,25", "--draws", "1",
                            "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert sorted(d) == sorted(DOC["eval"]) and d["variable_length"] is True
    for row in d["results"]:
        assert sorted(row) == sorted(DOC["eval.results"] + DOC["eval.results.variable"])


def test_export_and_predict_json_keys_are_documented(tmp_path, fitted):
    run_dir, data, _ = fitted()
    deploy, out = tmp_path / "deploy", tmp_path / "x.json"
    r = runner.invoke(app, ["export", str(run_dir), "--out", str(deploy), "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(json.loads(out.read_text())) == sorted(DOC["export"])
    x = np.load(data)["x"]
    images = []
    for i in range(2):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(x[i]).save(images[-1])
    r = runner.invoke(app, ["predict", str(deploy), *map(str, images), "--snr", "10", "--json", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(out.read_text())
    assert sorted(d) == sorted(DOC["predict"])
    assert len(d["predictions"]) == 2
    for row in d["predictions"]:
        assert sorted(row) == sorted(DOC["predict.predictions"])


def test_infer_and_search_json_keys_are_documented():
    """infer and search write their dataclasses' fields (asdict); a search is minutes, so its fields
    are compared without running one."""
    from bnpp_cli.deploy.client import RemotePrediction
    from bnpp_cli.run.candidates import Measured
    from bnpp_cli.run.search import SearchResult

    names = lambda cls: sorted(f.name for f in dataclasses.fields(cls))  # noqa: E731
    assert names(RemotePrediction) == sorted(DOC["infer"])
    assert names(SearchResult) == sorted(DOC["search"])
    assert names(Measured) == sorted(DOC["search.candidates"])


def test_readme_is_one_screen():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150)"


def test_no_work_round_references():
    """No prose or comment names a work round: grep -rniE 'issue [0-9]|session [0-9]|last session'."""
    paths = [p for p in ("README.md", "docs", "src", "benchmarks") if (REPO / p).exists()]
    # git grep: the tracked files and the new ones, not ignored build outputs (src/*.egg-info)
    r = subprocess.run(["git", "grep", "--untracked", "-niE", "issue [0-9]|session [0-9]|last session", "--", *paths],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1, f"work-round references found:\n{r.stdout[:4000]}"
