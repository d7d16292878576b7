"""The int8 device half: post-training static quantisation of device.onnx -> device.int8.onnx.

    device.onnx --quant_pre_process (shape inference, Conv+BN folding)--> --quantize_static(QDQ,
        int8 weights per output channel, uint8 activations, MinMax ranges observed on calibration
        images)--> device.int8.onnx  (same inputs, outputs, metadata; precision "int8-qdq")

Why ONNX Runtime's quantize_static and not torch's: it quantises the very graph that export has
just checked against PyTorch, and its QDQ output is what ORT's CPU, mobile (XNNPACK, NNAPI, CoreML)
and NPU execution providers consume; torch's eager/FX quantisation would need stubs inside timm's
modules and a second, separately checked export of the quantised model.

Calibration feeds images from --calib-data (normalised as the run's data config says) with the
channel parameter drawn from the run's training range (seeded), since the encoder sees both; the
code z stays float32 at the graph output, so quantisation to wire levels is still the link's.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.batching import BatchTransform
from ..data.datasets import load_dataset
from ..errors import ExportError
from ..link.channels import Channel
from .onnx import DEVICE_INT8_ONNX, INPUTS, require_onnx, stamp_onnx

PRECISION = "int8-qdq"  # weights int8 per channel, activations uint8, QDQ nodes (ORT fuses them)


@dataclass
class Int8Export:
    path: str
    file_bytes: int
    float_file_bytes: int
    calib_images: int
    calib_data: str
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_images(spec: str, data_config: dict[str, Any], limit: int) -> torch.Tensor:
    """The first `limit` images of a dataset (train split), normalised float32 (N, 3, H, W)."""
    if limit < 1:
        raise ExportError(f"--calib-images {limit} must be at least 1")
    dataset = load_dataset(spec, input_size=tuple(data_config["input_size"][1:]), train=True,
                           crop_pct=data_config.get("crop_pct", 1.0),
                           interpolation=data_config.get("interpolation", "bilinear"))
    n = min(limit, len(dataset))
    x = torch.stack([dataset[i][0] for i in range(n)])
    return BatchTransform(data_config["mean"], data_config["std"], augment=False)(x)


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over (images, params) batches."""

    def __init__(self, x: torch.Tensor, params: torch.Tensor, batch: int):
        self._batches = [{INPUTS["device"][0]: x[i:i + batch].numpy(), "param": params[i:i + batch].numpy()}
                         for i in range(0, len(x), batch)]
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._batches)


def quantize_device(float_path: str | Path, x: torch.Tensor, channel: Channel, meta: dict[str, str],
                    calib_data: str, seed: int = 0, batch: int = 32) -> Int8Export:
    """device.onnx + calibration images -> DIR/device.int8.onnx beside it (atomically), metadata copied."""
    require_onnx("onnx", "onnxruntime")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_path = Path(float_path)
    out = float_path.parent / DEVICE_INT8_ONNX
    params = channel.sample_param(len(x), torch.Generator().manual_seed(seed), per_sample=True)
    with tempfile.TemporaryDirectory(dir=float_path.parent, prefix=".int8.") as tmp:
        prepped, quantized = Path(tmp) / "prep.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(float_path), str(prepped), skip_symbolic_shape=True)
            quantize_static(str(prepped), str(quantized), _Reader(x.float(), params.float(), batch),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        except Exception as e:
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise ExportError(f"int8 quantisation of '{float_path}' failed: {first[:200]}") from None
        stamp_onnx(quantized, {**meta, "precision": PRECISION, "calibration": f"{len(x)} images of {calib_data}"})
        quantized.replace(out)
    return Int8Export(str(out), out.stat().st_size, float_path.stat().st_size, len(x), calib_data,
                      "onnxruntime quantize_static, QDQ, int8 per-channel weights, uint8 activations, MinMax")
