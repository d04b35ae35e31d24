import math

import pytest

from bitswitch.results import higher_is_better, markdown_table, se_of_mean


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
    assert higher_is_better("arc_easy,acc") and higher_is_better("acc_norm") and not higher_is_better("weight_bytes")
    assert higher_is_better("ppl", "higher") and not higher_is_better("f1", "lower")
