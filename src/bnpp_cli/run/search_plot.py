"""The search's picture: device MACs against bits per image, the drop as colour, the Pareto front
and the two baselines marked, the recommendation circled (PNG)."""

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
    vmax = max([2 * result.recommendation["max_drop"]] + [max(0.0, r["val_drop"]) for r in rows]) or 1.0
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    sc = ax.scatter([c["device_macs"] / 1e6 for c in final], [c["bits_per_image"] for c in final],
                    c=[c["val_drop"] for c in final], cmap="viridis_r", vmin=0, vmax=vmax, s=50, zorder=3,
                    label="candidates (longest fit)")
    for c in final:
        ax.annotate(f"{c['split']} {c['rate']:g}", (c["device_macs"] / 1e6, c["bits_per_image"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    for b, marker in zip(base, ("s", "^")):
        ax.scatter([b["device_macs"] / 1e6], [b["bits_per_image"]], c=[b["val_drop"]], cmap="viridis_r", vmin=0,
                   vmax=vmax, marker=marker, s=90, edgecolors="k", zorder=4,
                   label=f"{b['name']} ({b['val_drop']:.2f} pt)")
    front = sorted((r for r in rows if r["name"] in result.pareto), key=lambda r: r["device_macs"])
    ax.plot([r["device_macs"] / 1e6 for r in front], [r["bits_per_image"] for r in front], "k--", lw=0.8,
            zorder=2, label="Pareto set (MACs, bits, drop)")
    rec = result.recommendation.get("candidate")
    if rec:
        ax.scatter([rec["device_macs"] / 1e6], [rec["bits_per_image"]], s=260, facecolors="none", edgecolors="r",
                   lw=1.5, zorder=5, label=f"recommended split: {rec['split']} {rec['rate']:g}")
    ax.set_yscale("log")
    ax.set_xlabel("device MACs per image, head + encoder (M)")
    ax.set_ylabel("bits per image")
    ax.set_title(f"{result.model}, {result.channel} at {result.condition}: validation drop", fontsize=9)
    fig.colorbar(sc, ax=ax, label="top-1 drop (points, validation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
