import pytest

import bitswitch as bs
from bitswitch.errors import BitswitchError
from bitswitch.search.space import build_space
from bitswitch.search.table import damage_table, known_from_records, penalize, predicted


def _space(base: str):
    """The search space of a tiny seeded Llama over 3,4,6,8 bits from ``base``, and its units."""
    model, _ = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model)
    space = build_space(model, base, "3,4,6,8")
    return space, list(space.units)


def _around_w4():
    """From w4a8: energies, and a sweep below (3 bits) and above (8 bits) with c = 0.1 for every unit."""
    space, units = _space("w4a8")
    energy = {u: {3: 9.0, 4: 3.0, 6: 1.0, 8: 0.5} for u in units}
    return space, units, energy, {u: {3: 0.6, 8: -0.25} for u in units}


def test_damage_table_scales_by_noise_energy():
    space, units = _space("w8a8")
    known = {u: {3: 0.5 + i} for i, u in enumerate(units)}
    known[units[0]] = {3: -0.2}                       # measured below zero: noise, read as 0
    energy = {u: {3: 8.0, 4: 2.0, 6: 0.5, 8: 0.0} for u in units}
    table = damage_table(space, known, energy)
    assert table[units[0]] == {3: 0.0, 4: 0.0, 6: 0.0, 8: 0.0}
    assert table[units[1]] == {3: 1.5, 4: 1.5 * 2 / 8, 6: 1.5 * 0.5 / 8, 8: 0.0}
    assert predicted(table, {units[1]: 4, units[2]: 3}) == pytest.approx(0.375 + 2.5)
    with pytest.raises(BitswitchError):
        damage_table(space, {units[1]: {3: 1.0}}, energy)   # units without an entry


def test_damage_table_around_a_low_base_trades_gains_and_losses():
    """From a w4a8 base: 3 bits costs, 6 and 8 bits gain, on the energy model c * (e(b) - e(base))."""
    space, units, energy, known = _around_w4()                  # a probe below and one above the base
    known[units[0]] = {3: 0.6}                                  # no probe above: gains from the 3-bit fit
    known[units[1]] = {3: -0.1, 8: 0.2}                         # wrong signs are noise: read as 0
    table = damage_table(space, known, energy)
    assert table[units[2]] == pytest.approx({3: 0.6, 4: 0.0, 6: -0.25 * 2 / 2.5, 8: -0.25})
    assert table[units[0]] == pytest.approx({3: 0.6, 4: 0.0, 6: 0.6 * -2 / 6, 8: 0.6 * -2.5 / 6})
    assert table[units[1]] == {3: 0.0, 4: 0.0, 6: 0.0, 8: 0.0}
    # at the base's own average the knapsack buys 8 bits for a sensitive unit with 3 bits elsewhere
    from bitswitch.search.budget import solve_budget
    from bitswitch.search.search_runner import _costs
    small = min(units, key=lambda u: space.units[u].params)
    trade = {u: {3: 0.01, 4: 0.0, 6: -0.001, 8: -0.001} for u in units}
    trade[small] = {3: 0.6, 4: 0.0, 6: -1.5, 8: -2.0}
    sol = solve_budget(trade, _costs(space, "avg_bits"), space.avg_bits_budget(4.0))
    assert space.avg_bits(sol.assign) <= 4.0 and sol.assign[small] == 8
    assert sol.objective < 0 and sol.objective == pytest.approx(predicted(trade, sol.assign))


def test_known_from_measured_and_proxy_records():
    recs = [{"name": "L0.mlp_in", "probe_bits": 3, "damage": 0.25},
            {"name": "L0.mlp_out", "probe_bits": 3, "damage": 0.5, "by_bits": {"3": 0.5, "4": 0.1}},
            {"name": "base"}]
    assert known_from_records(recs) == {"L0.mlp_in": {3: 0.25}, "L0.mlp_out": {3: 0.5, 4: 0.1}}


def test_pooled_fit_averages_the_coefficients_of_both_sweeps():
    """fit=pooled: one c per unit, the mean of d(b) / (e(b) - e(base)) over the sweeps, clipped at 0."""
    space, units, energy, known = _around_w4()            # c estimates 0.6 / 6 = 0.1 and -0.25 / -2.5 = 0.1
    known[units[0]] = {3: 1.2, 8: 0.1}                    # 0.2 and -0.04: mean 0.08, the 8-bit noise pulls it down
    known[units[1]] = {3: -0.3, 8: 0.05}                  # both estimates negative: c = 0
    table = damage_table(space, known, energy, fit="pooled")
    assert table[units[2]] == pytest.approx({3: 0.6, 4: 0.0, 6: -0.2, 8: -0.25})
    assert table[units[0]] == pytest.approx({3: 0.48, 4: 0.0, 6: -0.16, 8: -0.2})
    assert table[units[1]] == {3: 0.0, 4: 0.0, 6: 0.0, 8: 0.0}
    with pytest.raises(BitswitchError, match="energies"):
        damage_table(space, known, None, fit="pooled")
    with pytest.raises(BitswitchError, match="side or pooled"):
        damage_table(space, known, energy, fit="nearest")


def test_penalize_scales_only_damages_below_the_base():
    space, units, energy, known = _around_w4()
    table = damage_table(space, known, energy)
    hard = penalize(table, space, 4.0)
    for u in units:
        assert hard[u][3] == 4.0 * table[u][3] and hard[u][4] == 0.0
        assert hard[u][6] == table[u][6] and hard[u][8] == table[u][8]   # gains above the base unchanged
    assert penalize(table, space, 1.0) == table


def test_penalize_around_a_reference_keeps_it_and_a_large_factor_gives_uniform():
    """Relative to 6 bits (above the w4a8 base): d(u, 6) stays, the step from 6 down is scaled, and
    a huge factor makes the exact budget search at the average of 6 bits return uniform 6."""
    from bitswitch.search.budget import solve_budget

    space, units, energy, known = _around_w4()
    table = damage_table(space, known, energy)
    table[units[0]] = {3: 0.9, 4: 0.0, 6: -0.01, 8: -0.5}   # one unit gains a lot from 8 bits
    hard = penalize(table, space, 10.0, ref=6)
    for u in units:
        r6 = table[u][6]
        assert hard[u][6] == r6 and hard[u][8] == table[u][8]
        assert hard[u][4] == pytest.approx(r6 + 10.0 * (table[u][4] - r6))
        assert hard[u][3] == pytest.approx(r6 + 10.0 * (table[u][3] - r6))
    cost = {u: {b: space.units[u].params * b for b in space.candidates} for u in units}
    budget = space.avg_bits_budget(6)
    plain = solve_budget(table, cost, budget)
    assert any(b < 6 for b in plain.assign.values())          # the plain table trades units below 6
    assert solve_budget(penalize(table, space, 1e6, ref=6), cost, budget).assign == space.uniform(6)
