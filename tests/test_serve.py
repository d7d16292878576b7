"""`bnpp serve` / `bnpp infer`: predict's answers over loopback, under load and under attack."""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from bnpp_cli.cli import app
from bnpp_cli.errors import ServeError
from bnpp_cli.deploy.export import export_halves
from bnpp_cli.deploy.halves import load_device, load_edge
from bnpp_cli.link.receiver import air_generator
from bnpp_cli.deploy.predict import PredictConfig, predict, prepare_images
from bnpp_cli.deploy.client import EdgeClient, infer_images, parse_address
from bnpp_cli.deploy.protocol import REQUEST_HEADER, Request, encode_request, parse_request_header
from bnpp_cli.deploy.server import ServeConfig, ServerThread

from .conftest import REPO

runner = CliRunner()
LOOPBACK = "127.0.0.1"


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread():
    """Server, clients and the reference all share the 2 CI cores (and other jobs): torch's
    intra-op threads would spin-wait on each other for whole time slices (300x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _deploy(fitted, root: Path, channel: str, condition: float) -> Path:
    export_halves(fitted(channel=channel, condition=condition).run, root / "deploy")
    return root / "deploy"


def _images(root: Path, n: int = 4) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        path = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def analog(tmp_path_factory, fitted) -> Path:
    return _deploy(fitted, tmp_path_factory.mktemp("analog"), "awgn", 20.0)


@pytest.fixture(scope="module")
def digital(tmp_path_factory, fitted) -> Path:
    return _deploy(fitted, tmp_path_factory.mktemp("digital"), "bec", 0.01)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    return _images(tmp_path_factory.mktemp("images"))


def _server(deploy: Path, **kw) -> ServerThread:
    return ServerThread(ServeConfig(deploy_dir=str(deploy), port=0, **kw))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _assert_same(remote, local, atol=1e-5):
    """Same classes in the same order, probabilities equal up to batched-vs-single float rounding."""
    assert [c for c, _ in remote] == [c for c, _ in local]
    assert np.allclose([p for _, p in remote], [p for _, p in local], rtol=0, atol=atol)


# ---- protocol -------------------------------------------------------------------------------
def test_request_header_round_trip_and_byte_layout():
    req = Request(topk=3, condition=7.5, seed=-2, first_index=9, close=True)
    data = encode_request(b"FRAME", req, token="s3cret")
    assert data[:6] == b"BNPQ\x01\x01" and len(data) == REQUEST_HEADER + 6 + 5 == 30 + 11
    assert struct.unpack_from("<HdqIH", data, 6) == (3, 7.5, -2, 9, 6)
    assert data[30:36] == b"s3cret" and data[36:] == b"FRAME"
    assert parse_request_header(data[:REQUEST_HEADER]) == (req, 6)
    noiseless = encode_request(b"", Request(condition=None))
    assert math.isnan(struct.unpack_from("<d", noiseless, 8)[0])
    assert parse_request_header(noiseless[:REQUEST_HEADER])[0].condition is None


@pytest.mark.parametrize("offset,value,message", [
    (0, b"XXXX", "bad request magic"), (4, b"\x02", "unsupported protocol version 2"),
    (5, b"\x80", "unknown request flags"), (6, b"\x00\x00", "top-k 0"), (28, b"\xff\xff", "token length 65535"),
])
def test_bad_request_headers_are_named(offset, value, message):
    data = bytearray(encode_request(b"", Request()))
    data[offset:offset + len(value)] = value
    with pytest.raises(ServeError, match=message):
        parse_request_header(bytes(data[:REQUEST_HEADER]))


def test_bad_client_arguments():
    with pytest.raises(ServeError, match="HOST:PORT"):
        parse_address("localhost")
    assert parse_address("127.0.0.1:8470") == ("127.0.0.1", 8470)
    with pytest.raises(ServeError, match="top-k 0"):
        encode_request(b"", Request(topk=0))
    with pytest.raises(ServeError, match="port 70000"):
        ServeConfig(port=70000)
    with pytest.raises(ServeError, match="read_timeout_s 0"):
        ServeConfig(read_timeout_s=0)


# ---- end to end: infer == predict ---------------------------------------------------------------
@pytest.mark.parametrize("kind,flag,condition", [("analog", "--snr", 10.0), ("digital", "--erasure", 0.05)])
def test_infer_matches_predict(request, images, tmp_path, kind, flag, condition):
    deploy = request.getfixturevalue(kind)
    local = predict(PredictConfig(str(deploy), condition=condition, top_k=3, seed=4), images).predictions
    with _server(deploy) as server:
        out = tmp_path / "infer.json"
        r = runner.invoke(app, ["infer", str(deploy), *images, "--server", f"{LOOPBACK}:{server.port}",
                                flag, str(condition), "--seed", "4", "--top", "3", "--json", str(out)])
        assert r.exit_code == 0, r.output
        remote = json.loads(out.read_text())
        # without noise (NaN condition on the wire), too
        plain = infer_images(deploy, images, f"{LOOPBACK}:{server.port}", topk=3)
        # the noise really is per image index: numbering image 1 as image 0 changes its answer
        device = load_device(deploy / "device.safetensors")
        param = device.param_from_condition(condition)
        with torch.inference_mode(), EdgeClient(LOOPBACK, server.port) as client:
            frame = device.payload(device(prepare_images(device, images[1:2]), param))
            misnumbered = client.send(frame, Request(3, condition, 4, first_index=0)).predictions[0]
    assert len(remote) == len(images)
    for rem, loc in zip(remote, local):
        _assert_same([tuple(t) for t in rem["top"]], loc.top)
        assert rem["request_bytes"] == REQUEST_HEADER + loc.frame_bytes and rem["frame_bytes"] == loc.frame_bytes
        assert rem["payload_bytes"] == loc.payload_bytes
        assert rem["device_ms"] > 0 and rem["edge_ms"] > 0 and rem["network_ms"] >= 0
    assert "request " in r.output and "B request header" in r.output and "network" in r.output
    for rem, loc in zip(plain, predict(PredictConfig(str(deploy), top_k=3, seed=0), images).predictions):
        _assert_same(rem.top, loc.top)
    assert max(abs(a - b) for (_, a), (_, b) in zip(misnumbered, local[1].top)) > 1e-4


def test_a_batched_request_matches_predict(analog, images):
    local = predict(PredictConfig(str(analog), condition=12.0, top_k=2, seed=1), images).predictions
    device = load_device(analog / "device.safetensors")
    param = device.param_from_condition(12.0)
    with torch.inference_mode():
        x = prepare_images(device, images)
        z = torch.cat([device(x[i:i + 1], param) for i in range(len(images))])
    with _server(analog) as server, EdgeClient(LOOPBACK, server.port) as client:
        answer = client.send(device.payload(z), Request(2, 12.0, 1, 0))
    assert answer.batch == len(images)
    for rem, loc in zip(answer.predictions, local):
        _assert_same(rem, loc.top)


# ---- robustness -----------------------------------------------------------------------------------
def _exchange(port: int, data: bytes, half_close: bool = False, timeout: float = 5.0,
              delay_s: float = 0.0) -> tuple[dict | None, bool]:
    """Send ``data`` (byte by byte every ``delay_s`` if set): (the answer or None, connection closed)."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        try:
            if delay_s:
                for b in data:
                    s.sendall(bytes([b]))
                    time.sleep(delay_s)
            else:
                s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            return None, True
        answer, buf = None, b""
        try:
            while len(buf) < 4 or len(buf) < 4 + struct.unpack_from("<I", buf)[0]:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            if len(buf) >= 4:
                answer = json.loads(buf[4:4 + struct.unpack_from("<I", buf)[0]])
            s.settimeout(0.5)
            closed = s.recv(1) == b""
        except ConnectionResetError:
            closed = True
        except socket.timeout:
            closed = False
    return answer, closed


@pytest.fixture(scope="module")
def codes(analog):
    """Good frames of the analog export: (one image, 33 images, the edge half)."""
    device = load_device(analog / "device.safetensors")
    with torch.inference_mode():
        x = torch.randn(33, 3, 32, 32, generator=torch.Generator().manual_seed(5))
        return device.payload(device(x[:1])), device.payload(device(x)), load_edge(analog / "edge.safetensors")


def _expected(edge, frame: bytes, req: Request) -> list[list[tuple[str, float]]]:
    """What predict computes for this request, one image at a time."""
    z = edge.receive(frame)
    param = edge.param_from_condition(req.condition) if req.condition is not None else 0.0
    out = []
    with torch.inference_mode():
        for i in range(z.shape[0]):
            z_hat = edge.channel(z[i:i + 1], param, generator=air_generator(req.seed, req.first_index + i))
            p, k = edge(z_hat, param).softmax(1)[0].topk(req.topk)
            out.append([(edge.classes[c], float(v)) for v, c in zip(p, k.tolist())])
    return out


def _good_client_works(port: int, frame: bytes, edge) -> None:
    req = Request(2, 15.0, 11, 0)
    with EdgeClient(LOOPBACK, port, timeout_s=10) as client:
        _assert_same(client.send(frame, req).predictions[0], _expected(edge, frame, req)[0])


def test_malformed_requests_get_an_error_or_a_closed_connection(analog, codes):
    one, many, edge = codes
    good = encode_request(one, Request(2, 15.0, 11, 0))
    foreign = bytearray(one)
    foreign[8:24] = bytes(16)  # another export's pair id
    corrupt = bytearray(one)
    corrupt[-1] ^= 0xFF  # payload no longer matches its CRC
    bad_version = bytearray(good)
    bad_version[4] = 9
    cases = {
        "bad magic": (b"SSH-2.0-OpenSSH_9.6\r\n" + bytes(30), False, "bad request magic"),  # HTTP: test_trust.py
        "wrong version": (bytes(bad_version), False, "unsupported protocol version 9"),
        "bad frame magic": (encode_request(b"XXXX" + one[4:], Request()), False, "bad magic"),
        "truncated": (good[:len(good) // 2], True, "truncated"),
        "oversized": (encode_request(many, Request()), False, "over this server's limit"),
        "random bytes": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), True, ""),
        "empty": (b"", True, None),
    }
    keep_alive = {  # whole frames that are wrong: answered, and the connection stays usable
        "wrong pair id": (encode_request(bytes(foreign), Request()), "does not match this edge half"),
        "bad CRC": (encode_request(bytes(corrupt), Request()), "CRC"),
        "condition out of range": (encode_request(one, Request(condition=99.0)), "SNR 99.0 dB is out of range"),
    }
    with _server(analog, read_timeout_s=1.0, idle_timeout_s=3.0, max_images=32) as server:
        for name, (data, half_close, message) in cases.items():
            answer, closed = _exchange(server.port, data, half_close=half_close)
            assert closed, name
            if message is None:
                assert answer is None, name
            else:
                assert answer is not None and answer["ok"] is False and message in answer["error"], (name, answer)
            _good_client_works(server.port, one, edge)
        for name, (data, message) in keep_alive.items():
            answer, closed = _exchange(server.port, data + good)
            assert answer["ok"] is False and message in answer["error"] and not closed, (name, answer)
            _good_client_works(server.port, one, edge)
        # a slow client (one byte a second) is cut off by the 1 s read timeout, while others are served
        t0 = time.perf_counter()
        result = {}
        slow = threading.Thread(target=lambda: result.update(r=_exchange(server.port, good, delay_s=1.0, timeout=10)))
        slow.start()
        _good_client_works(server.port, one, edge)
        slow.join(15)
        answer, closed = result["r"]
        assert closed and 1.0 <= time.perf_counter() - t0 < 6.0
        assert answer is None or "not received within 1 s" in answer["error"]
        # an idle keep-alive connection is closed after idle_timeout_s
        with socket.create_connection((LOOPBACK, server.port), timeout=10) as s:
            t0 = time.perf_counter()
            assert s.recv(1) == b"" and 2.5 < time.perf_counter() - t0 < 8
        _good_client_works(server.port, one, edge)
        assert server.server.stats.errors >= len(cases) + len(keep_alive) - 1


def _traced_mib() -> float:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] / 2**20


def test_no_memory_growth_over_1000_bad_frames(analog, codes):
    one, _, edge = codes
    corrupt = bytearray(one)
    corrupt[-1] ^= 0xFF
    bad_crc = encode_request(bytes(corrupt), Request())
    bad_magic = b"JUNK" + bytes(40)

    def hammer(n: int) -> None:
        for i in range(n // 2):  # half on fresh connections (closed), half on one keep-alive connection
            answer, closed = _exchange(server.port, bad_magic)
            assert closed and answer["ok"] is False
        with socket.create_connection((LOOPBACK, server.port), timeout=10) as s:
            for i in range(n - n // 2):
                s.sendall(bad_crc)
                (length,) = struct.unpack("<I", s.recv(4, socket.MSG_WAITALL))
                assert b"CRC" in s.recv(length, socket.MSG_WAITALL)

    with _server(analog) as server:
        tracemalloc.start()
        try:
            hammer(200)  # warm-up: caches, lazily created objects
            before = _traced_mib()
            hammer(1000)
            after = _traced_mib()
        finally:
            tracemalloc.stop()
        _good_client_works(server.port, one, edge)
        assert server.server.stats.errors >= 1200
    assert after - before < 1.0, f"traced memory grew by {after - before:.2f} MiB over 1000 bad frames"


def test_many_idle_connections_cost_nothing_and_are_capped(analog, codes):
    one, _, edge = codes
    cap = 300
    with _server(analog, max_connections=cap) as server:
        idle = [socket.create_connection((LOOPBACK, server.port), timeout=10) for _ in range(cap - 1)]
        try:
            _good_client_works(server.port, one, edge)  # served beside cap - 1 idle devices
            idle.append(socket.create_connection((LOOPBACK, server.port), timeout=10))
            for _ in range(100):  # until the server has registered them all
                if len(server.server._conns) >= cap:
                    break
                time.sleep(0.05)
            with socket.create_connection((LOOPBACK, server.port), timeout=10) as extra:
                assert extra.recv(1) == b""  # over the cap: closed at once
        finally:
            for s in idle:
                s.close()
        _good_client_works(server.port, one, edge)


def test_16_concurrent_clients_lose_nothing_and_batch(analog, codes):
    _, many, edge = codes
    device = load_device(analog / "device.safetensors")
    with torch.inference_mode():
        x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(8))
        frames = [device.payload(device(x[i:i + 1], device.param_from_condition(10.0))) for i in range(16)]
    per_client = 8
    requests = {(c, k): Request(3, 10.0, seed=100 * c + k, first_index=k) for c in range(16) for k in range(per_client)}
    expected = {key: _expected(edge, frames[key[0]], req)[0] for key, req in requests.items()}
    got, errors = {}, []

    def client(c: int) -> None:
        try:
            with EdgeClient(LOOPBACK, server.port, timeout_s=30) as cl:
                for k in range(per_client):
                    got[(c, k)] = cl.send(frames[c], requests[(c, k)])
        except Exception as e:  # reported below
            errors.append(repr(e))

    with _server(analog, batch_window_ms=2.0, max_batch=32) as server:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stats = server.server.stats
    assert not errors and len(got) == 16 * per_client
    for key, answer in got.items():
        _assert_same(answer.predictions[0], expected[key])
    assert stats.requests == stats.images == 16 * per_client and stats.errors == 0
    assert stats.batches < stats.requests  # concurrent requests shared tail calls
    assert max(a.batch for a in got.values()) > 1


# ---- the command line -------------------------------------------------------------------------------
def _cli_error(args, message):
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "Error: " in r.output and message in r.output, r.output
    return r.output


def test_command_line_errors_are_one_line(analog, images, tmp_path):
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        _cli_error(["serve", str(analog), "--port", str(port)], f"cannot listen on {LOOPBACK}:{port}")
    _cli_error(["serve", str(tmp_path / "nowhere")], "does not exist")
    _cli_error(["infer", str(tmp_path / "nowhere"), *images, "--server", f"{LOOPBACK}:8470"], "does not exist")
    free = _free_port()
    _cli_error(["infer", str(analog), *images, "--server", f"{LOOPBACK}:{free}"],
               f"cannot reach the edge server at {LOOPBACK}:{free}")
    _cli_error(["infer", str(analog), *images, "--server", "nowhere"], "is not HOST:PORT")
    _cli_error(["infer", str(analog), *images, "--server", f"{LOOPBACK}:{free}", "--snr", "99"], "SNR 99.0 dB")
    with _server(analog, token="s3cret") as server:
        address = f"{LOOPBACK}:{server.port}"
        _cli_error(["infer", str(analog), *images, "--server", address, "--token", "wrong"], "authentication failed")
        _cli_error(["infer", str(analog), *images, "--server", address], "authentication failed")
        r = runner.invoke(app, ["infer", str(analog), images[0], "--server", address, "--token", "s3cret"])
        assert r.exit_code == 0 and "request " in r.output and "wire header" in r.output, r.output


def test_edge_only_deploy_dir_serves(analog, tmp_path, codes):
    one, _, edge = codes
    edge_only = tmp_path / "edge_only"
    edge_only.mkdir()
    (edge_only / "edge.safetensors").write_bytes((analog / "edge.safetensors").read_bytes())
    with _server(edge_only) as server:
        _good_client_works(server.port, one, edge)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_a_signal(analog, codes, sig):
    one, _, edge = codes
    proc = subprocess.Popen([sys.executable, "-m", "bnpp_cli", "serve", str(analog), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=dict(os.environ, COLUMNS="200"))
    try:
        line = proc.stderr.readline()  # "Serving DIR on HOST:PORT ..."
        assert "Serving" in line, line
        port = int(line.split(" on ")[1].split(" ")[0].rsplit(":", 1)[1])
        _good_client_works(port, one, edge)
        proc.send_signal(sig)
        rest = proc.communicate(timeout=20)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "Stopped: 1 requests, 1 images" in rest and "Traceback" not in rest


# ---- real data (slow) ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_resnet18_infer_matches_predict(cifar10_dir, resnet18_cifar10, tmp_path):
    from bnpp_cli.split.backbone import BackboneConfig
    from bnpp_cli.link.config import ChannelConfig
    from bnpp_cli.run.fit import FitConfig, fit_codec

    fit_codec(FitConfig(backbone=BackboneConfig("resnet18", checkpoint=str(resnet18_cifar10), num_classes=10,
                                                img_size=32),
                        split="layer3", data=str(cifar10_dir / "train.npz"), out=str(tmp_path / "run"),
                        channel=ChannelConfig("awgn", 20.0), ratio=64, codec_epochs=1, lr=1e-3, limit=5000))
    export_halves(tmp_path / "run", tmp_path / "deploy")
    test = np.load(cifar10_dir / "test.npz")
    paths, labels = [], []
    for i in range(16):
        paths.append(str(tmp_path / f"test{i}.png"))
        Image.fromarray(test["x"][i]).save(paths[-1])
        labels.append(str(test["class_names"][test["y"][i]]))
    local = predict(PredictConfig(str(tmp_path / "deploy"), condition=20.0, top_k=1, seed=0), paths).predictions
    with _server(tmp_path / "deploy") as server:
        remote = infer_images(tmp_path / "deploy", paths, f"{LOOPBACK}:{server.port}", condition=20.0, topk=1)
    assert [r.top[0][0] for r in remote] == [p.top[0][0] for p in local]
    assert sum(r.top[0][0] == y for r, y in zip(remote, labels)) >= 10  # the pair is a working classifier
