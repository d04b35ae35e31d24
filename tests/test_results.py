import math

import pytest

from bitswitch.results import higher_is_better, markdown_table, se_of_mean, spearman


def test_se_of_mean_is_the_sample_sd_over_root_n():
    assert se_of_mean([0.0, 50.0, 0.0]) == pytest.approx(50 / 3)
    assert se_of_mean(x for x in (1.0, 3.0)) == pytest.approx(1.0)   # sd sqrt(2), n 2
    assert se_of_mean([2.0, 2.0, 2.0]) == 0.0
    assert se_of_mean([1.0]) is None and se_of_mean([]) is None
    assert se_of_mean(range(10)) == pytest.approx(math.sqrt(55 / 6) / math.sqrt(10))


def test_markdown_table_has_one_row_per_record():
    t = markdown_table([{"a": 1, "b": 2.5}, {"a": 3}], ["a", "b"])
    lines = t.splitlines()
    assert lines[0].startswith("| a | b |") and len(lines) == 4


def test_higher_is_better_knows_every_search_metric_and_lm_eval_accuracies():
    from bitswitch.search.metrics import METRICS

    assert {m: higher_is_better(m) for m in METRICS} == {"f1": True, "em": True, "answer_ppl": False, "ppl": False}
    assert higher_is_better("arc_easy,acc") and higher_is_better("acc_norm")
    assert not higher_is_better("weight_bytes")
    assert higher_is_better("ppl", "higher") and not higher_is_better("f1", "lower")


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take average ranks: ranks (1.5, 1.5, 3) and (1, 2, 3) -> 0.866...
    assert spearman([5, 5, 9], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    with pytest.raises(ValueError):
        spearman([1], [2])
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))   # a constant side has no ranking


def test_report_compares_sensitivity_runs_with_the_same_spearman():
    from bitswitch.experiments.sections_analysis import _spearman

    recs = lambda vals: [{"name": f"u{i}", "damage": v} for i, v in enumerate(vals)]  # noqa: E731
    assert _spearman(recs([5, 5, 9, 1]), recs([1, 2, 3, 0])) == spearman([5, 5, 9, 1], [1, 2, 3, 0])
    assert _spearman(recs([1, 2]), recs([1, 2])) is None                    # fewer than 3 shared units
    assert _spearman(recs([1, 1, 1]), recs([1, 2, 3])) is None              # a constant side
