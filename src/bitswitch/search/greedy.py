"""Greedy search: lower the least sensitive unit step by step while the metric stays within the drop.

Every unit starts at the highest candidate. A *move* lowers one unit to its next candidate; moves
are ranked by predicted damage per unit of cost saved (the damage table over bytes or bits x
params), cheapest first. With ``max_drop`` each move is applied, measured, and kept only if the
measured drop stays within ``max_drop``; a rejected unit is frozen at its current bits. ``chunk``
moves can be tried per measurement (halved after a rejection, down to one) to save measurements
on large models. With a ``budget`` (and no ``max_drop``) moves are applied unmeasured until the
cost fits, and the caller verifies the result.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import BitswitchError


def greedy_search(table: dict[str, dict[int, float]], cost: dict[str, dict[int, int]],
                  measure_drop: Callable[[dict[str, int]], float] | None = None, max_drop: float | None = None,
                  budget: int | None = None, chunk: int = 1, on_step: Callable[[dict], None] | None = None
                  ) -> tuple[dict[str, int], list[dict]]:
    """Returns ``(assign, history)``; history rows: ``{"step", "moves", "cost", "drop", "accepted"}``.

    table: ``{unit: {bits: damage}}``; cost: ``{unit: {bits: int}}``; ``measure_drop(assign)`` the
    measured drop of an assignment (needed with ``max_drop``).
    """
    if max_drop is None and budget is None:
        raise BitswitchError("greedy search needs a stopping rule: --max-drop, --avg-bits or --max-bytes")
    if max_drop is not None and measure_drop is None:
        raise ValueError("max_drop needs measure_drop")
    if chunk < 1:
        raise BitswitchError(f"--chunk must be at least 1, got {chunk}")
    options = {u: sorted(table[u]) for u in table}
    assign = {u: opts[-1] for u, opts in options.items()}
    frozen: set[str] = set()
    history: list[dict] = []

    def total(a):
        return sum(cost[u][b] for u, b in a.items())

    def lower(u):
        opts = options[u]
        i = opts.index(assign[u])
        return opts[i - 1] if i > 0 else None

    def priority(u):
        b, nb = assign[u], lower(u)
        saved = cost[u][b] - cost[u][nb]
        extra = table[u][nb] - table[u][b]
        return (extra / saved if saved > 0 else float("inf"), u)

    step = 0
    while True:
        if budget is not None and total(assign) <= budget:
            break
        movable = sorted((u for u in assign if u not in frozen and lower(u) is not None), key=priority)
        if not movable:
            break
        k = 1 if max_drop is None else min(chunk, len(movable))
        moves = {u: lower(u) for u in movable[:k]}
        trial = {**assign, **moves}
        step += 1
        row = {"step": step, "moves": {u: b for u, b in moves.items()}, "cost": total(trial), "drop": None,
               "accepted": True}
        if max_drop is not None:
            row["drop"] = measure_drop(trial)
            row["accepted"] = row["drop"] <= max_drop
        if row["accepted"]:
            assign = trial
        elif k > 1:
            chunk = max(1, k // 2)   # too many at once: retry fewer
        else:
            frozen.update(moves)    # this unit cannot go lower
        history.append(row)
        if on_step is not None:
            on_step(row)
    return assign, history
