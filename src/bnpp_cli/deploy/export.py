"""`bnpp export`: a fitted run -> the device half and the edge half.

    format safetensors: DIR/device.safetensors, DIR/edge.safetensors        (bundle.py owns the format)
    format onnx:        DIR/device.onnx, DIR/edge.onnx, checked against the PyTorch halves with
                        ONNX Runtime; with calib_data also DIR/device.int8.onnx    (onnx.py, int8.py)
    format all:         both

``reparam`` fuses re-parameterisable blocks (RepVGG, MobileOne, FastViT: timm's
``reparameterize_model``) before the cut, so the device half is the net a device runs. Only the ONNX
halves take it: the safetensors halves rebuild the training architecture from their metadata.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..codec.presets import get_preset
from ..errors import CodecError, ExportError
from ..files import check_writable
from ..run.pipeline import build_pipeline, load_run
from .bundle import DEVICE_FILE, EDGE_FILE, pair_id, write_half
from .halves import DeviceHalf, EdgeHalf

FORMATS = ("safetensors", "onnx", "all")
CHECK_IMAGES = 32  # random images for the ONNX check when no calibration data is given


@dataclass
class ExportConfig:
    """What `export_halves` writes: a fitted run's device and edge halves.

    Attributes:
        run: the run directory made by `fit_codec`.
        out: the directory to write the halves to.
        format: one of FORMATS (safetensors, onnx, all); default "safetensors".
        calib_data: images for the int8 device half (and the ONNX check); default None: no int8.
        calib_images: how many of them; default 256: enough for stable MinMax ranges, seconds on a CPU.
        reparam: fuse re-parameterisable branches first (ONNX only); default False.
        seed: seed of the check inputs; default 0.
    """

    run: str
    out: str
    format: str = "safetensors"  # one of FORMATS
    calib_data: str | None = None  # images for the int8 device half (and the ONNX check); None: no int8
    calib_images: int = 256  # how many of them: enough for stable MinMax ranges, seconds on a CPU
    reparam: bool = False  # fuse re-parameterisable branches first (ONNX only)
    seed: int = 0

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ExportError(f"unknown `format` {self.format!r}", hint=f"valid: {', '.join(FORMATS)}")
        if self.reparam and self.format != "onnx":
            raise ExportError(f"`reparam` needs `format` onnx (got {self.format}): the safetensors halves rebuild "
                              "the unfused training architecture from their metadata")
        if self.calib_data is not None and self.format == "safetensors":
            raise ExportError("`calib_data` makes the int8 ONNX device half: add `format` onnx or `format` all")


@dataclass
class ExportResult:
    """`export_halves`' result: what was written, and the bytes a frame takes.

    Attributes:
        device_path: the device half (.safetensors); None when only ONNX was asked for.
        edge_path: the edge half (.safetensors); None when only ONNX was asked for.
        device_bytes: the device half's file size, bytes; None without safetensors.
        edge_bytes: the edge half's file size, bytes; None without safetensors.
        device_params: parameters of the device half.
        edge_params: parameters of the edge half.
        pair_id: the id both halves carry, checked when they meet.
        code_shape: the code z, without the batch axis.
        payload_bytes: code bytes per image as the wire format sends them (header excluded); None
            for an entropy code, whose sizes vary per image.
        header_bytes: the wire frame's header, bytes; None for an entropy code.
        frame_bytes: payload + header, bytes; None for an entropy code.
        digital: the code is sent as bits (a digital channel).
        onnx: paths, sizes, opset, the ONNX Runtime check and int8; None without ONNX.
        frames_per_condition: a variable-length code: per entry of its length table {condition,
            param, label, symbols_per_image, payload_bytes, header_bytes, frame_bytes}; the sizes
            above are then its longest frame's; else None.
    """

    device_path: str | None  # safetensors halves (None when only ONNX was asked for)
    edge_path: str | None
    device_bytes: int | None
    edge_bytes: int | None
    device_params: int
    edge_params: int
    pair_id: str
    code_shape: list[int]
    payload_bytes: int | None  # code bytes per image, as the wire format sends them (wire header excluded);
    header_bytes: int | None  # the wire frame's header; frame = payload + header (frame_bytes);
    frame_bytes: int | None  # all three None for an entropy code, whose sizes vary per image (eval measures them)
    digital: bool
    onnx: dict[str, Any] | None = None  # paths, sizes, opset, the ONNX Runtime check, int8
    # a variable-length code (preset variable): the three sizes above are those of its longest frame, the
    # whole code as a (1, K) prefix (sent beyond the table's worst condition); what a batch-1 frame holds per entry of
    # its length table: [{condition, param, label, symbols_per_image, payload_bytes, header_bytes, frame_bytes}]
    frames_per_condition: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_halves(config: ExportConfig | str | Path, out_dir: str | Path | None = None, format: str = "safetensors",
                  calib_data: str | None = None, calib_images: int = 256, reparam: bool = False,
                  seed: int = 0) -> ExportResult:
    """Write the halves of a fitted run (atomically); see the module docstring.

    ``export_halves(ExportConfig(run, out, ...))``, or the short form ``export_halves(run, out, ...)``
    with the same fields as keywords."""
    if not isinstance(config, ExportConfig):
        if out_dir is None:
            raise ExportError("export_halves needs the output directory: export_halves(run, out) or an ExportConfig")
        config = ExportConfig(str(config), str(out_dir), format, calib_data, calib_images, reparam, seed)
    return export_run(config)


def _quiet(step: str) -> None:
    pass


def export_run(config: ExportConfig, progress: Callable[[str], None] = _quiet) -> ExportResult:
    """Write the halves of a fitted run; ``progress(step)`` is called, in words, before each step
    that can take seconds (the ONNX export of each half, the ONNX Runtime check, int8 calibration)."""
    check_writable(config.out, "directory", "export directory")  # before the run is rebuilt
    run = load_run(config.run)
    p = run.pipeline
    kind = get_preset(p.codec.config.preset).code
    try:
        kind.check_export(config.format, config.run, p.codec.config.preset)  # before any file is written
    except CodecError as e:
        raise ExportError(str(e), hint=e.hint) from None
    head, tail = p.head, p.tail
    if config.reparam:
        head, tail = _reparameterized(run)
    device = {**_prefixed("head.", head), **_prefixed("encoder.", p.codec.encoder)}
    edge = {**_prefixed("decoder.", p.codec.decoder), **_prefixed("tail.", tail)}
    pair = pair_id(device, edge, {**run.config.to_dict(), **({"reparam": True} if config.reparam else {})})
    out = Path(config.out)
    paths: dict[str, Path] = {}
    if config.format in ("safetensors", "all"):
        paths = {half: write_half(out / name, half, state, run.config, pair)
                 for half, name, state in (("device", DEVICE_FILE, device), ("edge", EDGE_FILE, edge))}
    meta = {**run.config.to_dict(), "pair_id": pair}
    halves = (DeviceHalf(head, p.codec.encoder, meta, p.channel).eval(),
              EdgeHalf(p.codec.decoder, tail, meta, p.channel).eval())
    onnx = _export_onnx(config, run, halves, pair, progress) if config.format in ("onnx", "all") else None
    sizes = halves[0].framing.frame_sizes() or dict.fromkeys(("payload_bytes", "header_bytes", "frame_bytes"))
    return ExportResult(
        device_path=str(paths["device"]) if paths else None, edge_path=str(paths["edge"]) if paths else None,
        device_bytes=paths["device"].stat().st_size if paths else None,
        edge_bytes=paths["edge"].stat().st_size if paths else None,
        device_params=sum(t.numel() for m in (head, p.codec.encoder) for t in m.parameters()),
        edge_params=sum(t.numel() for m in (p.codec.decoder, tail) for t in m.parameters()),
        pair_id=pair, code_shape=list(p.codec.config.code_shape), **sizes,
        digital=bool(p.channel.digital), onnx=onnx, frames_per_condition=halves[0].framing.frames_per_condition(),
    )


def _export_onnx(config: ExportConfig, run, halves: tuple[DeviceHalf, EdgeHalf], pair: str,
                 progress: Callable[[str], None]) -> dict[str, Any]:
    from .int8 import calibration_images, quantize_device
    from .onnx import (DEVICE_ONNX, EDGE_ONNX, OPSET, OnnxDeviceHalf, OnnxEdgeHalf, check_onnx, device_graph,
                       edge_graph, onnx_metadata, require_onnx, write_onnx)

    require_onnx("onnx", "onnxscript", "onnxruntime")
    device, edge = halves
    dc = run.config.data_config
    g = torch.Generator().manual_seed(config.seed)
    x2 = torch.randn(2, *dc["input_size"], generator=g)
    p2 = torch.zeros(2)
    out = Path(config.out)
    code = get_preset(run.config.codec.preset).code.onnx_metadata(run.pipeline.codec)
    meta = {half: onnx_metadata(half, run.config, pair, code=code) for half in ("device", "edge")}
    # the exporter may leave modules in train mode: it gets copies, the halves stay as they are
    progress("exporting the device half to ONNX")
    dev_path = write_onnx(out / DEVICE_ONNX, copy.deepcopy(device_graph(device.head, device.encoder)).eval(),
                          (x2, p2), "device", meta["device"])
    with torch.inference_mode():
        z2 = device(x2, 0.0)
    progress("exporting the edge half to ONNX")
    edge_path = write_onnx(out / EDGE_ONNX, copy.deepcopy(edge_graph(edge.decoder, edge.tail)).eval(),
                           (z2, p2), "edge", meta["edge"])
    if config.calib_data is not None:
        x = calibration_images(config.calib_data, dc, config.calib_images)
        inputs = f"images of {config.calib_data}"
    else:
        x = torch.randn(CHECK_IMAGES, *dc["input_size"], generator=g)
        inputs = f"random N(0, 1) images (seed {config.seed})"
    progress(f"checking the ONNX halves against PyTorch with ONNX Runtime on {len(x)} {inputs}")
    onnx_device, onnx_edge = OnnxDeviceHalf(dev_path), OnnxEdgeHalf(edge_path)
    param = device.channel.param_range[1]  # the noisiest training condition: the condition input matters
    check = check_onnx(device, edge, onnx_device, onnx_edge, x, inputs, param)
    result: dict[str, Any] = {
        "opset": OPSET, "device_path": str(dev_path), "edge_path": str(edge_path),
        "device_bytes": dev_path.stat().st_size, "edge_bytes": edge_path.stat().st_size,
        "check": check.to_dict(), "reparam": config.reparam, "int8": None,
    }
    if config.reparam:  # the fused halves vs the run's unfused pipeline, noiseless link
        q = run.pipeline
        with torch.inference_mode():
            result["reparam_logits_max_abs_diff"] = max(
                float((edge(device(xb, 0.0), 0.0) - q.tail(q.codec.decoder(q.codec.encoder(q.head(xb), 0.0), 0.0)))
                      .abs().max()) for xb in x.split(64))
    if config.calib_data is not None:
        progress(f"calibrating and checking the int8 device half on {len(x)} {inputs}")
        int8 = quantize_device(dev_path, x, device.channel, meta["device"], config.calib_data, config.seed)
        q = OnnxDeviceHalf(int8.path)
        with torch.inference_mode():
            agree = sum(int((onnx_edge(q(x[i:i + 64])).argmax(1) == onnx_edge(onnx_device(x[i:i + 64])).argmax(1)).sum())
                        for i in range(0, len(x), 64))
        result["int8"] = {**int8.to_dict(), "top1_agreement_calib": agree / len(x)}
    return result


def _reparameterized(run) -> tuple[nn.Module, nn.Module]:
    """Head and tail of the run's backbone with re-parameterisable branches fused, cut at the same point."""
    from timm.utils.model import reparameterize_model

    fused = reparameterize_model(copy.deepcopy(run.model).eval())
    try:
        pipeline, _ = build_pipeline(fused, run.config)
    except Exception as e:
        raise ExportError(f"split point '{run.config.split}' does not survive `reparam`: "
                          f"{str(e).splitlines()[0][:200]}") from None
    return pipeline.head, pipeline.tail


def _prefixed(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
