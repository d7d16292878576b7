"""Running exported halves on real images: `bnpp predict` (both halves in one process).

    image files, folders, globs --decode, fit to input size--> x, in batches
        --device half (PyTorch or ONNX Runtime): z --link.transmit: one wire frame per image-->
        --edge half: receive, simulated air interface, decoder + tail--> logits

Every image goes through the wire format in its own frame, as `bnpp infer` sends it, so the bytes
are what a device sends:

    payload_bytes   the code's bytes (float32 symbols, or packed n-bit levels)
    frame_bytes     payload_bytes + the wire header (link.wire): what `infer` hands its request
    (infer's request = frame + the request header, deploy.protocol)

The channel is simulated at the receiver (link.receiver), between the received symbols and the
decoder, with the noise of image i drawn from ``air_generator(seed, i)`` whatever the batch size,
so a remote edge given the same seed reproduces it exactly. Timing excludes a warm-up pass on the
first batch (graph building, allocator, thread pools: hundreds of ms that a running device pays
once); each image gets its batch's time divided by the batch size, and the result gives the
median and the spread over batches.
"""

from __future__ import annotations

import glob
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.batching import BatchTransform
from ..data.datasets import IMAGE_EXTENSIONS, read_image
from ..errors import BnppError, DataError, ExportError
from ..link.config import select_condition
from ..link import wire
from ..link.transmit import header_bytes, payload_bytes

RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")  # -int8: device.int8.onnx with edge.onnx


@dataclass
class Prediction:
    """One image's answer through the exported pair.

    Attributes:
        image: str; the image: its path, or "<image i>" for the i-th PIL image or tensor row given.
        top: list[tuple[str, float]]; (class name, softmax probability), best first; top_k of them.
        payload_bytes: int; this image's code bytes on the wire (wire header excluded); an
            entropy code's vary per image.
        frame_bytes: int; its wire frame, payload_bytes + the wire header (link.wire): what a
            device hands `bnpp infer`'s request.
        device_ms: float; its batch's device time (head + encoder + framing), in milliseconds,
            divided by the batch size; the warm-up pass excluded.
        edge_ms: float; its batch's edge time (receive, simulated air interface, decoder + tail),
            in milliseconds, divided by the batch size.
    """

    image: str
    top: list[tuple[str, float]]
    payload_bytes: int
    frame_bytes: int
    device_ms: float
    edge_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PredictResult:
    """What :func:`predict` returns: the answers, the bytes on the wire and the time per side.

    Attributes:
        predictions: list[Prediction]; one per image, in the order given (a folder's or a glob's
            files sorted by name).
        runtime: str; the runtime that ran the halves (PredictConfig.runtime).
        batch_size: int; images per device / edge pass (PredictConfig.batch_size).
        payload_bytes: int; code bytes per image, as in each Prediction (their mean, rounded, for an
            entropy code, whose sizes vary).
        wire_header_bytes: int; the wire header's bytes per frame (their mean where sizes vary).
        frame_bytes: int; payload_bytes + wire_header_bytes: one image's frame.
        latency_ms: dict[str, dict[str, float]]; {"device": ..., "edge": ...}, each {"median",
            "min", "max"} over the batches of the per-image time (batch time / batch size), in
            milliseconds; the warm-up pass excluded.
    """

    predictions: list[Prediction]
    runtime: str
    batch_size: int
    payload_bytes: int
    wire_header_bytes: int
    frame_bytes: int
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_condition(half, condition: float | None, condition_flag: str | None) -> float:
    """The channel parameter for a condition given with `condition_flag` ("--snr" | "--erasure")."""
    if condition is None:
        return 0.0
    if condition_flag is not None:
        select_condition(half.channel, {condition_flag: condition}, "this export's")
    return half.param_from_condition(condition)


def expand_images(specs: Sequence[str | Path]) -> list[str]:
    """Files as given; a folder -> its image files (sorted, not recursive); a glob -> its matches (sorted)."""
    out: list[str] = []
    for spec in map(str, specs):
        path = Path(spec).expanduser()
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(f"folder {spec} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            out += found
        elif glob.has_magic(spec) and not path.exists():
            found = sorted(p for p in glob.glob(str(path)) if Path(p).is_file())
            if not found:
                raise DataError(f"no file matches {spec!r}")
            out += found
        else:
            out.append(spec)
    return out


def prepare_images(device, paths: Sequence[str | Path]) -> torch.Tensor:
    """Image files -> normalised float batch at the model's input size."""
    dc = device.meta["data_config"]
    size = tuple(dc["input_size"][1:])
    x = torch.stack([read_image(p, size, dc.get("crop_pct", 1.0), dc.get("interpolation", "bilinear"))
                     for p in paths])
    return BatchTransform(dc["mean"], dc["std"], augment=False)(x)


def load_runtime_pair(deploy_dir: str | Path, runtime: str = "torch"):
    """(device, edge) halves of a deploy directory for a runtime of RUNTIMES, pair id checked."""
    if runtime not in RUNTIMES:
        raise ExportError(f"unknown runtime {runtime!r}", hint=f"valid: {', '.join(RUNTIMES)}")
    if runtime == "torch":
        from .halves import load_pair

        return load_pair(deploy_dir)
    from .onnx import load_onnx_pair

    return load_onnx_pair(deploy_dir, int8=runtime == "onnxruntime-int8")


def predict_images(deploy_dir: str | Path, images: Sequence[str | Path], condition: float | None = None,
                   topk: int = 5, seed: int = 0, condition_flag: str | None = None, runtime: str = "torch",
                   batch_size: int = 1) -> PredictResult:
    """Classify image files with the exported pair: device -> wire -> channel -> edge, in batches."""
    if topk < 1:
        raise BnppError(f"--top {topk} shows no class: give 1 or more")
    if batch_size < 1:
        raise BnppError(f"--batch-size {batch_size} must be at least 1")
    paths = expand_images(images)
    if not paths:
        raise DataError("no images given")
    device, edge = load_runtime_pair(deploy_dir, runtime)
    param = check_condition(device, condition, condition_flag)
    x_all = prepare_images(device, paths)
    classes = edge.class_names
    payload = payload_bytes(device.code_shape, device.channel)
    header = header_bytes(device.code_shape)
    out: list[Prediction] = []
    times: dict[str, list[float]] = {"device": [], "edge": []}
    with torch.inference_mode():
        _run_batch(device, edge, x_all[:batch_size], param, seed, 0)  # warm-up, not timed
        for first in range(0, len(paths), batch_size):
            x = x_all[first:first + batch_size]
            probs, device_ms, edge_ms, sizes = _run_batch(device, edge, x, param, seed, first)
            times["device"].append(device_ms / len(x))
            times["edge"].append(edge_ms / len(x))
            for i, row in enumerate(probs.softmax(1)):
                p, k = row.topk(min(topk, row.numel()))
                head, total = sizes[i]
                out.append(Prediction(str(paths[first + i]), [(classes[j], float(v)) for v, j in zip(p, k.tolist())],
                                      total - head, total, times["device"][-1], times["edge"][-1]))
    latency = {side: {"median": statistics.median(t), "min": min(t), "max": max(t)} for side, t in times.items()}
    if len({r.frame_bytes for r in out}) > 1:  # an entropy code: sizes per image, the mean here
        payload = round(statistics.fmean(r.payload_bytes for r in out))
        header = round(statistics.fmean(r.frame_bytes - r.payload_bytes for r in out))
    elif out:
        payload, header = out[0].payload_bytes, out[0].frame_bytes - out[0].payload_bytes
    return PredictResult(out, runtime, batch_size, payload, header, payload + header, latency)


def _run_batch(device, edge, x: torch.Tensor, param: float, seed: int, first: int):
    """Logits of a batch through one wire frame per image; (logits, device ms, edge ms, each frame's
    (header bytes, frame bytes)), the sizes read from the frames themselves (an entropy code's vary)."""
    t0 = time.perf_counter()
    z = device(x, param)
    frames = [device.payload(z[i:i + 1], param) for i in range(len(x))]
    t1 = time.perf_counter()
    z_hat = edge.air(torch.cat([edge.receive(f) for f in frames]), param, seed, first)
    logits = edge(z_hat, param)
    t2 = time.perf_counter()
    return logits, 1e3 * (t1 - t0), 1e3 * (t2 - t1), [wire.peek_header(f) for f in frames]


def predict(deploy_dir: str | Path, images: Sequence[str | Path], condition: float | None = None,
            topk: int = 5, seed: int = 0, condition_flag: str | None = None, runtime: str = "torch",
            batch_size: int = 1) -> list[Prediction]:
    """The predictions of :func:`predict_images`, one per image."""
    return predict_images(deploy_dir, images, condition, topk, seed, condition_flag, runtime, batch_size).predictions
