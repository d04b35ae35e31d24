"""The sensitivity and search commands end to end on tiny-llama, and their one-line errors."""

import json

import pytest

import bitswitch as bs
from bitswitch.cli import main
from bitswitch.loading import load_switchable
from bitswitch.switching import state


def _one_line_error(capsys, argv) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("bitswitch: error:") and "\n" not in err and "Traceback" not in err
    return err


def _search(data, out, *extra):
    return ["search", "--model", "tiny-llama", "--device", "cpu", "--data", data, "--limit", "4",
            "--out", str(out), *extra]


def test_impossible_budget_is_one_line(capsys, tiny_squad, tmp_path):
    err = _one_line_error(capsys, _search(tiny_squad, tmp_path / "o", "--candidates", "3,4", "--avg-bits", "2.5"))
    assert "--avg-bits 2.5" in err and "3.000" in err and "--candidates 3,4" in err
    err = _one_line_error(capsys, _search(tiny_squad, tmp_path / "o", "--candidates", "4,8", "--max-bytes", "1000"))
    assert "--max-bytes 1000" in err and "bytes" in err
    assert not (tmp_path / "o" / "results.json").exists()   # refused before measuring anything


@pytest.mark.parametrize("extra, needle", [
    ([], "exactly one target"),
    (["--avg-bits", "4", "--max-drop", "1"], "exactly one target"),
    (["--candidates", "4,9", "--avg-bits", "4"], "--candidates"),
    (["--candidates", "4", "--avg-bits", "4"], "at least two"),
    (["--metric", "ppl", "--avg-bits", "4"], "does not fit"),
    (["--method", "anneal", "--avg-bits", "4"], "--method"),
    (["--sensitivity", "no/such.json", "--avg-bits", "4"], "--sensitivity"),
    (["--max-drop", "1", "--pareto"], "--pareto"),
])
def test_search_bad_input(capsys, tiny_squad, tmp_path, extra, needle):
    assert needle in _one_line_error(capsys, _search(tiny_squad, tmp_path / "o", *extra))


@pytest.mark.parametrize("extra, needle", [
    (["--probe", "w9a8"], "'w9a8'"),
    (["--probe", "w4a8;L0.*=fp"], "one spec"),
    (["--granularity", "block"], "--granularity"),
    (["--proxy", "oracle"], "--proxy"),
    (["--metric", "bleu"], "'bleu'"),
])
def test_sensitivity_bad_input(capsys, tiny_squad, tmp_path, extra, needle):
    argv = ["sensitivity", "--model", "tiny-llama", "--data", tiny_squad, "--out", str(tmp_path / "s"), *extra]
    assert needle in _one_line_error(capsys, argv)


def test_sensitivity_resumes_and_correlates(capsys, tiny_squad, tmp_path):
    argv = ["sensitivity", "--model", "tiny-llama", "--device", "cpu", "--data", tiny_squad, "--limit", "4",
            "--probe", "w3a8", "--out", str(tmp_path / "m")]
    assert main(argv) == 0
    first = json.loads((tmp_path / "m" / "results.json").read_text())
    assert first["kind"] == "sensitivity" and first["source"] == "measured" and len(first["records"]) == 9
    assert {"name", "layer", "role", "value", "delta", "damage", "probe_bits"} <= first["records"][0].keys()
    assert (tmp_path / "m" / "sensitivity.png").is_file() and (tmp_path / "m" / "results.md").is_file()
    capsys.readouterr()
    assert main(argv) == 0
    assert "already measured" in capsys.readouterr().err
    again = json.loads((tmp_path / "m" / "results.json").read_text())
    assert again["records"] == first["records"]
    proxy = ["sensitivity", "--model", "tiny-llama", "--device", "cpu", "--data", tiny_squad, "--limit", "4",
             "--probe", "w3a8", "--proxy", "fisher", "--proxy-bits", "4,6", "--against", str(tmp_path / "m"),
             "--out", str(tmp_path / "f")]
    assert main(proxy) == 0
    res = json.loads((tmp_path / "f" / "results.json").read_text())
    assert res["source"] == "fisher" and res["spearman"]["n"] == 9 and -1 <= res["spearman"]["rho"] <= 1
    assert set(res["records"][0]["by_bits"]) == {"3", "4", "6"}
    assert "Spearman" in capsys.readouterr().out


@pytest.fixture
def unit_bits_adapters(tmp_path):
    model, _ = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model, keying="unit-bits")
    bs.add_adapters(model, ["w4a8", "w6a8", "w8a8"], bs.AdapterConfig(r=2))
    for p in bs.adapters.adapter_parameters(model):   # non-zero B, so adapters change the outputs
        p.data.normal_(0, 0.05)
    return str(bs.save_adapters(model, tmp_path / "adapters"))


def test_search_profile_loads_into_eval_with_composed_unit_adapters(capsys, tiny_squad, tmp_path, unit_bits_adapters):
    out = tmp_path / "s"
    argv = _search(tiny_squad, out, "--adapters", unit_bits_adapters, "--candidates", "4,6,8", "--avg-bits", "5",
                   "--sensitivity", "fisher", "--pareto")
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["kind"] == "search" and res["searched"] == ["search-avg5"]
    for r in res["records"]:
        assert {"profile", "avg_w_bits", "weight_bytes", "f1", "em", "answer_ppl", "drop", "vs_fp16"} <= r.keys()
    rec = next(r for r in res["records"] if r["kind"] == "searched")
    assert rec["avg_w_bits"] <= 5 and rec["weight_bytes"] == rec["predicted_weight_bytes"]
    assert rec["exact"] and rec["gap"] == 0
    assert {r["label"] for r in res["records"]} >= {"base", "uniform-w4", "uniform-w5", "uniform-w6"}
    assert set(res["pareto"]) == {"avg_w_bits", "weight_bytes"} and (out / "pareto.png").is_file()
    file = rec["file"]
    assert json.loads(open(file).read())["profile_string"] == rec["profile"]
    # the file runs in eval, on the same questions, with the same result
    ev = tmp_path / "e"
    assert main(["eval", "--model", "tiny-llama", "--device", "cpu", "--adapters", unit_bits_adapters, "--task",
                 "squad", "--data", tiny_squad, "--limit", "4", "--profiles", file, "--out", str(ev)]) == 0
    erec = json.loads((ev / "results.json").read_text())["records"][0]
    assert erec["profile"] == "search-avg5"
    assert erec["f1"] == rec["f1"] and erec["answer_ppl"] == pytest.approx(rec["answer_ppl"], rel=1e-6)
    assert erec["weight_bytes"] == rec["weight_bytes"] and erec["avg_w_bits"] == rec["avg_w_bits"]
    # and each unit runs with the adapter of its own spec (composed from the units)
    model, _ = load_switchable("tiny-llama", unit_bits_adapters, device="cpu")
    bs.set_profile(model, file)
    table = state(model).table
    specs = set()
    for unit, _, mod in bs.switching.unit_modules(model):
        if unit != "head":
            assert mod.active_adapter == table[unit].spec
            specs.add(mod.active_adapter)
    assert len(specs) >= 2   # really mixed


@pytest.mark.parametrize("extra", [
    ["--method", "greedy", "--avg-bits", "5"],
    ["--max-bytes", "120000"],
    ["--method", "greedy", "--max-drop", "0.05", "--metric", "answer-ppl", "--chunk", "4"],
    ["--method", "budget", "--max-drop", "0.05", "--metric", "answer-ppl"],
    ["--sensitivity", "measured", "--avg-bits", "4.5", "--calib-offset", "4", "--calib-limit", "4"],
])
def test_search_methods_and_targets(tiny_squad, tmp_path, extra):
    out = tmp_path / "s"
    assert main(_search(tiny_squad, out, "--candidates", "3,4,6,8", *extra)) == 0
    res = json.loads((out / "results.json").read_text())
    rec = next(r for r in res["records"] if r["kind"] == "searched")
    budget = rec["budget"]
    if "avg_bits" in budget:
        assert rec["avg_w_bits"] <= budget["avg_bits"]
    if "max_bytes" in budget:
        assert rec["weight_bytes"] <= budget["max_bytes"]
    if "--sensitivity" in extra:
        assert json.loads((out / "sensitivity.json").read_text())["kind"] == "sensitivity"
        assert res["sensitivity"]["offset"] == 4


def test_search_around_a_low_base_from_two_sweeps(tiny_squad, tmp_path, capsys):
    """Sweeps below (w3a8) and above (w8a8) a w4a8 base merge into one table; the search stays in budget."""
    sweeps = []
    for probe in ("w3a8", "w8a8"):
        out = tmp_path / probe
        assert main(["sensitivity", "--model", "tiny-llama", "--device", "cpu", "--data", tiny_squad, "--limit", "4",
                     "--base", "w4a8", "--probe", probe, "--out", str(out)]) == 0
        sweeps.append(str(out / "results.json"))
    out = tmp_path / "s"
    assert main(_search(tiny_squad, out, "--candidates", "3,4,6,8", "--base", "w4a8", "--avg-bits", "4",
                        "--sensitivity", *sweeps, "--calib-offset", "0", "--calib-limit", "4")) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["sensitivity"]["source"] == sweeps and res["sensitivity"]["probes"] == ["w3a8", "w8a8"]
    rec = next(r for r in res["records"] if r["kind"] == "searched")
    assert rec["avg_w_bits"] <= 4.0
    pooled = tmp_path / "pooled"
    assert main(_search(tiny_squad, pooled, "--candidates", "3,4,6,8", "--base", "w4a8", "--avg-bits", "4",
                        "--sensitivity", *sweeps, "--calib-offset", "0", "--calib-limit", "4",
                        "--damage-fit", "pooled")) == 0
    res = json.loads((pooled / "results.json").read_text())
    assert res["sensitivity"]["fit"] == "pooled"
    for row in res["sensitivity"]["table"].values():   # one coefficient: losses below, gains above, or all 0
        assert row["4"] == 0 and row["3"] >= 0 >= row["6"] >= row["8"]
    assert next(r for r in res["records"] if r["kind"] == "searched")["avg_w_bits"] <= 4.0
    capsys.readouterr()
    assert "--sensitivity" in _one_line_error(capsys, _search(tiny_squad, out, "--avg-bits", "4", "--sensitivity",
                                                              "fisher", sweeps[0]))
    assert "--damage-fit" in _one_line_error(capsys, _search(tiny_squad, out, "--avg-bits", "4", "--damage-fit",
                                                             "pooled"))


def test_below_penalty_is_chosen_on_the_calibration_data(tiny_squad, tmp_path, capsys, monkeypatch):
    """Several --below-penalty factors: each solution is measured on the calibration questions, the
    best one is the searched profile, every trial is in the record, the budget holds, and a rerun
    resumes without measuring anything again."""
    out = tmp_path / "s"
    argv = _search(tiny_squad, out, "--candidates", "3,4,6,8", "--base", "w4a8", "--avg-bits", "4",
                   "--below-penalty", "1", "4", "64", "--calib-offset", "4", "--calib-limit", "4")
    assert main(argv) == 0
    first = json.loads((out / "results.json").read_text())
    assert 1 <= len(first["calibration"]) <= 3   # one measurement per distinct solution

    def no_measuring(*a, **k):
        raise AssertionError("a resumed search measured again")

    monkeypatch.setattr("bitswitch.search.metrics.measure", no_measuring)
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["calibration"] == first["calibration"]
    rec = next(r for r in res["records"] if r["kind"] == "searched")
    trials = rec["penalty_trials"]
    assert [t["below_penalty"] for t in trials] == [1.0, 4.0, 64.0]
    best = min(trials, key=lambda t: t["answer_ppl"])
    assert rec["below_penalty"] == best["below_penalty"] and rec["calib"] == {"offset": 4, "n": 4}
    assert rec["avg_w_bits"] <= 4.0 and rec["penalty_ref_bits"] == 4   # the widest uniform within 4 bits
    capsys.readouterr()
    assert "--calib-offset" in _one_line_error(capsys, _search(tiny_squad, out, "--avg-bits", "4",
                                                               "--below-penalty", "1", "4"))
    assert "--below-penalty 0" in _one_line_error(capsys, _search(tiny_squad, out, "--avg-bits", "4",
                                                                  "--below-penalty", "0"))


def test_a_budget_also_weighs_the_cheaper_budgets_solutions(tiny_squad, tmp_path):
    """With several budgets, a budget's calibration pool holds its own factors' solutions and every
    solution of the other budgets that fits it: the larger budget's pick measures at least as well
    as the smaller one's, each solution is measured once, and no pick exceeds its budget."""
    out = tmp_path / "s"
    assert main(_search(tiny_squad, out, "--candidates", "3,4,6,8", "--base", "w4a8", "--avg-bits", "4", "5",
                        "--below-penalty", "1", "4", "--calib-offset", "4", "--calib-limit", "4")) == 0
    res = json.loads((out / "results.json").read_text())
    recs = {r["label"]: r for r in res["records"] if r["kind"] == "searched"}
    low, high = recs["search-avg4"], recs["search-avg5"]
    assert [t["below_penalty"] for t in low["penalty_trials"]][:2] == [1.0, 4.0]
    pooled = [t for t in high["penalty_trials"] if t.get("from") == "search-avg4"]
    assert [t["below_penalty"] for t in pooled] == [1.0, 4.0]   # every 4-bit solution fits 5 bits
    best = min(t["answer_ppl"] for t in high["penalty_trials"])
    assert next(t for t in high["penalty_trials"] if t["below_penalty"] == high["below_penalty"]
                and t.get("from") == high.get("picked_from"))["answer_ppl"] == best
    assert best <= min(t["answer_ppl"] for t in low["penalty_trials"])
    profiles = [c["profile"] for c in res["calibration"]]
    assert len(profiles) == len(set(profiles))
    assert low["avg_w_bits"] <= 4.0 and high["avg_w_bits"] <= 5.0
    assert all(c["weight_bytes"] > 0 for c in res["calibration"])


def test_alt_sensitivity_tables_compete_on_the_calibration_data(tiny_squad, tmp_path, capsys):
    """--alt-sensitivity: each table is solved with every factor, every distinct solution is measured
    once on the calibration questions, the best of all tables is the searched profile (its table and
    predicted damage recorded), within budget; bad values are one-line errors."""
    sweep = tmp_path / "sweep"
    assert main(["sensitivity", "--model", "tiny-llama", "--device", "cpu", "--data", tiny_squad, "--limit", "4",
                 "--offset", "4", "--base", "w4a8", "--probe", "w3a8", "--out", str(sweep)]) == 0
    out = tmp_path / "s"
    argv = _search(tiny_squad, out, "--candidates", "3,4,6,8", "--base", "w4a8", "--avg-bits", "4", "5",
                   "--sensitivity", "fisher", "--alt-sensitivity", str(sweep / "results.json"),
                   "--below-penalty", "1", "4", "--calib-offset", "4", "--calib-limit", "4")
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["sensitivity"]["source"] == "fisher"
    assert [a["source"] for a in res["alt_sensitivity"]] == [str(sweep / "results.json")]
    tables = {"fisher": res["sensitivity"]["table"], str(sweep / "results.json"): res["alt_sensitivity"][0]["table"]}
    recs = {r["label"]: r for r in res["records"] if r["kind"] == "searched"}
    low = recs["search-avg4"]
    assert [(t["table"], t["below_penalty"]) for t in low["penalty_trials"]] == [
        ("fisher", 1.0), ("fisher", 4.0), (str(sweep / "results.json"), 1.0), (str(sweep / "results.json"), 4.0)]
    for rec in recs.values():
        best = min(t["answer_ppl"] for t in rec["penalty_trials"])
        pick = next(t for t in rec["penalty_trials"] if t["table"] == rec["table"] and
                    t["below_penalty"] == rec["below_penalty"] and t.get("from") == rec.get("picked_from"))
        assert pick["answer_ppl"] == best
        assert rec["predicted_damage"] == pytest.approx(pick["predicted_damage"])
        assert rec["avg_w_bits"] <= float(rec["label"].removeprefix("search-avg"))
        assert rec["table"] in tables
    profiles = [c["profile"] for c in res["calibration"]]
    assert len(profiles) == len(set(profiles))
    capsys.readouterr()
    assert "--calib-offset" in _one_line_error(capsys, _search(tiny_squad, out, "--avg-bits", "4",
                                                               "--alt-sensitivity", "fisher-grad"))
    assert "twice" in _one_line_error(capsys, _search(tiny_squad, out, "--avg-bits", "4", "--alt-sensitivity",
                                                      "fisher", "--calib-offset", "4"))
    assert "--alt-sensitivity 'measured'" in _one_line_error(capsys, _search(
        tiny_squad, out, "--avg-bits", "4", "--alt-sensitivity", "measured", "--calib-offset", "4"))
    assert "--max-drop" in _one_line_error(capsys, _search(tiny_squad, out, "--max-drop", "1", "--alt-sensitivity",
                                                           "fisher-grad", "--calib-offset", "4"))
