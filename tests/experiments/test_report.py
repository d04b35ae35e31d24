import json

from bitswitch.cli import main
from bitswitch.experiments import sections
from bitswitch.experiments.sections import Section, register


def _attack_results():
    cell = lambda f1, drop: {"em": f1 - 5, "f1": f1, "answer_ppl": 3.0, "n": 4, "success_rate": 25.0,  # noqa: E731
                             "f1_drop": drop}
    matrix = {"fp": {"fp": cell(40, 20), "w4a8": cell(50, 8), "rpi": cell(52, 6)},
              "w4a8": {"fp": cell(55, 5), "w4a8": cell(35, 20), "rpi": cell(50, 8)},
              "rpi": {"fp": cell(58, 2), "w4a8": cell(52, 3), "rpi": cell(45, 13)}}
    clean = {"fp": {"em": 55, "f1": 60, "answer_ppl": 2.0, "n": 4}, "w4a8": {"em": 50, "f1": 55, "answer_ppl": 2.2, "n": 4},
             "rpi": {"em": 53, "f1": 58, "answer_ppl": 2.1, "n": 4}}
    summary = {"profiles": ["fp", "w4a8"], "clean_f1_fixed_mean": 57.5, "clean_f1_rpi": 58, "clean_cost": -0.5,
               "attacked_f1_fixed_mean": 37.5, "attacked_f1_rpi_adaptive": 45, "attacked_f1_rpi_transfer": 51,
               "recovered_adaptive": 7.5, "recovered_adaptive_se": 2.0, "recovered_transfer": 13.5}
    records = [{"attack": "typo", "craft": r, "eval": c, **v, "clean_f1": clean[c]["f1"]}
               for r, cols in matrix.items() for c, v in cols.items()]
    return {"kind": "attack", "model": "tiny-llama", "data": "x.json", "n": 4, "attacks": ["typo"],
            "craft": ["fp", "w4a8", "rpi"], "eval": ["fp", "w4a8", "rpi"],
            "rpi": {"profiles": ["fp", "w4a8"], "p": 0.5, "granularity": "forward", "eot": 4}, "clean": clean,
            "results": {"typo": {"params": {"budget": 4}, "direct": {r: matrix[r][r] for r in matrix},
                                 "craft_stats": {r: {"mean_edits": 3.5} for r in matrix}, "matrix": matrix,
                                 "rpi_summary": summary}},
            "records": records, "versions": {"torch": "x", "transformers": "y"}, "device": "cpu"}


def _fake_run(tmp_path, name, kind_results: dict[str, dict], command="attack"):
    """A run directory whose steps' results were written by hand (commands that may not exist here)."""
    run_dir, steps = tmp_path / name, []
    for sid, res in kind_results.items():
        out = tmp_path / "cache" / f"{command}-{sid}"
        out.mkdir(parents=True)
        (out / "results.json").write_text(json.dumps(res))
        steps.append({"id": sid, "command": command, "label": sid, "argv": [command, "--model", "smollm2-135m",
                      "--data", "d.json", "--out", str(out)], "hash": sid, "out": str(out), "status": "done",
                      "seconds": 1.0})
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({
        "experiment": name, "question": f"What does {name} show?", "spec": f"experiments/{name}.yaml",
        "size": "small", "sets": [], "vars": {"limit": 4}, "command": f"bitswitch run experiments/{name}.yaml --size small",
        "answers": [], "cache": str(tmp_path / "cache"), "steps": steps}))
    return run_dir


def fake_attack_run(tmp_path):
    return _fake_run(tmp_path, "robust", {"attack": _attack_results()})


def assert_full_report(out, experiment, real_attack: bool, search: bool):
    """What bitswitch report must show for the tiny experiment's run and the hand-written attack run."""
    text = out.read_text()
    for heading in ("## Answers at a glance", "## tiny: Does a tiny switchable model",
                    "### SQuAD v1.1: EM / F1", "### WikiText perplexity", "### Exported models", "### Training runs",
                    "## robust: What does robust show?", "### Adversarial robustness"):
        assert heading in text, heading
    tiny = text.split("## tiny")[1].split("## robust")[0]
    # tables, computed answers, provenance
    assert "| label | profile | avg_w_bits |" in tiny and "| profile | switchable | dedicated |" in tiny
    assert "switchable against dedicated, f1 (higher is better)" in tiny
    assert "switchable: ppl against fp" in tiny
    assert "typo: examples lose 20.0 F1 on average at the profile they were crafted at and 6.5 at the other" in text
    assert "RPI: gains 0.5 clean F1" in text and "recovers 7.5 F1 against the adaptive" in text
    glance = text.split("## Answers at a glance")[1].split("\n## ")[0]
    assert "| typo: RPI defends: yes (+7.5 \u00b1 2 attacked F1 against the adaptive attacker); examples lose" in glance
    assert f"**Reproduce:** `bitswitch run {experiment} --size small`" in tiny
    assert "**Model:** `tiny-llama`" in tiny and "Q4_1" not in tiny
    assert "Q4_1" in text.split("## robust")[1]            # the smollm2 caveat where smollm2 was used
    # every plot exists beside the report and is linked
    plots = sorted(p.name for p in (out.parent / "report-plots").glob("*.png"))
    want = ["robust-small-transfer-0-typo.png", "tiny-small-ppl-vs-bits.png", "tiny-small-squad-f1-bars.png",
            "tiny-small-squad-vs-bits.png", "tiny-small-train-loss.png"]
    if real_attack:
        want.append("tiny-small-transfer-0-typo.png")
        assert "examples lose" in tiny
    if search:
        want += ["tiny-small-sensitivity-0.png", "tiny-small-sensitivity-1.png", "tiny-small-pareto-0.png"]
        for heading in ("### Sensitivity of layers and units", "### Searched mixed-precision profiles"):
            assert heading in tiny, heading
        assert "layer: most sensitive L" in tiny and "search-avg6: " in tiny and "Pareto front" in tiny
        assert "| searched |" in tiny        # the searched profile evaluated on SQuAD
    assert plots == sorted(want)
    for name in plots:
        assert f"(report-plots/{name})" in text


def test_unknown_kinds_render_generically_and_new_renderers_plug_in(tmp_path):
    res = {"kind": "novel", "records": [{"profile": "w4a8", "score": 1.5}], "model": "m"}
    run = _fake_run(tmp_path, "novel", {"s1": res}, command="eval")
    out = tmp_path / "r.md"
    assert main(["report", str(run), "--out", str(out)]) == 0
    assert "No renderer is registered for kind `novel`" in out.read_text() and "| s1 | w4a8 | 1.5 |" in out.read_text()

    @register("novel", "Novel results", order=5)
    def render(items, ctx):
        return Section("", f"{len(items)} novel item(s)", [f"novel score {items[0].data['records'][0]['score']}"])
    try:
        assert main(["report", str(run), "--out", str(out)]) == 0
        text = out.read_text()
        assert "### Novel results\n\n1 novel item(s)" in text and "- novel score 1.5" in text
    finally:
        sections.RENDERERS.pop("novel")


def test_report_of_an_unfinished_run_says_what_is_missing(tiny_experiment, tmp_path):
    assert main(["run", str(tiny_experiment), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    assert main(["run", str(tiny_experiment), "--out", str(tmp_path / "run"), "--only", "ded"]) == 0
    out = tmp_path / "r.md"
    assert main(["report", str(tmp_path / "run"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Not included (no finished results): train (pending)" in text and "### Training runs" in text
    assert "(compare f1: no results for switchable, dedicated in this run)" in text or "no results of that kind" in text


def test_rpi_without_transferred_examples_renders(tmp_path):
    """A diagonal attack matrix (RPI attacked only by its own examples) has no transfer figure: the
    report says it was not measured instead of failing."""
    res = _attack_results()
    summary = res["results"]["typo"]["rpi_summary"]
    summary.update(attacked_f1_rpi_transfer=None, recovered_transfer=None, recovered_transfer_se=None)
    out = tmp_path / "r.md"
    assert main(["report", str(_fake_run(tmp_path, "robust", {"attack": res})), "--out", str(out)]) == 0
    text = out.read_text()
    assert "recovers 7.5 F1 against the adaptive (EOT) attacker (45 vs 37.5) and was not measured against " \
           "transferred examples." in text
