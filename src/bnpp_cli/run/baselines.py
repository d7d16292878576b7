"""The search's validation images, and the two honest baselines measured on them.

    validation_images(data, val_data, val_fraction, seed, input_size) -> uint8 (N, 3, H, W), labels
        the same images every candidate's fit holds out (fit_codec's split_train_val with its seed),
        or --val-data
    write_images_npz(path, x, y, classes)  the images as an .npz that `bnpp eval` reads (atomic)
    measure_images(model, x, y, ...)       the uncut model's top-1 and each image encoding's figures
    baselines(measured, ..., budget, max_drop)  label on device and image to edge under a budget:

    label-on-device  the whole model on the device, the label sent: log2(K) bits, drop 0
    image-to-edge    the image sent, everything on the edge: PNG (lossless, drop 0) and JPEG at
                     several qualities (PIL), the drop measured after decoding; the cheapest
                     encoding within the tolerance (JPEG quality 90 when none is)
"""

from __future__ import annotations

import io
import math
from typing import Any, Sequence

import numpy as np
import torch

from ..data.batching import BatchTransform
from ..data.datasets import check_labels, dataset_labels, load_dataset, split_train_val
from ..files import atomic_write
from ..split.profile import Budget
from .candidates import latency_ms

JPEG_QUALITIES = (90, 75, 50, 25, 10)  # 90 is PIL's "visually lossless" habit; the rest probe the tolerance


def validation_images(data: str, val_data: str | None, val_fraction: float, seed: int,
                      input_size: tuple[int, int], num_classes: int,
                      root: str | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str] | None, str, int]:
    """uint8 (N, 3, H, W) images, labels, classes, where they come from (--val-data, or exactly the
    images fit_codec holds out of --data for the same val_fraction and seed), and how many training
    images that leaves."""
    full = load_dataset(data, input_size=input_size, train=True, root=root)
    if val_data:
        dataset = load_dataset(val_data, input_size=input_size, train=False, root=root)
        source, train_images = f"--val-data {val_data}", len(full)
    else:
        train, dataset = split_train_val(full, val_fraction, seed)
        train_images = len(train)
        if dataset is None:
            from ..errors import DataError

            raise DataError("--val-fraction 0 leaves no validation images for the search",
                            hint="give --val-data or a --val-fraction above 0")
        source = f"held out of --data {data} ({val_fraction:g}, seed {seed})"
    check_labels(dataset, num_classes)
    x = torch.stack([dataset[i][0] for i in range(len(dataset))])
    base = getattr(dataset, "dataset", dataset)
    classes = getattr(base, "classes", None)
    return x, dataset_labels(dataset), list(classes) if classes else None, source, train_images


def write_images_npz(path, x: torch.Tensor, y: torch.Tensor, classes: Sequence[str] | None) -> None:
    """The images in load_dataset's .npz layout (x N,H,W,3 uint8; y; class_names), atomically."""
    arrays = {"x": x.permute(0, 2, 3, 1).contiguous().numpy(), "y": y.numpy()}
    if classes:
        arrays["class_names"] = np.array(list(classes))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, write)


@torch.no_grad()
def _top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, transform: BatchTransform,
          batch: int = 256) -> float:
    hits = 0
    for i in range(0, len(x), batch):
        hits += int((model(transform(x[i:i + batch])).argmax(1) == y[i:i + batch]).sum())
    return hits / len(y)


def _encode(image: torch.Tensor, fmt: str, quality: int | None) -> tuple[int, torch.Tensor]:
    """(bytes, decoded uint8 (3, H, W)) of one image through PIL."""
    from PIL import Image

    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **({"quality": quality} if quality is not None else {"optimize": True}))
    size = buf.tell()
    buf.seek(0)
    decoded = np.asarray(Image.open(buf).convert("RGB"))
    return size, torch.from_numpy(decoded.copy()).permute(2, 0, 1)


def measure_images(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, data_config: dict[str, Any],
                   qualities: Sequence[int] = JPEG_QUALITIES) -> dict[str, Any]:
    """Top-1 of the uncut model on the images, and each image encoding's size and top-1 after
    decoding (what the search keeps: no budget in it)."""
    transform = BatchTransform(data_config["mean"], data_config["std"], augment=False)
    model = model.eval()
    top1 = _top1(model, x, y, transform)
    png_bytes = sum(_encode(img, "PNG", None)[0] for img in x)
    encodings = [{"format": "png", "quality": None, "bytes_per_image": png_bytes / len(x),
                  "val_top1": top1, "val_drop": 0.0}]  # lossless: the model sees the same pixels
    for q in qualities:
        sizes, decoded = zip(*(_encode(img, "JPEG", q) for img in x))
        q_top1 = _top1(model, torch.stack(decoded), y, transform)
        encodings.append({"format": "jpeg", "quality": q, "bytes_per_image": sum(sizes) / len(x),
                          "val_top1": q_top1, "val_drop": 100 * (top1 - q_top1)})
    return {"backbone_val_top1": top1, "images": len(y), "encodings": encodings}


def baselines(measured: dict[str, Any], total_macs: int, num_classes: int, budget: Budget,
              max_drop: float) -> dict[str, Any]:
    """Label on device and image to edge under a budget and tolerance, from measure_images' figures."""
    encodings = measured["encodings"]
    within = [e for e in encodings if e["val_drop"] <= max_drop]
    chosen = min(within, key=lambda e: e["bytes_per_image"]) if within else \
        next(e for e in encodings if e["quality"] == 90)
    label_bits, image_bits = math.log2(num_classes), 8 * chosen["bytes_per_image"]
    label = {"name": "label-on-device", "device_macs": total_macs, "edge_macs": 0, "bits_per_image": label_bits,
             "val_drop": 0.0, "latency_ms": latency_ms(total_macs, label_bits, 0, budget),
             "what": f"whole model on the device, the label sent (log2 {num_classes} bits)"}
    image = {"name": "image-to-edge", "device_macs": 0, "edge_macs": total_macs, "bits_per_image": image_bits,
             "val_drop": chosen["val_drop"], "latency_ms": latency_ms(0, image_bits, total_macs, budget),
             "what": f"the image sent as {chosen['format'].upper()}"
                     + (f" quality {chosen['quality']}" if chosen["quality"] else "")
                     + f" ({chosen['bytes_per_image']:.0f} bytes mean), the whole model on the edge",
             "encodings": encodings}
    return {"backbone_val_top1": measured["backbone_val_top1"], "images": measured["images"],
            "label_on_device": label, "image_to_edge": image}
