"""One thread policy for every latency bnpp reports (bnpp_cli.timing): the count used, stated, and a
busy machine flagged instead of its times presented as the model's cost."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bnpp_cli import timing
from bnpp_cli.cli import app
from bnpp_cli.deploy.export import export_halves
from bnpp_cli.deploy.predict import PredictConfig, predict
from bnpp_cli.errors import BnppError
from bnpp_cli.split.backbone import BackboneConfig
from bnpp_cli.split.profile import ProfileConfig, profile_model


def test_threads_is_set_inside_the_block_and_restored():
    before = torch.get_num_threads()
    with timing.threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [0, -1, timing.cores() + 1, True, 1.5])
def test_a_thread_count_the_machine_cannot_give_is_refused(bad):
    with pytest.raises(BnppError, match=r"`threads` .* is not a thread count") as e:
        timing.check_threads(bad)
    assert f"1 .. {timing.cores()}" in e.value.hint


def test_a_busy_machine_is_flagged_by_its_load_or_its_spread():
    cores = timing.cores()
    assert timing.busy_warning([5.0, 5.1, 5.2], 1, load_before=0.1) is None
    loaded = timing.busy_warning([5.0, 5.1, 5.2], 1, load_before=cores + 0.1)  # every core taken already
    assert loaded and f"load average {cores + 0.1:.1f} with {cores} cores" in loaded
    spread = timing.busy_warning([5.0, 5.0, 5.0, 12.0], 1, load_before=None)  # one run 2.4x the median
    assert spread and "slowest run 2.4x the median" in spread
    s = timing.summary([4.0, 6.0, 5.0], 1, 0.0)
    assert (s["median"], s["min"], s["max"], s["runs"], s["threads"], s["warning"]) == (5.0, 4.0, 6.0, 3, 1, None)


def _recording_threads(monkeypatch, module, attr):
    """Wrap ``module.attr`` so each call records torch's thread count while it runs."""
    seen = []
    real = getattr(module, attr)

    def wrapped(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(module, attr, wrapped)
    return seen


def test_profile_times_on_one_thread_by_default_and_says_so(monkeypatch):
    from bnpp_cli.split import profile as prof

    torch.set_num_threads(2 if timing.cores() >= 2 else 1)
    seen = _recording_threads(monkeypatch, prof, "_measure")
    p = profile_model(ProfileConfig(BackboneConfig("test_resnet", num_classes=10, img_size=32), repeats=2))
    assert seen == [1] and p.latency_threads == 1
    d = p.to_dict()
    assert d["latency_threads"] == 1 and "latency_warning" in d and "latency_load" in d
    r = CliRunner().invoke(app, ["profile", "test_resnet", "--num-classes", "10", "--img-size", "32", "--repeats", "2"])
    assert r.exit_code == 0 and "batch 1, 1 thread," in r.output, r.output


def test_profile_refuses_a_bad_thread_count_in_one_line():
    r = CliRunner().invoke(app, ["profile", "test_resnet", "--threads", "0"])
    assert r.exit_code == 2 and "--threads 0 is not a thread count" in r.output and "Traceback" not in r.output, r.output


def test_predict_times_both_halves_on_the_policy_threads(tmp_path, fitted, monkeypatch):
    from bnpp_cli.deploy import predict as pred

    export_halves(fitted().run, tmp_path / "deploy")
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    seen = _recording_threads(monkeypatch, pred, "_run_batch")
    result = predict(PredictConfig(str(tmp_path / "deploy")), x)
    assert seen and set(seen) == {1}  # warm-up and the 3 timed batches, all on one thread
    for side in ("device", "edge"):
        lat = result.latency_ms[side]
        assert lat["threads"] == 1 and lat["runs"] == 3 and lat["min"] <= lat["median"] <= lat["max"]
        assert lat["cores"] == timing.cores() and "warning" in lat
    img = tmp_path / "a.png"
    Image.fromarray(x[0].numpy()).save(img)
    r = CliRunner().invoke(app, ["predict", str(tmp_path / "deploy"), str(img)])
    assert r.exit_code == 0 and "1 thread, ms per image" in r.output, r.output


def test_serve_and_infer_run_their_halves_on_the_policy_threads(tmp_path, fitted, monkeypatch):
    from bnpp_cli.deploy import backend
    from bnpp_cli.deploy.client import infer_images
    from bnpp_cli.deploy.server import ServeConfig, ServerThread

    with pytest.raises(BnppError, match="`threads` 0 is not a thread count"):
        ServeConfig(str(tmp_path), threads=0)
    export_halves(fitted().run, tmp_path / "deploy")
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(img)
    edge_threads = _recording_threads(monkeypatch, backend.BnppBackend, "forward")
    torch.set_num_threads(2 if timing.cores() >= 2 else 1)
    with ServerThread(ServeConfig(str(tmp_path / "deploy"), port=0)) as server:
        answers = infer_images(tmp_path / "deploy", [str(img)], f"127.0.0.1:{server.port}")
    assert edge_threads == [1]  # the edge worker's compute
    assert answers[0].device_threads == 1 and answers[0].to_dict()["device_threads"] == 1
