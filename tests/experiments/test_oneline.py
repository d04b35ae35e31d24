"""One-line answers computed from the tables: yes / no / not significant with the key number;
cached steps read as cached."""

import json

import pytest

from bitswitch.cli import main
from bitswitch.experiments.answers import SIG, differences, paired_se, verdict
from bitswitch.results import se_of_mean

from .test_report import _fake_run


def _pred(tmp_path, name, f1s):
    p = tmp_path / f"{name}.jsonl"
    p.write_text("".join(json.dumps({"id": f"q{i}", "f1": f, "em": float(f == 1.0)}) + "\n" for i, f in enumerate(f1s)))
    return str(p)


def _row(tmp_path, label, profile, f1s, bits=4.0):
    return {"label": label, "profile": profile, "f1": 100 * sum(f1s) / len(f1s), "avg_w_bits": bits,
            "_pred": _pred(tmp_path, f"{label}-{profile}", f1s)}


BASE = [1.0, 0.0, 0.5, 1.0, 0.0, 0.25, 0.75, 1.0] * 5          # 40 questions


def _rows(tmp_path, shift_w4, shift_w8=None):
    """A and B at two profiles; A's per-question F1 = B's + shift (clipped to [0, 1])."""
    rows = []
    for p, shift, bits in (("w4a8", shift_w4, 4.0), ("w8a8", shift_w8 if shift_w8 is not None else [0.0] * 40, 8.0)):
        rows.append(_row(tmp_path, "B", p, BASE, bits))
        rows.append(_row(tmp_path, "A", p, [min(1.0, max(0.0, f + s)) for f, s in zip(BASE, shift)], bits))
    return {"eval-squad": rows}


RULE = {"compare": {"kind": "eval-squad", "metric": "f1", "labels": ["A", "B"]}}


def test_the_difference_and_its_se_come_from_the_per_question_table(tmp_path):
    noise = [0.25, -0.25] * 20
    rows = _rows(tmp_path, noise)
    a, b, diffs = differences(RULE["compare"], rows["eval-squad"])
    (p8, d8, se8), (p4, d4, se4) = diffs
    per_q = [100 * (min(1.0, max(0.0, f + s)) - f) for f, s in zip(BASE, noise)]
    assert (a, b, p4) == ("A", "B", "w4a8") and d4 == pytest.approx(sum(per_q) / 40)
    assert se4 == pytest.approx(se_of_mean(per_q))
    assert d8 == 0 and se8 == 0


def test_within_two_se_is_not_significant(tmp_path):
    line = verdict(RULE, _rows(tmp_path, [0.25, -0.25] * 20))
    assert line.startswith("not significant: A vs B within 2 SE at all 2 profiles")
    assert "\u0394f1 = " in line and "\u00b1" in line and "\n" not in line


def test_beyond_two_se_is_yes_or_no(tmp_path):
    up = verdict(RULE, _rows(tmp_path, [0.5, 0.0, 0.25, 0.0] * 10))     # A better at w4a8, equal at w8a8
    assert up.startswith("yes: A beats B beyond 2 SE at 1 of 2 profiles (\u0394f1 = +")
    down = verdict(RULE, _rows(tmp_path, [-0.5, 0.0, -0.25, 0.0] * 10))
    assert down.startswith("no: A is worse than B beyond 2 SE at 1 of 2 profiles (\u0394f1 = \u2212")
    mixed = verdict(RULE, _rows(tmp_path, [0.5, 0.0, 0.25, 0.0] * 10, [-0.5, 0.0, -0.25, 0.0] * 10))
    assert mixed.startswith("mixed: A better than B beyond 2 SE at 1, worse at 1 of 2 profiles")


def test_the_threshold_is_exactly_two_standard_errors(tmp_path):
    rows = _rows(tmp_path, [0.5, 0.0, 0.25, 0.0] * 10)["eval-squad"]
    ra, rb = rows[1], rows[0]
    d, se = ra["f1"] - rb["f1"], paired_se(ra, rb, "f1")
    assert abs(d) > SIG * se
    # the same difference with SIG raised past it is not significant
    import bitswitch.experiments.answers as answers
    old = answers.SIG
    try:
        answers.SIG = abs(d) / se + 0.01
        assert verdict(RULE, {"eval-squad": rows}).startswith("not significant")
    finally:
        answers.SIG = old


def test_equal_test_answers_can_a_replace_b(tmp_path):
    rule = {"compare": {**RULE["compare"], "test": "equal"}}
    assert verdict(rule, _rows(tmp_path, [0.25, -0.25] * 20)).startswith("yes, no effect at this sample size")
    assert verdict(rule, _rows(tmp_path, [0.5, 0.0, 0.25, 0.0] * 10)).startswith("no: A differs from B beyond 2 SE")


def test_drop_and_missing_and_untestable(tmp_path):
    rows = _rows(tmp_path, [0.5, 0.0, 0.25, 0.0] * 10)
    line = verdict({"drop": {"metric": "f1", "label": "B", "reference": "w8a8"}}, rows)
    assert line.startswith("no loss")   # B is the same at both profiles
    assert verdict(RULE, {}) == "no results yet"
    bare = {"eval-squad": [dict(r, _pred=None) for r in rows["eval-squad"]]}
    assert verdict(RULE, bare).startswith("not testable")


def test_report_glance_is_one_line_per_question_and_cached_reads_as_cached(tmp_path):
    recs = {}
    for label, shift in (("cyclic", [0.5, 0.0, 0.25, 0.0] * 10), ("random", [0.0] * 40)):
        recs[label] = {"task": "squad", "records": [{"profile": "w4a8", "f1": 0.0, "em": 0.0, "n": 40,
                                                     "avg_w_bits": 4.0}], "versions": {}, "device": "cpu"}
    run = _fake_run(tmp_path, "cpt", recs, command="eval")
    for label, shift in (("cyclic", [0.5, 0.0, 0.25, 0.0] * 10), ("random", [0.0] * 40)):
        out = tmp_path / "cache" / f"eval-{label}"
        f1s = [min(1.0, f + s) for f, s in zip(BASE, shift)]
        (out / "predictions-w4a8.jsonl").write_text(_pred(tmp_path, label, f1s) and (tmp_path / f"{label}.jsonl").read_text())
        res = json.loads((out / "results.json").read_text())
        res["records"][0]["f1"] = 100 * sum(f1s) / 40
        (out / "results.json").write_text(json.dumps(res))
    doc = json.loads((run / "run.json").read_text())
    doc["answers"] = [{"compare": {"metric": "f1", "labels": ["cyclic", "random"]}}]
    doc["short"] = "Does CPT beat random?"
    doc["steps"][1]["status"] = "skipped"         # what an older run.json calls a cached step
    doc["steps"][0]["status"] = "cached"
    (run / "run.json").write_text(json.dumps(doc))
    out = tmp_path / "r.md"
    assert main(["report", str(run), "--out", str(out)]) == 0
    text = out.read_text()
    glance = text.split("## Answers at a glance")[1].split("\n## ")[0]
    line = next(x for x in glance.splitlines() if x.startswith("| cpt |"))
    assert line.startswith("| cpt | Does CPT beat random? | yes: cyclic beats random beyond 2 SE at 1 of 1 profile")
    assert "Details:" in text and "cyclic against random, f1" in text      # the long sentence stays below
    assert "Paired differences of f1" in text and "| cyclic | random | w4a8 |" in text
    assert "[cached, 1.0 s]" in text and "skipped" not in text


def test_top_rule_names_the_largest_and_smallest_rows():
    rows = {"sensitivity": [{"label": "unit", "profile": f"L{i}.attn_in", "damage": d}
                            for i, d in enumerate([0.1, -0.2, 0.5, 0.3, None, 0.0])]
            + [{"label": "layer", "profile": "L9", "damage": 9.0}]}
    rule = {"top": {"kind": "sensitivity", "metric": "damage", "label": "unit", "n": 2}}
    assert verdict(rule, rows) == ("unit: largest damage L2.attn_in (0.5), L3.attn_in (0.3) of 5; "
                                   "smallest L1.attn_in (-0.2), L5.attn_in (0)")
