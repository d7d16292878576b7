"""The search's picture: device MACs against bits per image, the drop as colour (saturating at 5x
the tolerance), the Pareto set and the two baselines marked, the recommendation circled (PNG)."""

from __future__ import annotations

from .evaluate import check_plotting
from .search import SearchResult


def plot_search(result: SearchResult, path: str) -> None:
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_write

    final = [c for c in result.candidates if c["name"] in result.final]
    base = [result.baselines["label_on_device"], result.baselines["image_to_edge"]]
    rows = final + base
    vmax = 5 * result.recommendation["max_drop"] or 1.0  # colour resolves the tolerance; worse is one colour
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colour = dict(cmap="viridis_r", vmin=0, vmax=vmax, zorder=3)
    on_front = [c["name"] in result.pareto for c in final]
    sc = ax.scatter([c["device_macs"] / 1e6 for c in final], [c["bits_per_image"] for c in final],
                    c=[c["val_drop"] for c in final], s=50, edgecolors=["k" if p else "none" for p in on_front],
                    linewidths=1.2, label="candidates (longest fit); black edge: Pareto set", **colour)
    for c in final:  # a candidate that did not learn is labelled so: it is never Pareto or recommended
        unlearned = ", did not learn" if c.get("learned") is False else ""
        ax.annotate(f"{c['split']} {c['rate']:g} ({c['val_drop']:.1f}{unlearned})",
                    (c["device_macs"] / 1e6, c["bits_per_image"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    for b, marker in zip(base, ("s", "^")):
        ax.scatter([b["device_macs"] / 1e6], [b["bits_per_image"]], c=[b["val_drop"]], marker=marker, s=90,
                   edgecolors="k", label=f"{b['name']} ({b['val_drop']:.2f} pt)", **colour)
    rec = result.recommendation.get("candidate")
    if rec:
        ax.scatter([rec["device_macs"] / 1e6], [rec["bits_per_image"]], s=260, facecolors="none", edgecolors="r",
                   lw=1.5, zorder=5, label=f"recommended split: {rec['split']} {rec['rate']:g}")
    ax.set_yscale("log")
    ax.set_xlim(-0.05 * max(r["device_macs"] for r in rows) / 1e6, 1.2 * max(r["device_macs"] for r in rows) / 1e6)
    ax.set_xlabel("device MACs per image, head + encoder (M)")
    ax.set_ylabel("bits per image")
    ax.set_title(f"{result.model}, {result.channel} at {result.condition}: validation drop", fontsize=9)
    fig.colorbar(sc, ax=ax, extend="max", label="top-1 drop (points, validation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
