"""The benchmarks' contracts, checked without running a fit: every results file records the command
that wrote it, and every benchmark script imports only the standard library, torch, numpy,
matplotlib, Pillow (a bnpp dependency: the JPEG baseline), bnpp's public API (``bnpp_cli`` itself,
never a sub-module, and only names it exports) and the shared ``harness`` module."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
RESULTS = BENCHMARKS / "results"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))
RESULT_FILES = sorted(p for p in RESULTS.rglob("*") if p.suffix in (".json", ".jsonl") and "runs" not in p.parts)

THIRD_PARTY = {"torch", "numpy", "matplotlib", "PIL"}
LOCAL = {"harness"}


def _exported_names() -> set[str]:
    """The keys of ``_EXPORTS`` in bnpp_cli/__init__.py, read with ast (no torch import)."""
    tree = ast.parse((REPO / "src" / "bnpp_cli" / "__init__.py").read_text())
    for node in ast.walk(tree):
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(
            node, "target", None)
        if isinstance(target, ast.Name) and target.id == "_EXPORTS" and isinstance(node.value, ast.Dict):
            return {ast.literal_eval(k) for k in node.value.keys if k is not None} | {"__version__"}
    raise AssertionError("bnpp_cli/__init__.py has no _EXPORTS dict")


def test_there_is_something_to_check():
    assert len(SCRIPTS) >= 10 and (BENCHMARKS / "harness.py") in SCRIPTS
    assert len(RESULT_FILES) >= 10


def _is_command(command) -> bool:
    """A command line as run from the repository root, ``bnpp ...`` or ``python benchmarks/X.py ...``
    with X.py a script of this checkout."""
    if not isinstance(command, str):
        return False
    if command.startswith("bnpp "):
        return True
    words = command.split()
    return len(words) >= 2 and words[0] == "python" and words[1].startswith("benchmarks/") and (REPO / words[1]).is_file()


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: str(p.relative_to(RESULTS)))
def test_every_results_file_records_its_command(path: Path):
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert rows, f"{path.name} has no rows"
        missing = [i for i, row in enumerate(rows, 1) if not _is_command(row.get("command"))]
        assert not missing, f"{path.name}: rows {missing} record no command line"
    else:
        doc = json.loads(path.read_text())
        assert isinstance(doc, dict), f"{path.name} is not a JSON object"
        assert _is_command(doc.get("command")), f"{path.name} records no top-level command line: {doc.get('command')!r}"


def _bad_imports(path: Path, exported: set[str]) -> list[str]:
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == "bnpp_cli":
                    if alias.name != "bnpp_cli":
                        bad.append(f"line {node.lineno}: import {alias.name} (a bnpp_cli sub-module)")
                elif not (top in sys.stdlib_module_names or top in THIRD_PARTY or alias.name in LOCAL):
                    bad.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            top = module.split(".")[0]
            if node.level:
                bad.append(f"line {node.lineno}: relative import from {'.' * node.level}{module}")
            elif top == "bnpp_cli":
                if module != "bnpp_cli":
                    bad.append(f"line {node.lineno}: from {module} import ... (a bnpp_cli sub-module)")
                else:
                    bad += [f"line {node.lineno}: bnpp_cli does not export {a.name}" for a in node.names
                            if a.name not in exported]
            elif not (top in sys.stdlib_module_names or top in THIRD_PARTY or module in LOCAL):
                bad.append(f"line {node.lineno}: from {module} import ..." +
                           (" (another benchmark: shared helpers belong in harness)"
                            if (BENCHMARKS / f"{module}.py").is_file() else ""))
    return bad


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_imports_only_the_public_api_and_the_harness(path: Path):
    bad = _bad_imports(path, _exported_names())
    assert not bad, f"{path.name}:\n  " + "\n  ".join(bad)


def test_import_check_catches_a_deep_import(tmp_path: Path):
    script = tmp_path / "x.py"
    script.write_text("import json\nfrom bnpp_cli import FitConfig\nfrom bnpp_cli.run.fit import fit_codec\n"
                      "from rate_accuracy import commit\nimport timm\nfrom bnpp_cli import not_a_name\n")
    bad = _bad_imports(script, _exported_names())
    assert len(bad) == 4, bad
    assert "line 3" in bad[0] and "line 4" in bad[1] and "line 5" in bad[2] and "not_a_name" in bad[3]


def test_readme_names_only_results_files_that_exist():
    """Every ``results/NAME`` the benchmarks README names is committed (a removed file is cited as
    ``git show COMMIT:benchmarks/results/NAME``); fitted runs under results/runs are regenerated."""
    text = (BENCHMARKS / "README.md").read_text()
    missing = set()
    for m in re.finditer(r"(git show [0-9a-f]{7,40}:)?(?:benchmarks/)?results/([A-Za-z0-9_.{},*/-]+)", text):
        name = m.group(2).rstrip(".,/")
        if m.group(1) or name.split("/")[0] == "runs" or "*" in name or "S_Rx" in name:
            continue
        braces = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", name)
        names = [braces[1] + alt + braces[3] for alt in braces[2].split(",")] if braces else [name]
        missing.update(n for n in names if not (RESULTS / n).exists())
    assert not missing, f"benchmarks/README.md names results files that are not committed: {sorted(missing)}"
