"""The Python API as a product: the version, and docstrings that document every field."""

from __future__ import annotations

import dataclasses
import io
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


def _attributes(doc: str) -> str:
    assert "Attributes:" in doc
    return doc.split("Attributes:", 1)[1]


def test_every_exported_dataclass_documents_every_field():
    import bnpp_cli.deploy.client as client
    import bnpp_cli.deploy.export as export
    import bnpp_cli.deploy.predict as predict
    import bnpp_cli.run.evaluate as evaluate
    import bnpp_cli.split.profile as profile

    classes = [getattr(bnpp_cli, n) for n in bnpp_cli.__all__ if dataclasses.is_dataclass(getattr(bnpp_cli, n))]
    classes += [profile.PointProfile, profile.ModelProfile, predict.Prediction, predict.PredictResult,
                client.Answer, client.RemotePrediction, evaluate.EvalResult, export.ExportConfig,
                export.ExportResult]
    missing = {}
    for cls in classes:
        doc = cls.__dict__.get("__doc__") or ""
        if doc.startswith(cls.__name__ + "("):  # dataclass's generated signature, not a docstring
            doc = ""
        documented = _attributes(doc) if "Attributes:" in doc else ""
        lacking = [f.name for f in dataclasses.fields(cls) if f"{f.name}:" not in documented]
        if lacking:
            missing[cls.__name__] = lacking
    assert not missing, missing
    assert {"FitConfig", "RunConfig", "ChannelConfig", "BackboneConfig"} <= {c.__name__ for c in classes}


def test_fit_progress_says_when_it_calibrates():
    from rich.console import Console

    from bnpp_cli.cli.progress import FitProgress

    console = Console(file=io.StringIO(), force_terminal=False, width=200)
    progress = FitProgress(console=console)
    progress("calibrate", {"step": "length table"})
    progress("calibrate", {"step": "entropy tables", "images": 512})
    assert console.file.getvalue().splitlines() == ["calibrating the length table ...",
                                                    "calibrating the entropy tables on 512 images ..."]
