import math

import pytest

from bitswitch import BitswitchError
from bitswitch.train.schedules import Schedule, cyclic_bits

UNITS = [f"L{i}.{r}" for i in range(2) for r in ("attn_in", "attn_out", "mlp_in", "mlp_out")]


def test_cyclic_follows_the_cpt_cosine_at_known_steps():
    # T = 100 / 2 = 50: b_min at the start of each cycle, halfway at T/2, b_max just before T
    assert [cyclic_bits(t, 100, 2, 4, 8) for t in (0, 25, 49, 50, 75)] == [4, 6, 8, 4, 6]
    expected = [round(4 + 0.5 * 4 * (1 + math.cos(math.pi * (t % 50) / 50 + math.pi))) for t in range(100)]
    s = Schedule("cyclic", [], 100, cycles=2, b_min=4, b_max=8, family="w{bits}a8")
    assert [s.at(t)[0] for t in range(100)] == [f"w{b}a8" for b in expected]
    assert s.all_profiles() == ["w4a8", "w5a8", "w6a8", "w7a8", "w8a8"]


def test_fixed_all_progressive():
    profs = ["fp", "w8a8", "w4a8"]
    assert Schedule("fixed", profs, 10).at(7) == ["fp"]
    assert Schedule("all", profs, 10).at(3) == profs
    bits = {"fp": 16, "w8a8": 8, "w4a8": 4}
    up = Schedule("progressive", profs, 9, avg_bits=bits)
    assert [up.at(t)[0] for t in range(9)] == ["w4a8"] * 3 + ["w8a8"] * 3 + ["fp"] * 3
    down = Schedule("progressive", profs, 9, order="descending", avg_bits=bits)
    assert down.at(0) == ["fp"] and down.at(8) == ["w4a8"]


def test_random_is_a_pure_function_of_step_and_seed():
    s = Schedule("random", ["fp", "w8a8", "w6a8", "w4a8"], 1000, seed=3)
    draws = [s.at(t)[0] for t in range(200)]
    assert draws == [Schedule("random", s.profiles, 1000, seed=3).at(t)[0] for t in range(200)]
    assert [s.at(t)[0] for t in range(100, 200)] == draws[100:]          # no dependence on history
    assert set(draws) == set(s.profiles)
    assert draws != [Schedule("random", s.profiles, 1000, seed=4).at(t)[0] for t in range(200)]


def test_random_unit_draws_per_unit_bits():
    s = Schedule("random-unit", [], 50, seed=1, candidates=[4, 8], units=UNITS)
    p = s.at(5)[0]
    rules = dict(r.split("=") for r in p.split(";"))
    assert list(rules) == UNITS and set(rules.values()) <= {"w4a8", "w8a8"}
    assert len({s.at(t)[0] for t in range(20)}) > 1
    assert s.all_profiles() == ["w4a8", "w8a8"]


@pytest.mark.parametrize("kwargs", [dict(kind="nope", profiles=["fp"]), dict(kind="fixed", profiles=[]),
                                    dict(kind="cyclic", profiles=[], b_min=8, b_max=4),
                                    dict(kind="cyclic", profiles=[], family="w8a8")])
def test_bad_schedules(kwargs):
    with pytest.raises(BitswitchError):
        Schedule(steps=10, **kwargs)
