import itertools
import random

import pytest

from bitswitch.errors import BitswitchError
from bitswitch.search.budget import InfeasibleBudget, exhaustive, solve_budget


def _problem(seed, n_units=6, bits=(3, 4, 6, 8)):
    rng = random.Random(seed)
    params = {f"u{i}": rng.choice([5, 3, 16, 8]) * 7 for i in range(n_units)}
    # additive damage, decreasing in bits, with unit-specific sensitivity
    damage = {u: {b: rng.uniform(0.1, 3.0) * 4.0 ** (8 - b) / 4 ** 5 if b < 8 else 0.0 for b in bits} for u in params}
    cost = {u: {b: p * b for b in bits} for u, p in params.items()}
    return damage, cost, params


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("avg", [3.0, 3.5, 4.0, 5.0, 6.5, 8.0])
def test_budget_finds_the_known_optimum_of_an_additive_table(seed, avg):
    damage, cost, params = _problem(seed)
    budget = int(avg * sum(params.values()))
    sol = solve_budget(damage, cost, budget)
    best = exhaustive(damage, cost, budget)
    assert sol.exact and sol.gap == 0
    assert sol.objective == pytest.approx(best.objective, abs=1e-12)
    assert sol.cost <= budget
    assert sum(cost[u][b] for u, b in sol.assign.items()) == sol.cost


def test_hand_made_optimum():
    # two units; the sensitive one keeps 8 bits, the other drops to 4: the only way to fit 12 bits
    damage = {"a": {4: 10.0, 8: 0.0}, "b": {4: 1.0, 8: 0.0}}
    cost = {"a": {4: 4, 8: 8}, "b": {4: 4, 8: 8}}
    sol = solve_budget(damage, cost, 12)
    assert sol.assign == {"a": 8, "b": 4} and sol.objective == 1.0 and sol.cost == 12


@pytest.mark.parametrize("seed", range(10))
def test_budget_never_exceeds_the_budget(seed):
    rng = random.Random(100 + seed)
    damage, cost, params = _problem(seed, n_units=20)
    total = sum(params.values())
    for _ in range(5):
        budget = rng.randint(3 * total, 8 * total)
        sol = solve_budget(damage, cost, budget)
        assert sol.cost <= budget


@pytest.mark.parametrize("seed", range(4))
def test_discretised_costs_stay_feasible_and_state_a_valid_gap(seed):
    damage, cost, params = _problem(seed, n_units=7)
    cost = {u: {b: c * 1009 + (b * 13 if b > 3 else 0) for b, c in row.items()} for u, row in cost.items()}
    budget = int(4.3 * 1009 * sum(params.values()))
    sol = solve_budget(damage, cost, budget, max_states=50)
    best = exhaustive(damage, cost, budget)
    assert not sol.exact and sol.cost <= budget
    assert sol.bound - 1e-12 <= best.objective <= sol.objective + 1e-12
    assert sol.gap == pytest.approx(sol.objective - sol.bound)


def test_ties_keep_more_bits():
    damage = {"a": {4: 0.0, 8: 0.0}, "b": {4: 0.0, 8: 0.0}}
    cost = {"a": {4: 4, 8: 8}, "b": {4: 4, 8: 8}}
    assert solve_budget(damage, cost, 16).assign == {"a": 8, "b": 8}


def test_impossible_budget_is_an_error():
    damage, cost, params = _problem(0)
    floor = sum(min(row.values()) for row in cost.values())
    with pytest.raises(InfeasibleBudget) as err:
        solve_budget(damage, cost, floor - 1)
    assert isinstance(err.value, BitswitchError) and err.value.minimum == floor
    assert solve_budget(damage, cost, floor).assign == {u: 3 for u in damage}


def test_exhaustive_matches_itertools_count():
    damage, cost, _ = _problem(1, n_units=3, bits=(4, 8))
    assert len(list(itertools.product(*(cost[u] for u in cost)))) == 8
    assert exhaustive(damage, cost, 10 ** 9).assign == {u: 8 for u in damage}
