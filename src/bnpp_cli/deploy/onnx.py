"""The ONNX halves: the ONLY code that writes or reads DIR/device.onnx, DIR/edge.onnx and
DIR/device.int8.onnx (deploy/int8.py makes the last one and hands it here to be stamped).

    device.onnx   inputs image (N, 3, H, W) float32 normalised, param (N,) float32
                  output z (N, C', H', W') float32 in [0, 1]                 head + encoder
    edge.onnx     inputs z_hat (N, C', H', W') float32, param (N,) float32
                  output logits (N, classes) float32                         decoder + tail

``param`` is the channel's native parameter, as the safetensors halves take it (AWGN: the noise
std sigma = 10^(-PSNR/20); digital channels: the bit probability p; 0 for a noiseless link).
The batch axis is dynamic; the opset is OPSET. Each file's metadata props are the safetensors
halves' metadata (bundle.half_metadata: format, half, pair_id, versions, run_config JSON) plus
plain keys a device app reads without parsing the run config: opset, precision, input_size, mean,
std, feature_shape, code_shape, classes, channel, channel_definition, condition (the condition's
name: snr_db, erasure, flip, or none), param, and for a
variable-length code (preset variable) length_table: its table as JSON [[param, symbols], ...],
params ascending; a parameter gets the entry of the smallest listed param >= it, the whole code
beyond the last (codec.variable). ``OnnxDeviceHalf.payload(z, param)`` sends that (N, k) prefix, and
``OnnxEdgeHalf`` reads a prefix frame and pads it to the code shape edge.onnx takes, as the
safetensors halves do.

Quantisation to wire levels and the channel simulation stay outside the graphs, in the code's
framing that the PyTorch halves use too (codec.framing): the bytes on the wire are the same whichever
runtime computes z. ``OnnxDeviceHalf`` / ``OnnxEdgeHalf`` run the files with ONNX Runtime behind the
same interface as halves.DeviceHalf / EdgeHalf, so predict runs either.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..codec.kinds import read_length_table
from ..codec.presets import get_preset
from ..errors import CodecError, ExportError
from ..files import atomic_write
from ..run.config import RunConfig
from .bundle import check_metadata, half_metadata

OPSET = 18  # ONNX Runtime >= 1.14 (2023) runs it, mobile builds included
DEVICE_ONNX, EDGE_ONNX, DEVICE_INT8_ONNX = "device.onnx", "edge.onnx", "device.int8.onnx"
INPUTS = {"device": ("image", "param"), "edge": ("z_hat", "param")}
OUTPUTS = {"device": "z", "edge": "logits"}
CODE_ATOL = 1e-4  # z in [0, 1]: 1/40 of an 8-bit level step
LOGITS_ATOL = 1e-3  # relative to max(1, max |logit|): float32 reassociation across kernels is ~1e-5


def require_onnx(*modules: str) -> None:
    """ExportError naming the extra unless onnx / onnxruntime / onnxscript are importable."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(f"ONNX needs {', '.join(missing)}, which is not installed",
                          hint="pip install 'bnpp[onnx]'  (onnx, onnxruntime, onnxscript)")


class _Graph(nn.Module):
    """(input, param (N,)) -> output of one half's modules, as ONNX sees them."""

    def __init__(self, first: nn.Module, second: nn.Module, device_side: bool):
        super().__init__()
        self.first, self.second, self.device_side = first, second, device_side

    def forward(self, x: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        if self.device_side:  # head, encoder(f, param)
            return self.second(self.first(x), param)
        return self.second(self.first(x, param))  # decoder(z_hat, param), tail


def device_graph(head: nn.Module, encoder: nn.Module) -> nn.Module:
    return _Graph(head, encoder, True).eval()


def edge_graph(decoder: nn.Module, tail: nn.Module) -> nn.Module:
    return _Graph(decoder, tail, False).eval()


def onnx_metadata(half: str, config: RunConfig, pair: str, precision: str = "float32",
                  code: dict[str, str] | None = None) -> dict[str, str]:
    """bundle.half_metadata plus the plain keys a device app needs (all strings, JSON for lists);
    ``code``: what the code's kind adds (codec.kinds ``onnx_metadata``: a variable-length code's
    length_table)."""
    channel = config.channel.build()
    dc = config.data_config
    return {
        **(code or {}),
        **half_metadata(half, config, pair), "opset": str(OPSET), "precision": precision,
        "input_size": json.dumps(dc["input_size"]), "mean": json.dumps(dc["mean"]), "std": json.dumps(dc["std"]),
        "feature_shape": json.dumps(list(config.feature_shape)), "code_shape": json.dumps(list(config.codec.code_shape)),
        "classes": json.dumps(config.classes or [str(i) for i in range(config.num_classes)]),
        "channel": config.channel.name, "channel_definition": channel.describe(),
        "condition": channel.condition_name or "none",
        "param": "the channel's native parameter (PSNR channels: sigma = 10^(-PSNR/20); digital: the bit "
                 "probability p; 0: noiseless), one per image",
    }


def write_onnx(path: str | Path, graph: nn.Module, example: tuple[torch.Tensor, torch.Tensor],
               half: str, meta: dict[str, str]) -> Path:
    """Export `graph` with a dynamic batch axis at OPSET and write it, metadata props set, atomically."""
    require_onnx("onnx", "onnxscript")
    import onnx

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        # the exporter reports progress on stdout / stderr and warns: the library stays quiet
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, example, None, input_names=list(INPUTS[half]),
                                        output_names=[OUTPUTS[half]], opset_version=OPSET, dynamo=True,
                                        dynamic_shapes=({0: batch}, {0: batch}), optimize=True,
                                        verbose=False, report=False)
    except Exception as e:
        raise ExportError(f"the {half} half cannot be expressed in ONNX opset {OPSET}: {_unsupported(e)}",
                          hint="the op named is not exportable; `bnpp export` without --format onnx still works") from None
    model = program.model_proto
    onnx.helper.set_model_props(model, meta)
    return atomic_write(path, lambda tmp: onnx.save(model, tmp))


def stamp_onnx(path: str | Path, meta: dict[str, str]) -> Path:
    """Rewrite a file's metadata props (the int8 device half gets the float one's, precision int8)."""
    require_onnx("onnx")
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, meta)
    return atomic_write(path, lambda tmp: onnx.save(model, tmp))


def _unsupported(e: Exception) -> str:
    """The op an exporter failure names (aten::foo / aten.foo / an ONNX op), else its first line."""
    text = str(e)
    ops = re.findall(r"\baten[:.]{1,2}[A-Za-z_][\w.]*", text)
    if ops:
        return f"op {ops[0]} is not supported ({type(e).__name__})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return first[:200]


class _OnnxHalf:
    """One ONNX half under ONNX Runtime: metadata checked, the same interface as halves._Half."""

    half = ""

    def __init__(self, path: str | Path, threads: int | None = None):
        require_onnx("onnxruntime")
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ExportError(f"'{path}' does not exist", hint="make it with `bnpp export RUN --format onnx`")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: ORT's warnings would land on the user's stderr
        # idle worker threads sleep instead of spinning: the process also runs torch (the link, or the
        # other half), which spinning threads would starve on a small CPU
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:  # the timing policy's count (bnpp_cli.timing); None: ORT's own choice
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:
            first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise ExportError(f"'{path}' is not a readable ONNX file (corrupt or truncated?): {first[:160]}") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta, self.config = check_metadata(props, path, self.half)
        self.path, self.precision = path, props.get("precision", "float32")
        self.channel = self.config.channel.build()
        self.pair_id: str = self.meta["pair_id"]
        self.code_shape = tuple(self.config.codec.code_shape)
        self.digital = bool(self.channel.digital)
        self.bits = self.channel.bits
        try:
            lengths = read_length_table(props, self.config.codec.code_symbols)
            self.framing = get_preset(self.config.codec.preset).code.framing(self.config.codec, self.channel,
                                                                             self.pair_id, lengths=lengths)
        except CodecError as e:
            raise ExportError(f"'{path}': {e}") from None
        self._inputs = [i.name for i in self.session.get_inputs()]
        known = set(INPUTS[self.half])
        if not set(self._inputs) <= known:
            raise ExportError(f"'{path}' has inputs {self._inputs}; a bnpp {self.half} half takes {sorted(known)}")

    def param_from_condition(self, value: float) -> float:
        return self.channel.param_from_condition(value)

    def run(self, x: torch.Tensor, param: float | torch.Tensor = 0.0) -> torch.Tensor:
        p = torch.as_tensor(param, dtype=torch.float32)
        p = p.expand(x.shape[0]) if p.dim() == 0 else p
        feeds = {INPUTS[self.half][0]: np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32),
                 "param": np.ascontiguousarray(p.detach().cpu().numpy(), dtype=np.float32)}
        out = self.session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        return torch.from_numpy(out)

    __call__ = run


class OnnxDeviceHalf(_OnnxHalf):
    """device.onnx (or device.int8.onnx): images -> z; payload() gives the same wire frame as DeviceHalf."""

    half = "device"

    def payload(self, z: torch.Tensor, param: float | None = None) -> bytes:
        """One wire frame for a code batch, as DeviceHalf.payload (the same framing, codec.framing)."""
        return self.framing.payload(z, param)

    def symbols(self, param: float) -> int:
        """Symbols per image sent at channel parameter ``param``."""
        return self.framing.symbols(param)

    def compress(self, x: torch.Tensor, param: float = 0.0) -> bytes:
        return self.payload(self(x, param), param)


class OnnxEdgeHalf(_OnnxHalf):
    """edge.onnx: wire frame -> (receive, simulated air interface) -> z_hat -> logits."""

    half = "edge"

    @property
    def class_names(self) -> list[str]:
        return self.config.classes or [str(i) for i in range(self.config.num_classes)]

    def receive(self, buf: bytes) -> torch.Tensor:
        return self.framing.receive(buf)

    def air(self, z: torch.Tensor, param: float, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        return self.framing.air(z, param, seed, first_index)

    def pad(self, z_hat: torch.Tensor) -> torch.Tensor:
        """What edge.onnx takes from what was received (a variable-length code's prefix padded to its shape)."""
        return self.framing.pad(z_hat)

    def run(self, z_hat: torch.Tensor, param: float | torch.Tensor = 0.0) -> torch.Tensor:
        return super().run(self.pad(z_hat), param)

    __call__ = run

    def decompress(self, buf: bytes, param: float = 0.0, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        return self(self.air(self.receive(buf), param, seed, first_index), param)


def load_onnx_pair(deploy_dir: str | Path, int8: bool = False,
                   threads: int | None = None) -> tuple[OnnxDeviceHalf, OnnxEdgeHalf]:
    """DIR/device.onnx (DIR/device.int8.onnx with int8) and DIR/edge.onnx, pair id checked."""
    d = Path(deploy_dir)
    if not d.is_dir():
        raise ExportError(f"deploy directory '{d}' does not exist",
                          hint="make one with `bnpp export RUN --out DIR --format onnx`")
    device = OnnxDeviceHalf(d / (DEVICE_INT8_ONNX if int8 else DEVICE_ONNX), threads)
    edge = OnnxEdgeHalf(d / EDGE_ONNX, threads)
    if device.pair_id != edge.pair_id:
        raise ExportError(f"the ONNX halves come from two different exports (pair id {device.pair_id} vs "
                          f"{edge.pair_id})", hint="export both files together with `bnpp export RUN --format onnx`")
    return device, edge


@dataclass
class OnnxCheck:
    """ONNX Runtime vs the PyTorch halves on the same inputs (export's verification)."""

    images: int
    inputs: str  # what the images were
    code_max_abs_diff: float  # device.onnx vs head + encoder, on the same images
    logits_max_abs_diff: float  # edge.onnx vs decoder + tail, on the same received code
    top1_agreement: float  # end to end through the wire, noiseless link: ORT pair vs PyTorch pair
    code_atol: float = CODE_ATOL
    logits_atol: float = LOGITS_ATOL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_onnx(torch_device, torch_edge, onnx_device, onnx_edge, x: torch.Tensor, inputs: str,
               param: float = 0.0, batch: int = 64) -> OnnxCheck:
    """Run both pairs on images x; ExportError with the numbers when a difference is over tolerance."""
    diffs = {"code": 0.0, "logits": 0.0}
    agree, scale = 0, 1.0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            xb = x[i:i + batch]
            z_t, z_o = torch_device(xb, param), onnx_device(xb, param)
            diffs["code"] = max(diffs["code"], float((z_t - z_o).abs().max()))
            z_hat = torch_edge.receive(torch_device.payload(z_t, param))  # as the wire delivers it (a prefix
            # for a variable-length code at ``param``)
            logits_t, logits_o = torch_edge(z_hat, param), onnx_edge(z_hat, param)
            scale = max(scale, float(logits_t.abs().max()))
            diffs["logits"] = max(diffs["logits"], float((logits_t - logits_o).abs().max()))
            ort_e2e = onnx_edge(onnx_edge.receive(onnx_device.payload(z_o, param)), param)
            agree += int((ort_e2e.argmax(1) == logits_t.argmax(1)).sum())
    check = OnnxCheck(len(x), inputs, diffs["code"], diffs["logits"], agree / max(len(x), 1),
                      CODE_ATOL, LOGITS_ATOL * scale)
    if check.code_max_abs_diff > check.code_atol or check.logits_max_abs_diff > check.logits_atol:
        raise ExportError(f"ONNX Runtime disagrees with PyTorch on {check.images} {inputs}: max |diff| of the "
                          f"code {check.code_max_abs_diff:.2e} (tolerance {check.code_atol:.0e}), of the logits "
                          f"{check.logits_max_abs_diff:.2e} (tolerance {check.logits_atol:.1e}), top-1 agreement "
                          f"{check.top1_agreement:.2%}")
    return check
