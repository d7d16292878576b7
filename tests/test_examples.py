"""examples/ run as a user runs them: each script in its own process, from a temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_examples_are_all_tested():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == ["fit_and_deploy.py", "split_and_profile.py"]


@pytest.mark.parametrize("script", ["fit_and_deploy.py", "split_and_profile.py"])
def test_example_uses_only_the_top_level_api(script):
    source = (EXAMPLES / script).read_text()
    assert "from bnpp_cli." not in source and "import bnpp_cli." not in source


def test_split_and_profile_cuts_exactly_and_recommends(tmp_path):
    out = _run("split_and_profile.py", cwd=tmp_path)
    cuts = [line for line in out.splitlines() if "exact=" in line]
    assert len(cuts) >= 4 and all(line.endswith("exact=True") for line in cuts)
    assert "recommended split:" in out


def test_fit_and_deploy_runs_the_whole_path(tmp_path):
    out = _run("fit_and_deploy.py", str(tmp_path / "work"), cwd=tmp_path)
    assert "fitted" in out and "noiseless" in out
    bytes_line = [line for line in out.splitlines() if "bytes on the wire" in line]
    assert len(bytes_line) == 1 and int(bytes_line[0].split()[0]) > 0
    assert (tmp_path / "work" / "run" / "config.json").is_file()
    assert list((tmp_path / "work" / "deploy").iterdir())
    assert not (tmp_path / "runs").exists()  # nothing written outside the directory it was given
