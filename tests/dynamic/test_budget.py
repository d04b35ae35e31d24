"""fit_scalar: steps out until the budget is bracketed, bisects, keeps the nearest cost measured."""

import math

from bitswitch.dynamic.budget import fit_scalar


def test_brackets_then_bisects_to_within_tol():
    seen = []

    def measure(x):
        seen.append(x)
        return 8 - 4 / (1 + math.exp(-x))        # falls from 8 to 4

    x, got = fit_scalar(measure, 0.0, 4.5, tol=0.01, max_iter=30)
    assert abs(got - 4.5) <= 0.01 and got == measure(x)
    assert seen[:3] == [0.0, 0.5, 1.5]          # the step doubles until the budget is bracketed


def test_keeps_the_nearest_when_the_budget_is_out_of_reach():
    costs = {}

    def measure(x):
        costs[x] = 6.0 if x < 1 else 5.0         # two values only
        return costs[x]

    x, got = fit_scalar(measure, 0.0, 5.4, tol=0.01, max_iter=6)
    assert got == 5.0 and x >= 1 and len(costs) == 6
