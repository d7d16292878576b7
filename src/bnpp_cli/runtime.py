"""Running exported halves on real images: `bnpp predict` (both halves in one process).

    image file --decode, fit to input size--> x --DeviceHalf--> z --wire frame (bytes)-->
        --EdgeHalf.receive--> z --simulated air interface: channel(z, param)--> z_hat --EdgeHalf--> logits

The payload really goes through the wire format, so its size is the number of bytes a device
sends. The channel is simulated at the receiver, between the received symbols and the decoder (for
digital channels: bit erasures or flips on the received levels), with the noise of image i drawn
from ``air_generator(seed, i)``, so a remote edge given the same seed reproduces it exactly.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .batching import BatchTransform
from .data import read_image
from .errors import ChannelError, ExportError
from .export import DEVICE_FILE, EDGE_FILE, DeviceHalf, EdgeHalf, check_pair, load_device, load_edge


@dataclass
class Prediction:
    image: str
    top: list[tuple[str, float]]  # (class, probability), best first
    payload_bytes: int  # wire frame for this image, header included
    device_ms: float
    edge_ms: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def air_generator(seed: int, index: int) -> torch.Generator:
    """The noise of the simulated air interface for the index-th image of a request seeded `seed`."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def check_condition(half, condition: float | None, condition_name: str | None) -> float:
    """The channel parameter for a condition given as --snr ("snr_db") or --erasure ("erasure")."""
    if condition is None:
        return 0.0
    own = half.channel.condition_name
    # --snr names analog channels' PSNR; --erasure any digital channel's bit probability (bec, bsc)
    if condition_name is not None and own is not None and (condition_name == "snr_db") != (own == "snr_db"):
        flag = "--snr" if condition_name == "snr_db" else "--erasure"
        other = "--erasure" if flag == "--snr" else "--snr"
        raise ChannelError(f"{flag} does not apply to this export's channel '{half.channel.name}'",
                           hint=f"use {other}")
    return half.param_from_condition(condition)


def load_pair(deploy_dir: str | Path) -> tuple[DeviceHalf, EdgeHalf]:
    d = Path(deploy_dir)
    if not d.is_dir():
        raise ExportError(f"deploy directory '{d}' does not exist", hint="make one with `bnpp export RUN --out DIR`")
    device, edge = load_device(d / DEVICE_FILE), load_edge(d / EDGE_FILE)
    check_pair(device, edge)
    return device, edge


def prepare_images(device: DeviceHalf, paths: Sequence[str | Path]) -> torch.Tensor:
    """Image files -> normalised float batch at the model's input size."""
    dc = device.meta["data_config"]
    size = tuple(dc["input_size"][1:])
    x = torch.stack([read_image(p, size, dc.get("crop_pct", 1.0), dc.get("interpolation", "bilinear"))
                     for p in paths])
    return BatchTransform(dc["mean"], dc["std"], augment=False)(x)


def predict(deploy_dir: str | Path, images: Sequence[str | Path], condition: float | None = None,
            topk: int = 5, seed: int = 0, condition_name: str | None = None) -> list[Prediction]:
    """Classify image files with the exported pair: device -> wire -> channel -> edge, one image at a time."""
    device, edge = load_pair(deploy_dir)
    param = check_condition(device, condition, condition_name)
    x_all = prepare_images(device, images)
    classes = edge.classes or [str(i) for i in range(edge.meta["num_classes"])]
    out = []
    with torch.inference_mode():
        for index, (path, x) in enumerate(zip(images, x_all)):
            t0 = time.perf_counter()
            frame = device.payload(device(x[None], param))
            t1 = time.perf_counter()
            z = edge.receive(frame)
            z_hat = edge.channel(z, param, generator=air_generator(seed, index))
            probs = edge(z_hat, param).softmax(1)[0]
            t2 = time.perf_counter()
            p, i = probs.topk(min(topk, probs.numel()))
            out.append(Prediction(str(path), [(classes[k], float(v)) for v, k in zip(p, i.tolist())],
                                  len(frame), 1e3 * (t1 - t0), 1e3 * (t2 - t1)))
    return out
