"""Matplotlib figures shared by eval, analysis and reports (PNG, headless).

The building blocks (:func:`save`, :func:`short`, :func:`bits_points`, :func:`line_vs_bits`,
:func:`annotate_points`, :func:`annotate_cells`) are also what the report's figures
(:mod:`bitswitch.experiments.figures`) are drawn with.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, path: str | Path) -> str:
    """Lay ``fig`` out tightly, write it to ``path`` atomically (temporary file + rename) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return str(path)


def short(name, n: int = 18) -> str:
    """``name`` cut to ``n`` characters (the last two ``..``) so point labels stay readable."""
    name = str(name)
    return name if len(name) <= n else name[:n - 2] + ".."


def bits_points(records: list[dict], metric: str) -> list[tuple[float, float, str]]:
    """``(avg_w_bits, metric, profile)`` of the records that have both, sorted by bits."""
    return sorted((r["avg_w_bits"], r[metric], r["profile"]) for r in records
                  if r.get(metric) is not None and r.get("avg_w_bits") is not None)


def annotate_points(ax, pts, fontsize: float = 7) -> None:
    """Name each ``(x, y, name)`` point just above and right of it."""
    for x, y, name in pts:
        ax.annotate(short(name), (x, y), fontsize=fontsize, textcoords="offset points", xytext=(3, 3))


def line_vs_bits(ax, pts, label: str, annotate: bool = True, fontsize: float = 7) -> None:
    """One line with markers through :func:`bits_points`, points named by profile when ``annotate``."""
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if annotate:
        annotate_points(ax, pts, fontsize)


def annotate_cells(ax, data, fmt: str = "{:.2g}", fontsize: float = 6, color="w") -> None:
    """Write each finite cell of the 2-D array ``data`` on a heatmap; ``color``: a colour or ``value -> colour``."""
    import numpy as np

    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if not np.isnan(data[i, j]):
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=fontsize,
                        color=color(data[i, j]) if callable(color) else color)


def metric_vs_bits(records: list[dict], metrics: list[str], path: str | Path, title: str = "") -> str:
    """Each metric against ``avg_w_bits`` on one axis, one point per profile, labelled by profile."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for metric in metrics:
        pts = bits_points(records, metric)
        if pts:
            line_vs_bits(ax, pts, metric.upper())
    ax.set_xlabel("average weight bits")
    ax.set_ylabel(" / ".join(m.upper() for m in metrics))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def transfer_heatmap(matrix: dict[str, dict[str, float]], path: str | Path, title: str = "",
                     label: str = "F1") -> str:
    """Heatmap of ``matrix[row][col]`` (e.g. F1 of examples crafted at row, evaluated at column)."""
    import numpy as np

    rows = list(matrix)
    cols = list(dict.fromkeys(c for r in rows for c in matrix[r]))
    data = np.array([[matrix[r].get(c, np.nan) for c in cols] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2.5, 0.8 * len(rows) + 1.8), dpi=120)
    im = ax.imshow(data, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("evaluated at")
    ax.set_ylabel("crafted at")
    lo, hi = np.nanmin(data) if data.size else 0, np.nanmax(data) if data.size else 1
    annotate_cells(ax, data, "{:.1f}", 8, lambda v: "white" if v < (lo + hi) / 2 else "black")
    fig.colorbar(im, ax=ax, label=label)
    ax.set_title(title, fontsize=9)
    return save(fig, path)


def sensitivity_heatmap(records: list[dict], path: str | Path, value: str = "damage", title: str = "",
                        label: str = "") -> str:
    """Layers x roles heatmap of ``record[value]`` for unit records (``layer``, ``role``); a unit
    outside the blocks (``head``) is named in the title with its value."""
    import numpy as np

    roles = ["attn_in", "attn_out", "mlp_in", "mlp_out"]
    blocks = [r for r in records if r.get("layer") is not None and r.get(value) is not None]
    layers = sorted({r["layer"] for r in blocks})
    data = np.full((len(layers), len(roles)), np.nan)
    for r in blocks:
        if r["role"] in roles:
            data[layers.index(r["layer"]), roles.index(r["role"])] = r[value]
    extra = [f"{r['name']}: {r[value]:.3g}" for r in records if r.get("layer") is None and r.get(value) is not None]
    fig, ax = plt.subplots(figsize=(4.8, 0.22 * len(layers) + 1.6), dpi=120)
    im = ax.imshow(data, cmap="magma_r", aspect="auto")
    ax.set_xticks(range(len(roles)), roles, fontsize=8)
    ax.set_yticks(range(len(layers)), [f"L{i}" for i in layers], fontsize=6)
    ax.set_xlabel("role")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label=label or value)
    ax.set_title(title + (f"\n({'; '.join(extra)})" if extra else ""), fontsize=8)
    return save(fig, path)


def sensitivity_bars(records: list[dict], path: str | Path, value: str = "damage", title: str = "",
                     label: str = "") -> str:
    """Bar chart of ``record[value]`` per record ``name`` (e.g. one bar per layer)."""
    pts = [(r["name"], r[value]) for r in records if r.get(value) is not None]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.22 * len(pts) + 1.5), 3.2), dpi=120)
    ax.bar(range(len(pts)), [v for _, v in pts], color="tab:red")
    ax.set_xticks(range(len(pts)), [n for n, _ in pts], rotation=90, fontsize=7)
    ax.set_ylabel(label or value)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    return save(fig, path)


def pareto_plot(records: list[dict], metric: str, path: str | Path, fronts: dict[str, list[int]] | None = None,
                title: str = "", group: str = "kind") -> str:
    """Two panels: ``metric`` against ``avg_w_bits`` and against ``weight_bytes`` (MiB), one marker
    style per ``record[group]`` (e.g. searched / uniform); ``fronts[x_key]`` (record indices, the
    Pareto front in that panel) are joined and ringed."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    markers = ["o", "s", "^", "D", "v", "P"]
    groups = list(dict.fromkeys(r.get(group, "") for r in records))
    for ax, (xkey, scale, xlabel) in zip(axes, [("avg_w_bits", 1, "average weight bits"),
                                                 ("weight_bytes", 1 / 2**20, "weight MiB")]):
        for gi, g in enumerate(groups):
            pts = [r for r in records if r.get(group, "") == g and r.get(metric) is not None]
            ax.scatter([r[xkey] * scale for r in pts], [r[metric] for r in pts], marker=markers[gi % len(markers)],
                       label=str(g), zorder=3)
            annotate_points(ax, [(r[xkey] * scale, r[metric], str(r.get("label", r["profile"]))[:18])
                                 for r in pts], 6)
        front = (fronts or {}).get(xkey)
        if front:
            fr = sorted((records[i] for i in front), key=lambda r: r[xkey])
            ax.plot([r[xkey] * scale for r in fr], [r[metric] for r in fr], color="black", lw=1, ls="--",
                    label="Pareto front", zorder=2)
            ax.scatter([r[xkey] * scale for r in fr], [r[metric] for r in fr], s=120, facecolors="none",
                       edgecolors="black", zorder=4)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, path)
