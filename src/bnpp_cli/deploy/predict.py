"""Running exported halves on images: :func:`predict` (both halves in one process; `bnpp predict`).

    images (files, folders, globs, PIL images, or a tensor) --decode, fit to input size--> x, in batches
        --device half (PyTorch or ONNX Runtime): z --link.transmit: one wire frame per image-->
        --edge half: receive, simulated air interface, decoder + tail--> logits

    result = predict(PredictConfig("deploy/", condition=10.0), ["photos/"])
    result.predictions[0].top        # [(class, probability), ...], best first

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
median and the spread over batches, with the threads they ran on (one by default) and a warning
when the machine was too busy for them to mean much (bnpp_cli.timing).
"""

from __future__ import annotations

import glob
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch

from .. import timing
from ..data.batching import BatchTransform
from ..data.datasets import IMAGE_EXTENSIONS, fit_to_size, read_image
from ..errors import BnppError, DataError, ExportError
from ..link import wire
from ..link.config import check_condition_name
from ..link.transmit import header_bytes, payload_bytes

RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")  # -int8: device.int8.onnx with edge.onnx

# What predict() takes as images: a path (file, folder or glob) or PIL image, a sequence of them, or
# a batch tensor / array (see :func:`images_to_batch`).
Images = Union[str, Path, Any, Sequence[Any], torch.Tensor, np.ndarray]


@dataclass
class PredictConfig:
    """How :func:`predict` runs an exported pair: which export, which link condition, what to return.

    Attributes:
        deploy_dir: str; a directory made by ``export_halves`` (`bnpp export`): device and edge
            halves as .safetensors and/or .onnx, their pair id checked.
        condition: float | None; the link's condition for every image, in the export's channel's
            own unit: PSNR in dB (peak amplitude 1) on the analog channels (awgn, awgn-power,
            rayleigh), a bit probability in [0, 0.5] on bec (erasure) and bsc (flip). Default
            None: a noiseless link (the channel is not applied).
        condition_name: str | None; what `condition` is: "snr_db", "erasure" or "flip"
            (``Channel.condition_name``). When given it is checked against the export's channel,
            so a value meant for another kind of channel is refused instead of read in the wrong
            unit. Default None: not checked.
        top_k: int; classes returned per image, best first; at least 1 (fewer if the model has
            fewer classes). Default 5.
        seed: int; the link noise of image i is drawn from ``air_generator(seed, i)``, whatever
            the batch size, so `bnpp serve` given the same seed answers the same. Default 0.
        runtime: str; "torch" (the .safetensors halves), "onnxruntime" (device.onnx + edge.onnx)
            or "onnxruntime-int8" (device.int8.onnx + edge.onnx). Default "torch".
        batch_size: int; images per device / edge pass (each still gets its own wire frame);
            at least 1. Default 1: one image at a time, as a device sends them.
        threads: int; torch (and ONNX Runtime) threads for the timed passes; default 1
            (bnpp_cli.timing: batch-1 latency as one device core gives it, not inflated by other
            work on the machine).
    """

    deploy_dir: str
    condition: float | None = None
    condition_name: str | None = None
    top_k: int = 5
    seed: int = 0
    runtime: str = "torch"
    batch_size: int = 1
    threads: int = timing.DEFAULT_THREADS

    def validate(self) -> None:
        """Refuse settings that cannot run, naming the setting and the valid values."""
        if self.top_k < 1:
            raise BnppError(f"`top_k` {self.top_k} shows no class: give 1 or more")
        if self.batch_size < 1:
            raise BnppError(f"`batch_size` {self.batch_size} must be at least 1")
        if self.runtime not in RUNTIMES:
            raise ExportError(f"unknown runtime {self.runtime!r}", hint=f"valid: {', '.join(RUNTIMES)}")
        timing.check_threads(self.threads)


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
        latency_ms: dict[str, dict[str, Any]]; {"device": ..., "edge": ...}, each {"median",
            "min", "max"} over the batches of the per-image time (batch time / batch size), in
            milliseconds, the warm-up pass excluded, with "runs", "threads", "load", "cores" and
            "warning" (bnpp_cli.timing.summary: why the machine was too busy, or None).
    """

    predictions: list[Prediction]
    runtime: str
    batch_size: int
    payload_bytes: int
    wire_header_bytes: int
    frame_bytes: int
    latency_ms: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_condition(half, condition: float | None, condition_name: str | None = None) -> float:
    """The channel parameter of a half for `condition` (the channel's own unit; None: noiseless),
    a `condition_name` given checked against the half's channel first."""
    if condition is None:
        return 0.0
    if condition_name is not None:
        check_condition_name(half.channel, condition_name, "this export's")
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


def images_to_batch(device, images: Images) -> tuple[list[str], torch.Tensor]:
    """(names, x): the images as the device half's normalised float32 input (N, 3, H, W).

    ``images`` is one of:
      - a path (image file, folder of images, or glob) or a PIL image, or a sequence of them
        (mixed freely): decoded as RGB, fitted to the input size the timm eval way (resize to cover
        input / crop_pct, centre crop) and normalised with the export's mean and std;
      - a uint8 tensor or array (N, H, W, 3), RGB pixels as in an .npz dataset: fitted and
        normalised the same way;
      - a float tensor (N, 3, H, W) at the input size, already normalised: used as is.
    """
    dc = device.meta["data_config"]
    size = tuple(dc["input_size"][1:])
    resize = (size, dc.get("crop_pct", 1.0), dc.get("interpolation", "bilinear"))
    normalise = BatchTransform(dc["mean"], dc["std"], augment=False)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if torch.is_tensor(images):
        names = [f"<image {i}>" for i in range(len(images))]
        if images.dtype == torch.uint8 and images.ndim == 4 and images.shape[-1] == 3:
            return names, normalise(fit_to_size(images.permute(0, 3, 1, 2).contiguous(), resize))
        if images.is_floating_point() and tuple(images.shape[1:]) == (3, *size):
            return names, images.float()
        raise DataError(f"image tensor {images.dtype} {tuple(images.shape)}: expected uint8 (N, H, W, 3) pixels "
                        f"or a normalised float (N, 3, {size[0]}, {size[1]}) batch at the model's input size")
    if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
        images = [images]
    names, pixels = [], []
    for i, item in enumerate(images):
        if isinstance(item, (str, Path)):
            for path in expand_images([item]):
                names.append(path)
                pixels.append(read_image(path, size, resize[1], resize[2]))
        elif hasattr(item, "convert") and hasattr(item, "size"):  # a PIL image
            rgb = torch.from_numpy(np.array(item.convert("RGB"))).permute(2, 0, 1)
            names.append(f"<image {i}>")
            pixels.append(fit_to_size(rgb[None].contiguous(), resize)[0])
        else:
            raise DataError(f"image {i} is a {type(item).__name__}: give paths, folders, globs or PIL images, "
                            "or one uint8 (N, H, W, 3) / normalised float (N, 3, H, W) tensor")
    if not pixels:
        raise DataError("no images given")
    return names, normalise(torch.stack(pixels))


def load_runtime_pair(deploy_dir: str | Path, runtime: str = "torch", threads: int | None = None):
    """(device, edge) halves of a deploy directory for a runtime of RUNTIMES, pair id checked;
    ``threads``: ONNX Runtime's intra-op threads (None: its own choice; torch's are set by the caller)."""
    if runtime not in RUNTIMES:
        raise ExportError(f"unknown runtime {runtime!r}", hint=f"valid: {', '.join(RUNTIMES)}")
    if runtime == "torch":
        from .halves import load_pair

        return load_pair(deploy_dir)
    from .onnx import load_onnx_pair

    return load_onnx_pair(deploy_dir, int8=runtime == "onnxruntime-int8", threads=threads)


def predict(config: PredictConfig, images: Images) -> PredictResult:
    """Classify images with an exported pair: device -> wire -> channel -> edge, in batches.

    ``images``: paths, folders, globs or PIL images, or a uint8 (N, H, W, 3) / normalised float
    (N, 3, H, W) tensor (:func:`images_to_batch`). Each image crosses the link in its own wire
    frame, with its noise from ``air_generator(config.seed, i)``."""
    config.validate()
    device, edge = load_runtime_pair(config.deploy_dir, config.runtime, config.threads)
    param = check_condition(device, config.condition, config.condition_name)
    names, x_all = images_to_batch(device, images)
    load_before = timing.load()
    with timing.threads(config.threads):
        answers, times = _run_all(device, edge, x_all, param, config)
    out = [Prediction(names[i], top, total - head, total, times["device"][i // config.batch_size],
                      times["edge"][i // config.batch_size]) for i, (top, (head, total)) in enumerate(answers)]
    latency = {side: timing.summary(t, config.threads, load_before) for side, t in times.items()}
    payload, header = payload_bytes(device.code_shape, device.channel), header_bytes(device.code_shape)
    if len({r.frame_bytes for r in out}) > 1:  # an entropy code: sizes per image, the mean here
        payload = round(statistics.fmean(r.payload_bytes for r in out))
        header = round(statistics.fmean(r.frame_bytes - r.payload_bytes for r in out))
    elif out:
        payload, header = out[0].payload_bytes, out[0].frame_bytes - out[0].payload_bytes
    return PredictResult(out, config.runtime, config.batch_size, payload, header, payload + header, latency)


def _run_all(device, edge, x_all: torch.Tensor, param: float, config: PredictConfig):
    """([(top classes, (header bytes, frame bytes)) per image], {"device": [ms per image per batch], "edge": ...})."""
    classes, step = edge.class_names, config.batch_size
    answers: list = []
    times: dict[str, list[float]] = {"device": [], "edge": []}
    with torch.inference_mode():
        _run_batch(device, edge, x_all[:step], param, config.seed, 0)  # warm-up, not timed
        for first in range(0, len(x_all), step):
            x = x_all[first:first + step]
            logits, device_ms, edge_ms, sizes = _run_batch(device, edge, x, param, config.seed, first)
            times["device"].append(device_ms / len(x))
            times["edge"].append(edge_ms / len(x))
            for row, size in zip(logits.softmax(1), sizes):
                p, k = row.topk(min(config.top_k, row.numel()))
                answers.append(([(classes[j], float(v)) for v, j in zip(p, k.tolist())], size))
    return answers, times


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
