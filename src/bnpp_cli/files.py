"""Atomic file writes: a reader (or a crash) never sees a half-written file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from .errors import BnppError


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path) on a temporary file beside `path`, fsync it, then rename it over `path`.

    The file gets the mode any new file would (0666 less the umask, usually 0644), not mkstemp's
    0600: an edge service running as another user must be able to read an export. A path that
    cannot be written (its parent is a file, no permission, disk full) is a one-line BnppError."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _cannot_write(path, e) from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # after write: a writer may have replaced the file
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise _cannot_write(path, e) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _cannot_write(path: Path, e: OSError) -> BnppError:
    named = Path(str(e.filename)) if e.filename else path
    where = "" if named == path or named.name.startswith(f".{path.name}.") else f" ({named})"
    if path.is_dir():
        return BnppError(f"cannot write '{path}': it is a directory", hint="choose another output path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return BnppError(f"cannot write '{path}': '{parent}' is a file, not a directory",
                                 hint="choose another output path")
            break
    return BnppError(f"cannot write '{path}': {(e.strerror or str(e)).lower()}{where}",
                     hint="choose another output path")


def check_writable(path: str | Path, kind: str = "file", what: str = "output") -> Path:
    """Before any work: ``path`` can be written as a ``kind`` ("file" | "directory"). A BnppError in one
    line when it is the other kind, when a parent is a file, or when the nearest existing parent is not
    writable; nothing is created. The one check every output path (run, export, --json, --plot,
    search directories) goes through."""
    if kind not in ("file", "directory"):
        raise ValueError(f"unknown kind {kind!r}; valid: file, directory")
    path = Path(path)
    if path.exists():
        if kind == "directory" and not path.is_dir():
            raise BnppError(f"{what} '{path}' is a file, not a directory", hint="choose another output path")
        if kind == "file" and path.is_dir():
            raise BnppError(f"{what} '{path}' is a directory, not a file", hint="choose another output path")
    target = path if path.exists() and kind == "directory" else path.parent
    parent = next((q for q in (target, *target.parents) if q.exists()), Path("."))
    if not parent.is_dir():
        raise BnppError(f"cannot write {what} '{path}': '{parent}' is a file, not a directory",
                        hint="choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BnppError(f"cannot write {what} '{path}': '{parent}' is not writable", hint="choose another output path")
    return path


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, default=_default) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
