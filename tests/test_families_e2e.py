"""fit -> eval -> export -> predict -> serve at every layout of every family in the layout matrix.

Per family of tests/test_layouts.py (32 timm families), one split point per feature layout the
family has (nchw, nhwc, tokens with and without prefix tokens, token sequence, vector), picked from
the split points' layout metadata (what `bnpp profile` shows): a tiny seeded fit (24 random images,
3 steps), eval, export, predict against the in-memory pipeline (same probabilities, same top-1),
and the edge server in-process with two concurrent requests (one frame of three codes, one of one),
whose answers must be predict's under noise. The asked ratio is met within the stated rounding:
C' = round(...), so the code's symbols are within half a code channel (H'W' / 2 symbols) of
elements / R, and every reported ratio is elements / symbols.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from bnpp_cli.split.backbone import BackboneConfig
from bnpp_cli.split.graph import trace_model

from .test_layouts import FAMILIES, _kind, _model

RATIO = 16.0
IMAGES = 4


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """Server, clients and the reference share the CI cores: one intra-op thread each (test_serve.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_point_per_layout(traced) -> dict[str, object]:
    """{layout kind: the middle listed point of that kind} over the points whose layout is known."""
    by_kind: dict[str, list] = {}
    for p in traced.list_points():
        if p.layout is not None:
            by_kind.setdefault(_kind(p.layout), []).append(p)
    return {kind: points[len(points) // 2] for kind, points in by_kind.items()}


def _pngs(root, size: int, n: int = IMAGES) -> list[str]:
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _nonzero_checkpoint(model, path) -> str:
    """The model's weights as a checkpoint, with zero-initialised layers (timm's Mixer / ResMLP heads:
    every class equally likely, whatever the feature) given small seeded weights, so the answers
    depend on the code."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("weight") and value.dim() >= 2 and not value.any():
            value = 0.02 * torch.randn(value.shape, generator=g)
        state[key] = value.contiguous()
    save_file(state, str(path))
    return str(path)


def _check_ratio(codec) -> None:
    elements = math.prod(codec.feature_shape)
    assert abs(codec.code_symbols - elements / RATIO) <= math.prod(codec.map_code_shape[1:]) / 2, codec
    assert codec.bandwidth_ratio == elements / codec.code_symbols


def _serve_two_requests(deploy, paths, condition: float, seed: int):
    """Two concurrent requests to an in-process server: images 0-2 in one frame, image 3 alone."""
    from bnpp_cli.deploy.client import EdgeClient
    from bnpp_cli.deploy.halves import load_device
    from bnpp_cli.deploy.predict import prepare_images
    from bnpp_cli.deploy.protocol import Request
    from bnpp_cli.deploy.server import ServeConfig, ServerThread

    device = load_device(deploy / "device.safetensors")
    param = device.param_from_condition(condition)
    with torch.inference_mode():
        x = prepare_images(device, paths)
        frames = [device.compress(x[:3], param), device.compress(x[3:], param)]
    answers: list = [None, None]
    gate = threading.Barrier(2)

    with ServerThread(ServeConfig(deploy_dir=str(deploy), port=0, batch_window_ms=20.0)) as server:
        def send(i: int) -> None:
            with EdgeClient("127.0.0.1", server.port) as client:
                gate.wait()
                answers[i] = client.send(frames[i], Request(topk=10, condition=condition, seed=seed,
                                                            first_index=3 * i))
        threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = server.server.stats
    assert all(a is not None for a in answers)
    assert answers[0].batch >= 3 and stats.requests == 2 and stats.images == 4
    return [p for a in answers for p in a.predictions]


@pytest.mark.slow
@pytest.mark.parametrize("family, name, kwargs, size, kinds", FAMILIES, ids=[f[0].split(" ")[0] for f in FAMILIES])
def test_fit_eval_export_predict_serve_at_each_layout(tmp_path, family, name, kwargs, size, kinds):
    from bnpp_cli.deploy.export import export_halves
    from bnpp_cli.deploy.halves import load_device, load_pair
    from bnpp_cli.deploy.predict import PredictConfig, predict, prepare_images
    from bnpp_cli.link.config import ChannelConfig
    from bnpp_cli.run.evaluate import EvalConfig, evaluate_run
    from bnpp_cli.run.fit import FitConfig, fit_codec
    from bnpp_cli.run.pipeline import load_run
    from tests.helpers import tiny_npz

    model = _model(name, kwargs, size)
    points = one_point_per_layout(trace_model(model, (3, size, size), name))
    assert kinds <= set(points), family
    checkpoint = _nonzero_checkpoint(model, tmp_path / "backbone.safetensors")
    train = tiny_npz(tmp_path / "train.npz", n=24, size=size)
    test = tiny_npz(tmp_path / "test.npz", n=8, size=size, seed=1)
    paths = _pngs(tmp_path, size)
    for kind, point in points.items():
        where = f"{family} at {point.name} ({kind})"
        out = tmp_path / point.name
        cfg = FitConfig(backbone=BackboneConfig(name, num_classes=10, img_size=size, model_kwargs=dict(kwargs),
                                                checkpoint=checkpoint),
                        split=point.name, data=str(train), out=str(out / "run"), channel=ChannelConfig("awgn", 20.0),
                        ratio=RATIO, codec_epochs=1, batch_size=8, lr=1e-3, seed=0)
        codec = fit_codec(cfg).config.codec
        assert _kind(codec.layout) == kind and codec.feature_shape == point.shape, where
        _check_ratio(codec)

        run = load_run(out / "run")
        assert run.codec_config == codec, where  # the layout came back through config.json
        ev = evaluate_run(EvalConfig(run=str(out / "run"), data=str(test), conditions=[20.0], draws=1), run=run)
        assert ev.code_shape == list(codec.code_shape) and ev.bandwidth_ratio == codec.bandwidth_ratio, where
        assert ev.code_symbols == codec.code_symbols and ev.images == 8, where

        export = export_halves(out / "run", out / "deploy")
        assert export.code_shape == list(codec.code_shape), where
        local = predict(PredictConfig(str(out / "deploy"), top_k=10, seed=3), paths).predictions  # noiseless: the pipeline's answer exactly
        pipeline = run.pipeline.eval()
        with torch.no_grad():
            x = prepare_images(load_device(out / "deploy" / "device.safetensors"), paths)
            probs = pipeline(x, 0.0).softmax(1)
        names = run.config.classes or [str(i) for i in range(10)]
        for loc, row in zip(local, probs):
            best, second = row.topk(2).values.tolist()
            assert best - second < 1e-4 or loc.top[0][0] == names[int(row.argmax())], where  # same top-1
            got = dict(loc.top)
            assert np.allclose([got[c] for c in names], row.numpy(), rtol=0, atol=1e-5), where

        noisy = predict(PredictConfig(str(out / "deploy"), condition=20.0, top_k=10, seed=3), paths).predictions
        remote = _serve_two_requests(out / "deploy", paths, 20.0, 3)
        for rem, loc in zip(remote, noisy):
            assert [c for c, _ in rem] == [c for c, _ in loc.top], where
            assert np.allclose([p for _, p in rem], [p for _, p in loc.top], rtol=0, atol=1e-5), where
        device, edge = load_pair(out / "deploy")  # the noise really reaches the code the server decodes
        frame = device.compress(x[:1], device.param_from_condition(20.0))
        received = edge.receive(frame)
        assert not torch.equal(edge.air(received, device.param_from_condition(20.0), 3, 0), received), where
