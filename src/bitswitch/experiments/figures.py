"""PNG figures of the report (matplotlib, headless): metrics against bits, grouped bars, loss
curves, heatmaps and Pareto fronts. Every function writes atomically and returns the path."""

from __future__ import annotations

import textwrap

from pathlib import Path

from .. import plots  # noqa: F401 - selects the headless Agg backend before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: str | Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.tight_layout()
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return str(path)


def _short(name: str, n: int = 18) -> str:
    name = str(name)
    return name if len(name) <= n else name[:n - 2] + ".."


def metrics_vs_bits(rows: list[dict], metrics: list[str], path, title: str = "", log_y: bool = False) -> str:
    """One panel per metric; x = average weight bits, one line per ``label``, points named by profile."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), dpi=110, squeeze=False)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for ax, metric in zip(axes[0], metrics):
        for label in labels:
            pts = sorted((r["avg_w_bits"], r[metric], r["profile"]) for r in rows
                         if r["label"] == label and r.get(metric) is not None and r.get("avg_w_bits") is not None)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=_short(label, 28))
            if len(labels) <= 2:   # with many lines the names would overlap
                for x, y, name in pts:
                    ax.annotate(_short(name), (x, y), fontsize=6, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("average weight bits")
        ax.set_ylabel(metric)
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.set_title(f"{title} {metric}".strip(), fontsize=9)
        if len(labels) > 1:
            ax.legend(fontsize=7)
    return _save(fig, path)


def grouped_bars(rows: list[dict], metric: str, path, title: str = "") -> str:
    """Bars of ``metric`` per profile (groups) and label (colours): the side-by-side comparison."""
    profiles = list(dict.fromkeys(r["profile"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    value = {(r["label"], r["profile"]): r.get(metric) for r in rows}
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(profiles) * max(1, len(labels)) * 0.5 + 2), 3.8), dpi=110)
    for i, label in enumerate(labels):
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(profiles))]
        ys = [value.get((label, p)) for p in profiles]
        ax.bar([x for x, y in zip(xs, ys) if y is not None], [y for y in ys if y is not None], width,
               label=_short(label, 28))
    ax.set_xticks(range(len(profiles)))
    ax.set_xticklabels([_short(p, 14) for p in profiles], fontsize=7, rotation=20)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return _save(fig, path)


def loss_curves(curves: dict[str, list[tuple[int, float]]], path, title: str = "training loss") -> str:
    """Training loss against step per run, smoothed by a moving average (raw points are noisy)."""
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
    for label, pts in curves.items():
        if not pts:
            continue
        steps, losses = zip(*pts)
        k = max(1, len(losses) // 10)
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, label=_short(label, 28))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (moving average)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def heatmap(matrix: list[list[float | None]], rows: list[str], cols: list[str], path, title: str = "",
            cbar: str = "", fmt: str = "{:.2g}") -> str:
    """A labelled heatmap; cells are annotated when the matrix is small enough to read them."""
    import numpy as np

    data = np.array([[np.nan if v is None else float(v) for v in r] for r in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(min(14, 1.0 + 0.55 * len(cols) + 2), min(12, 1.0 + 0.3 * len(rows) + 1.5)),
                           dpi=110)
    im = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([_short(c, 14) for c in cols], fontsize=7, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_short(r, 20) for r in rows], fontsize=6 if len(rows) > 20 else 8)
    if data.size <= 120:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if not np.isnan(data[i, j]):
                    ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", fontsize=6, color="w")
    fig.colorbar(im, ax=ax, label=cbar)
    ax.set_title(textwrap.fill(title, 70), fontsize=9)   # long titles wrap instead of running off the figure
    return _save(fig, path)


def pareto(points: list[dict], x: str, y: str, path, title: str = "", front_key: str = "pareto",
           higher_is_better: bool = True) -> str:
    """Scatter of candidates (x: bits or bytes, y: quality) with the Pareto-optimal ones joined."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.scatter([p[x] for p in points], [p[y] for p in points], s=12, alpha=0.5, label="candidates")
    front = sorted((p for p in points if p.get(front_key)), key=lambda p: p[x])
    if front:
        ax.plot([p[x] for p in front], [p[y] for p in front], marker="o", color="C3", label="Pareto front")
        for p in front:
            if p.get("name"):
                ax.annotate(_short(p["name"]), (p[x], p[y]), fontsize=6, textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)
