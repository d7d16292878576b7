"""Running exported halves on real images: `bnpp predict` (both halves in one process).

    image file --decode, fit to input size--> x --DeviceHalf.compress--> wire frame (bytes)
        --EdgeHalf.decompress: receive, simulated air interface, decoder + tail--> logits

The payload really goes through the wire format, so its size is the number of bytes a device
sends. The channel is simulated at the receiver (link.receiver), between the received symbols and
the decoder (for digital channels: bit erasures or flips on the received levels), with the noise
of image i drawn from ``air_generator(seed, i)``, so a remote edge given the same seed reproduces
it exactly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..data.batching import BatchTransform
from ..data.datasets import read_image
from ..link.config import select_condition
from .halves import DeviceHalf, load_pair


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class, probability), best first
    payload_bytes: int  # wire frame for this image, header included
    device_ms: float
    edge_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_condition(half, condition: float | None, condition_flag: str | None) -> float:
    """The channel parameter for a condition given with `condition_flag` ("--snr" | "--erasure")."""
    if condition is None:
        return 0.0
    if condition_flag is not None:
        select_condition(half.channel, {condition_flag: condition}, "this export's")
    return half.param_from_condition(condition)


def prepare_images(device: DeviceHalf, paths: Sequence[str | Path]) -> torch.Tensor:
    """Image files -> normalised float batch at the model's input size."""
    dc = device.meta["data_config"]
    size = tuple(dc["input_size"][1:])
    x = torch.stack([read_image(p, size, dc.get("crop_pct", 1.0), dc.get("interpolation", "bilinear"))
                     for p in paths])
    return BatchTransform(dc["mean"], dc["std"], augment=False)(x)


def predict(deploy_dir: str | Path, images: Sequence[str | Path], condition: float | None = None,
            topk: int = 5, seed: int = 0, condition_flag: str | None = None) -> list[Prediction]:
    """Classify image files with the exported pair: device -> wire -> channel -> edge, one image at a time."""
    device, edge = load_pair(deploy_dir)
    param = check_condition(device, condition, condition_flag)
    x_all = prepare_images(device, images)
    classes = edge.class_names
    out = []
    with torch.inference_mode():
        for index, (path, x) in enumerate(zip(images, x_all)):
            t0 = time.perf_counter()
            frame = device.compress(x[None], param)
            t1 = time.perf_counter()
            probs = edge.decompress(frame, param, seed, index).softmax(1)[0]
            t2 = time.perf_counter()
            p, i = probs.topk(min(topk, probs.numel()))
            out.append(Prediction(str(path), [(classes[k], float(v)) for v, k in zip(p, i.tolist())],
                                  len(frame), 1e3 * (t1 - t0), 1e3 * (t2 - t1)))
    return out
