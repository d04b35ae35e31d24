"""Budgeted assignment: pick one option (bit-width) per unit to minimise the summed damage while
the summed cost (bits x params, or bytes) stays within a budget. A multiple-choice knapsack.

Pure: integers and floats in, a :class:`Solution` out; nothing here knows about models.

Solved by dynamic programming over cost. Costs are shifted by each unit's cheapest option and
divided by the gcd of all the shifted costs, which keeps the DP exact and small for real models
(SmolLM2-135M at an average-bits budget: about a thousand cost states). When the states would
still exceed ``max_states``, costs are discretised: rounded *up* for the answer (so it never
exceeds the budget) and *down* for a relaxation whose optimum bounds the true optimum from below;
``Solution.gap`` is the difference, 0 when exact.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..errors import BitswitchError


class InfeasibleBudget(BitswitchError):
    """The budget is below the cheapest assignment (``minimum``)."""

    def __init__(self, minimum: int, budget: int):
        self.minimum, self.budget = minimum, budget
        super().__init__(f"budget {budget} is below the cheapest assignment {minimum}")


@dataclass(frozen=True)
class Solution:
    assign: dict            # unit -> chosen option (bits)
    objective: float        # summed damage of ``assign``
    cost: int               # summed cost of ``assign`` (<= the budget)
    bound: float            # lower bound on the optimal objective; equals objective when exact
    exact: bool

    @property
    def gap(self) -> float:
        """How far ``objective`` may be above the optimum (0 when solved exactly)."""
        return max(self.objective - self.bound, 0.0)


def _check(damage: dict, cost: dict) -> None:
    if set(damage) != set(cost):
        raise ValueError("damage and cost must have the same units")
    for u in damage:
        if not damage[u] or set(damage[u]) != set(cost[u]):
            raise ValueError(f"unit {u!r}: damage and cost need the same non-empty options")


def solve_budget(damage: dict[str, dict[int, float]], cost: dict[str, dict[int, int]], budget: int,
                 max_states: int = 200_000) -> Solution:
    """Minimise ``sum(damage[u][x[u]])`` subject to ``sum(cost[u][x[u]]) <= budget``.

    damage, cost: ``{unit: {option: value}}`` with the same options per unit; costs integers.
    Among equally damaging options the costlier (more bits) is kept: budget left unused is harmless,
    and measured damage of 0 often just means "below the noise". Raises :class:`InfeasibleBudget`.
    """
    _check(damage, cost)
    units = list(damage)
    floor = sum(min(cost[u].values()) for u in units)
    if floor > budget:
        raise InfeasibleBudget(floor, budget)
    slack = budget - floor
    # per unit: options within the slack, ascending cost, as (option, shifted cost, damage)
    opts = []
    for u in units:
        lo = min(cost[u].values())
        row = sorted(((o, cost[u][o] - lo, float(damage[u][o])) for o in cost[u] if cost[u][o] - lo <= slack),
                     key=lambda t: (t[1], t[0]))
        opts.append(row)
    shifts = [d for row in opts for _, d, _ in row if d > 0]
    if not shifts:  # every unit has one affordable option, or only equal-cost ones
        assign = {u: min(row, key=lambda t: (t[2], -t[1]))[0] for u, row in zip(units, opts)}
        return _solution(assign, damage, cost, None)
    g = math.gcd(*shifts)
    if slack // g <= max_states:
        cap, up, down = slack // g, [[d // g for _, d, _ in row] for row in opts], None
    else:  # discretise: ceil for a feasible answer, floor for a lower bound
        cap = max_states
        up = [[-(-d * cap // slack) for _, d, _ in row] for row in opts]
        down = [[d * cap // slack for _, d, _ in row] for row in opts]
    choice, _ = _dp(opts, up, cap)
    assign = {u: opts[i][j][0] for i, (u, j) in enumerate(zip(units, choice))}
    bound = None if down is None else _dp(opts, down, cap)[1]
    return _solution(assign, damage, cost, bound)


def _dp(opts, costs, cap: int) -> tuple[list[int], float]:
    """Multiple-choice knapsack DP: ``best[c]`` = least damage with cost <= c over the units so far.

    Returns the chosen option index per unit and the optimal objective. O(units x options x cap).
    """
    best = np.zeros(cap + 1)
    picks = np.empty((len(opts), cap + 1), dtype=np.int16)
    for i, (row, row_costs) in enumerate(zip(opts, costs)):
        new = np.full(cap + 1, np.inf)
        pick = np.full(cap + 1, -1, dtype=np.int16)
        for j, ((_, _, dmg), c) in enumerate(zip(row, row_costs)):  # ascending cost: ties go to the later
            if c > cap:
                continue
            cand = best[: cap + 1 - c] + dmg
            better = cand <= new[c:]
            new[c:][better] = cand[better]
            pick[c:][better] = j
        best, picks[i] = new, pick
    choice, c = [], cap
    for i in range(len(opts) - 1, -1, -1):
        j = int(picks[i, c])
        choice.append(j)
        c -= costs[i][j]
    return choice[::-1], float(best[cap])


def _solution(assign, damage, cost, bound) -> Solution:
    objective = sum(float(damage[u][o]) for u, o in assign.items())
    return Solution(assign, objective, sum(cost[u][o] for u, o in assign.items()),
                    objective if bound is None else min(bound, objective), bound is None)


def exhaustive(damage: dict[str, dict[int, float]], cost: dict[str, dict[int, int]], budget: int) -> Solution:
    """The same problem by enumeration (tiny problems and tests only)."""
    _check(damage, cost)
    units = list(damage)
    best = None
    for combo in itertools.product(*(sorted(cost[u]) for u in units)):
        c = sum(cost[u][o] for u, o in zip(units, combo))
        if c > budget:
            continue
        obj = sum(damage[u][o] for u, o in zip(units, combo))
        if best is None or obj < best[0] - 1e-12:
            best = (obj, dict(zip(units, combo)))
    if best is None:
        raise InfeasibleBudget(sum(min(cost[u].values()) for u in units), budget)
    return _solution(best[1], damage, cost, None)
