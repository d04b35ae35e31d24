"""Matplotlib figures shared by eval, analysis and reports (PNG, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def metric_vs_bits(records: list[dict], metrics: list[str], path: str | Path, title: str = "") -> str:
    """Scatter of each metric against ``avg_w_bits``, one point per profile, labelled by profile."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for metric in metrics:
        pts = [(r["avg_w_bits"], r[metric], r["profile"]) for r in records if r.get(metric) is not None]
        if not pts:
            continue
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=metric.upper())
        for x, y, name in pts:
            ax.annotate(name if len(name) <= 18 else name[:16] + "..", (x, y), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("average weight bits")
    ax.set_ylabel(" / ".join(m.upper() for m in metrics))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return str(path)
