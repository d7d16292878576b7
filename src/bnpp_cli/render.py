"""Rich rendering of library results for people (stdout). Programs use --json instead."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)
if not console.is_terminal:  # piped or captured: do not squeeze tables into 80 columns
    console = Console(highlight=False, width=200)


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def render_profile(p) -> None:
    shape = "x".join(map(str, p.input_size))
    console.print(f"[bold]{p.model}[/] input {shape}, weights: {p.weights}, "
                  f"{_si(p.total_macs)} MACs, {_si(p.total_params)} params, {p.latency_ms:.1f} ms (batch 1, here)")
    t = Table(title=None, header_style="bold")
    for col in ("split point", "shape", "KiB f32", "zeros", "|f|<eps", "dev MACs", "dev params",
                "edge MACs", "edge params", "head ms", "est ms"):
        t.add_column(col, justify="left" if col in ("split point", "shape") else "right")
    verify = any(r.max_abs_diff is not None for r in p.split_points)
    if verify:
        t.add_column("max |diff|", justify="right")
    rec = p.recommendation
    for r in p.split_points:
        name = r.name + (f" (= {r.aliases[0]})" if r.aliases else "")
        mark = " *" if r.name == rec["best"] else (" ·" if r.name in rec["pareto"] else "")
        row = [name + mark, "x".join(map(str, r.shape)), f"{r.bytes / 1024:.1f}", f"{r.zero_fraction:.1%}",
               f"{r.near_zero_fraction:.1%}", _si(r.device_macs), _si(r.device_params), _si(r.edge_macs),
               _si(r.edge_params), f"{r.latency_ms:.2f}", f"{r.est_latency_ms:.1f}"]
        if verify:
            row.append(f"{r.max_abs_diff:.1e}")
        t.add_row(*row)
    console.print(t)
    b = rec["budget"]
    console.print(f"Budget: {b['bandwidth_mbps']:g} Mbit/s link, device {b['device_gmacs']:g} GMAC/s, "
                  f"edge {b['edge_gmacs']:g} GMAC/s, codec ratio {b['ratio']:g}x (32-bit feature -> payload)")
    console.print(f"Recommended split: [bold green]{rec['best']}[/] (est. {rec['best_est_latency_ms']:.1f} ms end to end; "
                  f"edge-only {rec['baselines']['edge_only_ms']:.1f} ms, device-only "
                  f"{rec['baselines']['device_only_ms']:.1f} ms).  * best   · Pareto (device MACs vs payload)")
    console.print(f"Pareto set: {', '.join(rec['pareto'])}")
    console.print(f"Sparsity inputs: {p.inputs}; MACs: 1 MAC = 2 FLOPs; eps = near-zero threshold")
    for note in p.notes:
        console.print(f"[yellow]Note:[/] {note}")
