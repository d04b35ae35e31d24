"""The Pareto front of measured profiles: no other profile is at least as small and at least as good.

Pure: records in, indices out. Plotting is :func:`bitswitch.plots.pareto_plot`.
"""

from __future__ import annotations


def pareto_front(records: list[dict], x_key: str, y_key: str, higher_is_better: bool = True) -> list[int]:
    """Indices of the records on the front of (smaller ``x_key``, better ``y_key``), sorted by x.

    A record is dominated when another has x <= its x and y at least as good, one of them strictly.
    Records lacking either key are ignored.
    """
    pts = [(i, r[x_key], r[y_key] if higher_is_better else -r[y_key]) for i, r in enumerate(records)
           if r.get(x_key) is not None and r.get(y_key) is not None]
    front = []
    for i, x, y in pts:
        dominated = any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for j, x2, y2 in pts if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (records[i][x_key], i))
