"""Every output path is checked before any work, in one place (files.check_writable): one line, exit 2."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from bnpp_cli.cli import app
from bnpp_cli.errors import BnppError
from bnpp_cli.files import check_writable

from .helpers import tiny_npz


def test_check_writable_names_the_bad_path(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(BnppError, match="is a file, not a directory"):
        check_writable(f, "directory", "run directory")
    with pytest.raises(BnppError, match=f"'{f}' is a file, not a directory"):
        check_writable(f / "sub" / "out.json", "file")
    with pytest.raises(BnppError, match="is a directory, not a file"):
        check_writable(tmp_path, "file")
    assert check_writable(tmp_path / "new" / "deeper", "directory") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing created by the check


def test_check_writable_refuses_an_unwritable_parent(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    real = os.access  # root may write anywhere: the permission answer is the one os.access gives a user
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(ro) else real(p, mode))
    with pytest.raises(BnppError, match=f"'{ro}' is not writable"):
        check_writable(ro / "run", "directory")


def test_fit_out_at_a_file_is_one_line_before_any_work(tmp_path):
    data = tiny_npz(tmp_path / "d.npz")
    f = tmp_path / "taken"
    f.write_text("x")
    r = CliRunner().invoke(app, ["fit", "test_resnet", "--num-classes", "10", "--img-size", "32", "--split", "layer2",
                                 "--ratio", "8", "--data", str(data), "--out", str(f)])
    assert r.exit_code == 2 and "is a file, not a directory" in r.output and "Traceback" not in r.output, r.output


def test_eval_and_export_check_their_outputs_before_the_run_is_read(tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    missing_run = tmp_path / "no_run"  # never read: the output check comes first
    r = CliRunner().invoke(app, ["eval", str(missing_run), "--data", "x.npz", "--plot", str(f / "acc.png")])
    assert r.exit_code == 2 and "is a file, not a directory" in r.output, r.output
    r = CliRunner().invoke(app, ["export", str(missing_run), "--out", str(f)])
    assert r.exit_code == 2 and "is a file, not a directory" in r.output, r.output


def test_a_bad_npz_gets_our_message_never_advice_to_unpickle(tmp_path):
    import zipfile

    import numpy as np

    from bnpp_cli.data.datasets import load_dataset
    from bnpp_cli.errors import DataError

    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(bytes(range(100)))
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object))
    objects = tmp_path / "objects.npz"
    with zipfile.ZipFile(objects, "w") as z:
        z.write(obj, "x.npy")
        z.write(obj, "y.npy")
    for path in (garbage, objects):
        with pytest.raises(DataError) as e:
            load_dataset(str(path), input_size=(32, 32), train=True)
        message = str(e.value)
        assert "expected x (N, H, W, 3) uint8" in message and "never loads pickled data" in message, message
        assert "allow_pickle" not in message and "pickle.load" not in message
