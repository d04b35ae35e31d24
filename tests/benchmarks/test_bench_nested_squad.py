"""benchmarks/bench_nested_squad.py: the paired arithmetic (nested - independent, in points)."""

from __future__ import annotations

import pytest


def q(f1, em=0.0):
    return {"prediction": "", "f1": f1, "em": em}


def test_pairs_only_shared_questions_and_flags_significance(bench):
    ind = {"a": q(0.0), "b": q(0.0), "c": q(1.0)}
    nest = {"a": q(1.0, 1.0), "b": q(1.0, 1.0), "d": q(0.0)}
    row = bench.pair(ind, nest)
    assert row["n"] == 2 and row["f1_independent"] == 0.0 and row["f1_nested"] == 100.0
    assert row["d_f1"] == 100.0 and row["se_d_f1"] == 0.0 and row["significant"]
    assert row["d_em"] == 100.0 and row["em_nested"] == 100.0


def test_no_shared_question_is_an_error(bench):
    with pytest.raises(SystemExit, match="share no question"):
        bench.pair({"a": q(1.0)}, {"b": q(1.0)})
