"""Rich rendering of library results for people (stdout). Programs use --json instead."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .options import render as flags

console = Console(highlight=False)
if not console.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
    console = Console(highlight=False, width=200)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _spread(lo_hi, digits: int = 1) -> str:
    """' (lo-hi)': the spread of the timed runs beside their median."""
    return f" ({lo_hi[0]:.{digits}f}-{lo_hi[1]:.{digits}f})" if lo_hi else ""


def _layout_label(layout: dict) -> str:
    """nchw, nhwc, tokens 8x8+1 (grid + prefix tokens), tokens (a sequence), vector, unknown."""
    kind = layout.get("kind", "unknown")
    if kind == "tokens":
        grid = layout.get("grid")
        if not grid:
            return "tokens"
        prefix = layout.get("prefix_tokens", 0)
        return f"tokens {grid[0]}x{grid[1]}" + (f"+{prefix}" if prefix else "")
    return kind


def _threads(n: int) -> str:
    return f"{n} thread" + ("s" if n != 1 else "")


def _busy(warning: str | None, threads: int) -> None:
    """A timing's busy-machine warning (bnpp_cli.timing), beside the figures, where there is one."""
    if warning:
        console.print(Text(f"Warning: {warning}; rerun on a quieter machine"
                           + (" or with --threads 1" if threads > 1 else ""), style="yellow"))


def render_profile(p) -> None:
    shape = "x".join(map(str, p.input_size))
    console.print(f"[bold]{p.model}[/] input {shape}, weights: {p.weights}, "
                  f"{_si(p.total_macs)} MACs, {_si(p.total_params)} params, {p.latency_ms:.1f} ms{_spread(p.latency_range_ms)} "
                  f"(batch 1, {_threads(p.latency_threads)}, here: median of {p.latency_repeats} runs after a warm-up, (min-max))")
    _busy(p.latency_warning, p.latency_threads)
    t = Table(title=None, header_style="bold")
    for col in ("split point", "shape", "layout", "KiB f32", "zeros", "|f|<eps", "dev MACs", "dev params",
                "edge MACs", "edge params", "head ms (min-max)", "payload bits", "est ms"):
        t.add_column(col, justify="left" if col in ("split point", "shape", "layout") else "right")
    verify = any(r.max_abs_diff is not None for r in p.split_points)
    if verify:
        t.add_column("max |diff|", justify="right")
    rec = p.recommendation
    b = rec["budget"]
    for r in p.split_points:
        name = r.name + (f" (= {r.aliases[0]})" if r.aliases else "")
        mark = " *" if r.name == rec["best"] else (" ·" if r.name in rec["pareto"] else "")
        row = [name + mark, "x".join(map(str, r.shape)), _layout_label(r.layout), f"{r.bytes / 1024:.1f}", f"{r.zero_fraction:.1%}",
               f"{r.near_zero_fraction:.1%}", _si(r.device_macs), _si(r.device_params), _si(r.edge_macs),
               _si(r.edge_params), f"{r.latency_ms:.2f}{_spread(r.latency_range_ms, 2)}",
               f"{r.payload_bits}" + (_ratio_label(r.payload_ratio) if b["bits_per_image"] is not None else ""),
               f"{r.est_latency_ms:.1f}"]
        if verify:
            row.append(f"{r.max_abs_diff:.1e}")
        t.add_row(*row)
    console.print(t)
    if b["bits_per_image"] is not None:
        payload = f"payload {b['bits_per_image']:g} bits per image at every point (ratio there in brackets)"
        assumed = f"{b['bits_per_image']:g} bits per image"
    else:
        payload = f"codec ratio {b['ratio']:g}x (32-bit feature -> payload)"
        assumed = f"{b['ratio']:g}x codec"
    console.print(f"Budget: {b['bandwidth_mbps']:g} Mbit/s link, device {b['device_gmacs']:g} GMAC/s, "
                  f"edge {b['edge_gmacs']:g} GMAC/s, {payload}")
    console.print(f"Recommended split (ASSUMED {assumed} at every point, accuracy NOT measured): "
                  f"[bold green]{rec['best']}[/] (est. {rec['best_est_latency_ms']:.1f} ms end to end; "
                  f"edge-only {rec['baselines']['edge_only_ms']:.1f} ms, device-only "
                  f"{rec['baselines']['device_only_ms']:.1f} ms).  * best   · Pareto (device MACs vs payload)")
    console.print(f"Pareto set: {', '.join(rec['pareto'])}")
    console.print("For a split and rate chosen from measured accuracy on your data: "
                  "bnpp search MODEL --data DIR --max-drop 1")
    console.print(f"Sparsity inputs: {p.inputs}; MACs: 1 MAC = 2 FLOPs; eps = near-zero threshold")
    for note in p.notes:
        console.print(f"[yellow]Note:[/] {note}")


def _ratio_label(ratio: float) -> str:
    """The bit compression a fixed payload means at one point, e.g. ' (1310x)', ' (0.5x)'."""
    return f" ({ratio:.0f}x)" if ratio >= 10 else f" ({ratio:.2g}x)"


def render_measured(search, where) -> None:
    """The recommendation of a finished `bnpp search`, beside profile's assumed one."""
    rec = search.recommendation or {}
    c = rec.get("candidate")
    final = [m for m in search.candidates if m["name"] in search.final]
    unlearned = [m["name"] for m in final if m.get("learned") is False]
    learned = (f"; {len(final) - len(unlearned)} of {len(final)} candidates learned" if unlearned else
               ("" if any("learned" not in m for m in final) else f"; all {len(final)} candidates learned"))
    if c:
        console.print(f"Measured (bnpp search {escape(str(where))}): [bold green]{c['split']}[/] at rate {c['rate']:g}, "
                      f"{c['symbols']} symbols / {c['bits_per_image']} bits per image, {_si(c['device_macs'])} device MACs, "
                      f"validation drop {c['val_drop']:.2f} pt (tolerance {rec.get('max_drop', 0):g}), "
                      f"est. {c['latency_ms']:.2f} ms; run {escape(str(c['run']))}{learned}")
    elif rec.get("budget_too_small"):
        console.print(f"Measured (bnpp search {escape(str(where))}): no recommendation, no candidate learned")
    else:
        console.print(f"Measured (bnpp search {escape(str(where))}): no candidate within the tolerance{learned}")
    if rec.get("note"):
        console.print(f"[yellow]Note:[/] {escape(rec['note'])}")


def render_fit(result) -> None:
    last = result.epochs[-1] if result.epochs else {}
    cfg = result.config
    cc = cfg.codec
    fit = cfg.fit.to_dict() if cfg.fit is not None else {}
    console.print(f"Run [bold]{result.run}[/]: {cfg.model} split at {cfg.split} {'x'.join(map(str, cfg.feature_shape))} "
                  f"({cc.layout.describe()}), "
                  f"codec {cc.preset} -> code {'x'.join(map(str, cc.code_shape))} ({cc.bandwidth_ratio:g}x), "
                  f"channel {cfg.channel.name}")
    if fit.get("lr") is not None:
        kd = f", distillation {fit['distill']:g} at T={fit.get('distill_temperature', 1):g}" if fit.get("distill") else ""
        console.print(f"Recipe: Adam {fit['lr']:g} ({fit.get('lr_schedule', 'constant')}), batch {fit['batch_size']}{kd}")
    if "val_top1_noiseless" in last:
        worst = last.get("val_worst_label")
        at = f"{last['val_top1_worst']:.2%} at the worst training condition ({worst})" if worst else "noiseless channel"
        v = result.validation
        console.print(Text(f"Validation top-1 after {len(result.epochs)} epoch{'s' * (len(result.epochs) != 1)}: "
                           f"{last['val_top1_noiseless']:.2%} noiseless link, {at}; {result.seconds:.0f} s"))
        source = f"{v.get('images', last.get('val_images', '?'))} images, {v.get('source', 'validation')}"
        if v.get("backbone_may_have_seen"):
            console.print(Text(f"Validation images: {source}. The backbone came with weights and may have been trained "
                               f"on these images: this top-1 can overstate accuracy on new images "
                               f"(give --val-data, or run bnpp eval on test images).", style="yellow"))
        else:
            console.print(Text(f"Validation images: {source}."))
        learned = v.get("learned")
        if learned and not learned["learned"]:
            console.print(Text(f"Warning: the codec did not learn: {learned['reason']}. Train longer "
                               f"(--codec-epochs) or on more images (--limit).", style="bold yellow"))
        for warning in v.get("input_checks", []):
            console.print(Text(f"Warning: {flags(warning)}", style="bold yellow"))
    console.print(Text(_normalisation(cfg.data_config)))
    console.print(f"Next: bnpp eval {result.run} --data TEST_DATA")


def _normalisation(dc: dict) -> str:
    """The input normalisation a figure was measured with, and where it came from."""
    fmt = lambda v: ",".join(f"{x:g}" for x in v)  # noqa: E731
    source = f" ({flags(dc['normalisation'])})" if dc.get("normalisation") else ""
    return f"Inputs normalised with mean {fmt(dc['mean'])}, std {fmt(dc['std'])}{source}."



def render_eval(r) -> None:
    shapes = f"feature {'x'.join(map(str, r.feature_shape))} -> code {'x'.join(map(str, r.code_shape))}"
    if r.bits is not None:  # fixed-length digital levels
        rate = (f"({r.code_symbols} symbols/image): {r.bandwidth_ratio:.1f}x bandwidth, {r.bit_ratio:.1f}x bits "
                f"({r.bits}-bit symbols, {r.payload_bytes} bytes/image)")
    elif r.bits_per_image is not None:  # a coded stream: its measured bits are the rate, not the symbols
        rate = f"coded in {r.bits_per_image:.1f} bits/image (measured): {r.bit_ratio:.1f}x bits"
    else:
        rate = f"({r.code_symbols} symbols/image): {r.bandwidth_ratio:.1f}x bandwidth"
    console.print(f"[bold]{r.model}[/] split at {r.split}: {shapes} {rate}")
    console.print(Text(f"Channel: {r.channel_definition}"))
    if r.bits_per_image is not None:
        estimate = f" (-log2 of its tables {r.estimated_bits_per_image:.1f})" if r.estimated_bits_per_image is not None else ""
        console.print(Text(f"Measured per image, coded alone: {r.bits_per_image:.1f} bits = {r.bytes_per_image:.2f} bytes of "
                           f"payload{estimate}, {r.frame_bytes_per_image:.1f}-byte frame with the wire header; coder "
                           f"{r.encode_ms_per_image:.2f} ms device, {r.decode_ms_per_image:.2f} ms edge"))
    console.print(Text(f"Trained for: {r.train_condition}; conditions outside it are extrapolation (marked *)"))
    t = Table(header_style="bold")
    t.add_column(f"condition ({r.condition_axis})" if r.condition_axis else "condition")
    t.add_column("top-1 mean", justify="right")
    t.add_column("std", justify="right")
    t.add_column("draws", justify="right")
    t.add_column("drop vs backbone", justify="right")
    vl = ["", ""] if r.length_table is not None else []  # a length table: the symbols sent follow the condition
    if vl:  # and the batch-1 frame they make, measured
        t.add_column("symbols/image", justify="right")
        t.add_column("frame bytes", justify="right")
    radio = [k for k in ("channel_uses_per_image", "block_error_rate") if r.results and k in r.results[0]]
    for key in radio:  # a radio link (link.phy, link.ldpc): channel uses, and the LDPC blocks that failed
        t.add_column({"channel_uses_per_image": "channel uses/image", "block_error_rate": "BLER"}[key], justify="right")
    pad = vl + [""] * len(radio)
    t.add_row("uncut backbone", f"{r.backbone_top1:.2%}", "", "", "", *pad)
    t.add_row("noiseless link", f"{r.noiseless_top1:.2%}", "", "", f"{100 * (r.backbone_top1 - r.noiseless_top1):.2f} pt", *pad)
    lo, hi = r.train_range
    for row in r.results:
        value = next(iter(row["condition"].values()))
        inside = lo is None or (lo <= value and (hi is None or value <= hi))
        t.add_row(row["label"] + ("" if inside else " *"), f"{row['top1_mean']:.2%}", f"{100 * row['top1_std']:.2f} pt", str(row["draws"]),
                  f"{100 * (r.backbone_top1 - row['top1_mean']):.2f} pt",
                  *([str(row["symbols_per_image"]), f"{row['frame_bytes']:.0f}"] if vl else []),
                  *[_radio_cell(row.get(key)) for key in radio])
    console.print(t)
    if vl and r.symbols_per_image_mean is not None:
        console.print(f"Variable-length code: {r.symbols_per_image_mean:.1f} symbols/image on average over these "
                      f"conditions (at most {r.code_symbols}; lengths from its table, chosen on validation images)")
    console.print(f"{r.images} test images; accuracies are top-1 on the data given.")
    if r.normalisation:
        console.print(Text(_normalisation({**r.normalisation, "normalisation": r.normalisation.get("source")})))
    for warning in r.warnings:
        console.print(Text(f"Warning: {flags(warning)}", style="bold yellow"))


def _radio_cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render_export(r) -> None:
    kind = "packed digital levels" if r.digital else "float32 symbols"
    if r.device_path:
        console.print(f"device: {r.device_path} ({r.device_bytes / 1e6:.2f} MB, {_si(r.device_params)} params)")
        console.print(f"edge:   {r.edge_path} ({r.edge_bytes / 1e6:.2f} MB, {_si(r.edge_params)} params)")
    if r.onnx:
        o, c = r.onnx, r.onnx["check"]
        console.print(f"device: {o['device_path']} ({o['device_bytes'] / 1e6:.2f} MB), edge: {o['edge_path']} "
                      f"({o['edge_bytes'] / 1e6:.2f} MB), ONNX opset {o['opset']}, dynamic batch")
        console.print(f"ONNX Runtime vs PyTorch on {c['images']} {c['inputs']}: max |diff| code {c['code_max_abs_diff']:.1e}, "
                      f"logits {c['logits_max_abs_diff']:.1e}; top-1 agreement {c['top1_agreement']:.2%}")
        if o.get("reparam"):
            console.print(f"--reparam: fused vs unfused logits max |diff| {o['reparam_logits_max_abs_diff']:.1e}")
        if o["int8"]:
            q = o["int8"]
            console.print(f"int8 device: {q['path']} ({q['file_bytes'] / 1e6:.2f} MB vs {q['float_file_bytes'] / 1e6:.2f} MB "
                          f"float), calibrated on {q['calib_images']} images; top-1 agreement with the float "
                          f"device half on them {q['top1_agreement_calib']:.2%}")
    if r.payload_bytes is None:
        console.print(f"pair id {r.pair_id}; code {'x'.join(map(str, r.code_shape))} per image, entropy-coded: its "
                      f"payload varies per image (bnpp eval measures bits and bytes per image)")
    elif r.frames_per_condition is not None:  # a variable-length code: the frame follows the condition
        groups: list[list[dict]] = []  # consecutive entries sending the same length, shown as one range
        for e in r.frames_per_condition:
            if groups and groups[-1][0]["symbols_per_image"] == e["symbols_per_image"]:
                groups[-1].append(e)
            else:
                groups.append([e])
        spans = [g[-1]["label"] + (f" .. {g[0]['label']}" if len(g) > 1 else "") for g in groups]
        sizes = "; ".join(f"{span}: {g[0]['symbols_per_image']} symbols = {g[0]['frame_bytes']} B"
                          for span, g in zip(spans, groups))
        console.print(f"pair id {r.pair_id}; code {'x'.join(map(str, r.code_shape))} per image, variable-length: batch-1 "
                      f"frames of {kind} per its length table (an entry serves its condition up to the next better "
                      f"one): {sizes or 'uncalibrated'}; at worse conditions the whole code, "
                      f"{r.payload_bytes} bytes + {r.header_bytes}-byte wire header = {r.frame_bytes}-byte frame")
    else:
        console.print(f"pair id {r.pair_id}; code {'x'.join(map(str, r.code_shape))} per image: payload "
                      f"{r.payload_bytes} bytes of {kind} + {r.header_bytes}-byte wire header = {r.frame_bytes}-byte frame")


def render_remote_predictions(results) -> None:
    for r in results:
        best = ", ".join(f"{name} {p:.1%}" for name, p in r.top)
        console.print(f"[bold]{escape(r.image)}[/]: {escape(best)}  |  request {r.request_bytes} B = frame {r.frame_bytes} B (payload "
                      f"{r.payload_bytes} B + {r.frame_bytes - r.payload_bytes} B wire header) + "
                      f"{r.request_bytes - r.frame_bytes} B request header, device {r.device_ms:.1f} ms "
                      f"({_threads(r.device_threads)}), "
                      f"network {r.network_ms:.1f} ms, edge {r.edge_ms:.1f} ms")


def render_predictions(result) -> None:
    for r in result.predictions:
        best = ", ".join(f"{name} {p:.1%}" for name, p in r.top)
        console.print(f"[bold]{escape(r.image)}[/]: {escape(best)}  |  device {r.device_ms:.1f} ms, edge {r.edge_ms:.1f} ms")
    lat = result.latency_ms
    console.print(f"Per image: payload {result.payload_bytes} B + {result.wire_header_bytes} B wire header = "
                  f"{result.frame_bytes} B frame; {result.runtime}, batch {result.batch_size}, "
                  f"{_threads(lat['device']['threads'])}, ms per image over "
                  f"{len(result.predictions)} images after a warm-up pass: device median {lat['device']['median']:.2f} "
                  f"({lat['device']['min']:.2f}-{lat['device']['max']:.2f}), edge median {lat['edge']['median']:.2f} "
                  f"({lat['edge']['min']:.2f}-{lat['edge']['max']:.2f})")
    _busy(lat["device"]["warning"] or lat["edge"]["warning"], lat["device"]["threads"])


def render_models(names, pattern: str, pretrained: bool) -> None:
    """Names on stdout, one per line (for grep and xargs); the count on stderr."""
    for name in names:
        console.print(Text(name))
    kind = "pretrained weights" if pretrained else "models"
    Console(stderr=True, highlight=False).print(Text(f"{len(names)} timm {kind} match {pattern!r}", style="dim"))
