import pytest

from bitswitch.errors import BitswitchError
from bitswitch.search.greedy import greedy_search
from bitswitch.search.pareto import pareto_front
from bitswitch.search.table import predicted


def test_pareto_front_by_hand():
    recs = [{"b": 4, "f1": 40}, {"b": 4, "f1": 55}, {"b": 5, "f1": 50}, {"b": 6, "f1": 70}, {"b": 8, "f1": 70},
            {"b": 3, "f1": 10}, {"b": 6, "f1": None}]
    assert pareto_front(recs, "b", "f1") == [5, 1, 3]
    # lower is better (perplexity): the smallest and the best
    ppl = [{"b": 4, "p": 3.0}, {"b": 6, "p": 2.0}, {"b": 8, "p": 2.5}]
    assert pareto_front(ppl, "b", "p", higher_is_better=False) == [0, 1]


TABLE = {"a": {4: 5.0, 6: 1.0, 8: 0.0}, "b": {4: 0.4, 6: 0.1, 8: 0.0}, "c": {4: 0.2, 6: 0.05, 8: 0.0}}
COST = {u: {b: 10 * b for b in (4, 6, 8)} for u in TABLE}


def test_greedy_keeps_the_measured_drop_within_the_limit():
    seen = []

    def drop(assign):
        seen.append(dict(assign))
        return predicted(TABLE, assign)   # an exactly additive "measurement"

    assign, history = greedy_search(TABLE, COST, drop, max_drop=0.7)
    assert assign == {"a": 8, "b": 4, "c": 4}   # a's first step (1.0) would exceed 0.7
    assert predicted(TABLE, assign) <= 0.7
    assert all(r["accepted"] == (r["drop"] <= 0.7) for r in history)
    assert len(seen) == len(history)


def test_greedy_to_a_budget_lowers_the_least_damaging_first():
    assign, history = greedy_search(TABLE, COST, budget=10 * (8 + 4 + 4))
    assert assign == {"a": 8, "b": 4, "c": 4} and all(r["drop"] is None for r in history)


def test_greedy_chunks_back_off_and_need_a_rule():
    assign, _ = greedy_search(TABLE, COST, lambda a: predicted(TABLE, a), max_drop=0.7, chunk=3)
    assert assign == {"a": 8, "b": 4, "c": 4}
    with pytest.raises(BitswitchError):
        greedy_search(TABLE, COST)
