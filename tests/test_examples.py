"""examples/ run as they are shown: each script as a subprocess, on the public API only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"split_and_profile.py", "fit_and_deploy.py"}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_imports_only_the_top_level_api(script):
    tree = ast.parse(script.read_text())
    bnpp = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
            and any(name.startswith("bnpp_cli") for name in
                    ([node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]))]
    assert bnpp and all(isinstance(node, ast.ImportFrom) and node.module == "bnpp_cli" for node in bnpp)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(script, tmp_path):
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    if script.name == "split_and_profile.py":
        assert "exact=True" in done.stdout and "exact=False" not in done.stdout
        assert "recommended split:" in done.stdout
    if script.name == "fit_and_deploy.py":
        assert "fitted in" in done.stdout and "noiseless" in done.stdout
        assert done.stdout.count("816 bytes on the wire") == 4  # file, PIL image, two tensor rows
    assert not list(tmp_path.iterdir())  # nothing left behind
