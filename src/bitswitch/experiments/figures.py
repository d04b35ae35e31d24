"""PNG figures of the report (matplotlib, headless): metrics against bits, grouped bars, loss
curves, heatmaps and Pareto fronts. Every function writes atomically and returns the path.

Drawn with :mod:`bitswitch.plots`' building blocks (saving, point labels, lines against bits,
heatmap cells), so report figures and the ``eval`` / ``search`` plots share one implementation.
"""

from __future__ import annotations

import textwrap

from ..plots import annotate_cells, annotate_points, bits_points, line_vs_bits, save, short
import matplotlib.pyplot as plt  # noqa: E402 - after bitswitch.plots, which selects the headless Agg backend


def _errorbars(ax, rows: list[dict], metric: str, color=None) -> None:
    """Vertical bars of +-1 standard error (``<metric>_se`` of the rows) around each point."""
    pts = [(r["avg_w_bits"], r[metric], r[f"{metric}_se"]) for r in rows
           if r.get(metric) is not None and r.get("avg_w_bits") is not None and r.get(f"{metric}_se")]
    if pts:
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt="none",
                    ecolor=color, elinewidth=1, capsize=3, alpha=0.8)


def metrics_vs_bits(rows: list[dict], metrics: list[str], path, title: str = "", log_y: bool = False) -> str:
    """One panel per metric; x = average weight bits, one line per ``label``, points named by profile;
    error bars of one standard error where rows carry ``<metric>_se``."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), dpi=110, squeeze=False)
    labels = list(dict.fromkeys(r["label"] for r in rows))
    for ax, metric in zip(axes[0], metrics):
        for label in labels:
            pts = bits_points([r for r in rows if r["label"] == label], metric)
            if pts:   # points are named only for one or two lines: with more the names would overlap
                line_vs_bits(ax, pts, short(label, 28), annotate=len(labels) <= 2, fontsize=6)
                _errorbars(ax, [r for r in rows if r["label"] == label], metric, ax.lines[-1].get_color())
        ax.set_xlabel("average weight bits")
        ax.set_ylabel(metric)
        if log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.set_title(f"{title} {metric}".strip(), fontsize=9)
        if len(labels) > 1:
            ax.legend(fontsize=7)
    return save(fig, path)


def grouped_bars(rows: list[dict], metric: str, path, title: str = "") -> str:
    """Bars of ``metric`` per profile (groups) and label (colours): the side-by-side comparison, with
    one-standard-error whiskers where rows carry ``<metric>_se``."""
    profiles = list(dict.fromkeys(r["profile"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    value = {(r["label"], r["profile"]): r.get(metric) for r in rows}
    err = {(r["label"], r["profile"]): r.get(f"{metric}_se") for r in rows}
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(profiles) * max(1, len(labels)) * 0.5 + 2), 3.8), dpi=110)
    for i, label in enumerate(labels):
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(profiles))]
        ys = [value.get((label, p)) for p in profiles]
        errs = [err.get((label, p)) for p in profiles]
        keep = [i for i, y in enumerate(ys) if y is not None]
        ax.bar([xs[i] for i in keep], [ys[i] for i in keep], width, label=short(label, 28),
               yerr=[errs[i] or 0.0 for i in keep] if any(errs[i] for i in keep) else None, capsize=2)
    ax.set_xticks(range(len(profiles)))
    ax.set_xticklabels([short(p, 14) for p in profiles], fontsize=7, rotation=20)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return save(fig, path)


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
        ax.plot(steps, smooth, label=short(label, 28))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (moving average)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)


def heatmap(matrix: list[list[float | None]], rows: list[str], cols: list[str], path, title: str = "",
            cbar: str = "", fmt: str = "{:.2g}") -> str:
    """A labelled heatmap; cells are annotated when the matrix is small enough to read them."""
    import numpy as np

    data = np.array([[np.nan if v is None else float(v) for v in r] for r in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(min(14, 1.0 + 0.55 * len(cols) + 2), min(12, 1.0 + 0.3 * len(rows) + 1.5)),
                           dpi=110)
    im = ax.imshow(data, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([short(c, 14) for c in cols], fontsize=7, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([short(r, 20) for r in rows], fontsize=6 if len(rows) > 20 else 8)
    if data.size <= 120:
        annotate_cells(ax, data, fmt, 6, "w")
    fig.colorbar(im, ax=ax, label=cbar)
    ax.set_title(textwrap.fill(title, 70), fontsize=9)   # long titles wrap instead of running off the figure
    return save(fig, path)


def pareto(points: list[dict], x: str, y: str, path, title: str = "", front_key: str = "pareto",
           higher_is_better: bool = True) -> str:
    """Scatter of candidates (x: bits or bytes, y: quality) with the Pareto-optimal ones joined."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.scatter([p[x] for p in points], [p[y] for p in points], s=12, alpha=0.5, label="candidates")
    front = sorted((p for p in points if p.get(front_key)), key=lambda p: p[x])
    if front:
        ax.plot([p[x] for p in front], [p[y] for p in front], marker="o", color="C3", label="Pareto front")
        annotate_points(ax, [(p[x], p[y], p["name"]) for p in front if p.get("name")], 6)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} ({'higher' if higher_is_better else 'lower'} is better)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save(fig, path)
