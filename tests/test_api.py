"""The Python API as a product: the version, and docstrings that document every field."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from typer.testing import CliRunner

import bnpp_cli
from bnpp_cli.cli import app

runner = CliRunner()


def test_version_prints_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"bnpp {bnpp_cli.__version__}"


def test_version_does_not_import_torch():
    code = ("import sys; from bnpp_cli.cli import main; sys.argv = ['bnpp', '--version']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"bnpp {bnpp_cli.__version__}"
