"""benchmarks/bench_recipes.py: the rows it derives from evaluation files (drops from fp, pairs against
lora, perplexity ratios, training time) and its refusals."""

from __future__ import annotations

import json

import pytest


def write_eval(root, name, f1s: dict[str, list[float]], ppl: dict[str, float]):
    squad, wiki = root / f"squad-{name}", root / f"wikitext-{name}"
    squad.mkdir()
    wiki.mkdir()
    for p, vals in f1s.items():
        lines = [json.dumps({"id": f"q{i}", "prediction": "", "f1": v, "em": float(v == 1.0)}) for i, v in enumerate(vals)]
        (squad / f"predictions-{p}.jsonl").write_text("\n".join(lines) + "\n")
    (wiki / "results.json").write_text(json.dumps({"records": [{"profile": p, "ppl": v} for p, v in ppl.items()]}))
    return {"squad": squad, "wikitext": wiki, "train_s": 12.5}


def test_rows_pair_each_profile_with_its_fp_and_with_lora(bench, tmp_path):
    a = bench.argparse.Namespace(profiles=["fp", "w4a8"])
    done = {"lora": write_eval(tmp_path, "lora", {"fp": [1, 1, 0, 1], "w4a8": [0, 1, 0, 1]}, {"fp": 20.0, "w4a8": 30.0}),
            "full": write_eval(tmp_path, "full", {"fp": [1, 1, 1, 1], "w4a8": [1, 1, 0, 1]}, {"fp": 20.0, "w4a8": 22.0})}
    rows = {(r["recipe"], r["profile"]): r for r in bench.rows_of(a, done)}
    lora4, full4 = rows["lora", "w4a8"], rows["full", "w4a8"]
    assert lora4["n"] == 4 and lora4["f1"] == 50.0 and lora4["drop_from_fp"] == 25.0
    assert lora4["ppl_ratio_fp"] == 1.5 and "d_f1_vs_lora" not in lora4
    assert full4["drop_from_fp"] == 25.0 and full4["d_f1_vs_lora"] == 25.0 and full4["ppl_ratio_fp"] == 1.1
    assert rows["full", "fp"]["drop_from_fp"] == 0.0 and full4["train_s"] == 12.5


def test_train_seconds_sums_the_step_times(bench, tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "seconds": 1.25}\n{"step": 1, "seconds": 2.5}\n'
                                            '{"event": "saved"}\n')
    assert bench.train_seconds(tmp_path) == 3.8   # 3.75 to one decimal, half to even


@pytest.mark.parametrize("argv, needle", [(["--recipes", "full"], "must include lora"),
                                          (["--limit", "1"], "--limit")])
def test_bad_arguments_exit_2(bench, argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err
