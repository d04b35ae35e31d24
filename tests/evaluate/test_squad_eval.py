import json

import pytest

from bitswitch.cli import main


def _squad_file(path, n=6, bad=False, prefix="q"):
    qas = [{"id": f"{prefix}{i}", "question": f"What is item {i}?",
            "answers": [] if bad and i == 3 else [{"text": f"item {i}", "answer_start": 0}]} for i in range(n)]
    data = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "A list of items: " + ", ".join(f"item {i}" for i in range(n)) + ".", "qas": qas}]}]}
    path.write_text(json.dumps(data))
    return path


def test_squad_eval_writes_results_predictions_and_plot(tmp_path, capsys):
    data = _squad_file(tmp_path / "dev.json")
    out = tmp_path / "o"
    code = main(["eval", "--model", "tiny-llama", "--task", "squad", "--data", str(data), "--profiles", "fp",
                 "w8a8", "--max-new-tokens", "4", "--batch-size", "4", "--out", str(out)])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    rec = res["records"][1]
    for key in ("profile", "em", "f1", "answer_ppl", "n", "truncated", "seconds", "questions_per_s",
                "avg_w_bits", "weight_bytes"):
        assert key in rec
    assert rec["n"] == 6 and rec["avg_w_bits"] == 8 and rec["answer_ppl"] > 1
    lines = (out / "predictions-w8a8.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 6 and set(first) == {"id", "question", "prediction", "answers", "em", "f1"}
    assert (out / "squad.png").stat().st_size > 1000
    assert "squad.png" in capsys.readouterr().out


def test_offset_evaluates_exactly_the_held_out_questions(tmp_path, capsys):
    data = _squad_file(tmp_path / "dev.json")
    base = ["eval", "--model", "tiny-llama", "--task", "squad", "--data", str(data), "--profiles", "w8a8",
            "--max-new-tokens", "4", "--batch-size", "2"]
    assert main(base + ["--out", str(tmp_path / "all")]) == 0
    assert main(base + ["--offset", "2", "--limit", "3", "--out", str(tmp_path / "held")]) == 0
    whole = (tmp_path / "all" / "predictions-w8a8.jsonl").read_text().splitlines()
    held = (tmp_path / "held" / "predictions-w8a8.jsonl").read_text().splitlines()
    assert held == whole[2:5]                              # same questions, same predictions and scores
    assert json.loads((tmp_path / "held" / "results.json").read_text())["records"][0]["n"] == 3
    capsys.readouterr()
    assert main(base + ["--offset", "6", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--offset 6 skips every question" in err


def test_static_calibration_uses_training_examples(tmp_path):
    data = _squad_file(tmp_path / "dev.json", 4)
    train = _squad_file(tmp_path / "train.json", 8, prefix="t")
    base = ["eval", "--model", "tiny-gpt2", "--task", "squad", "--data", str(data), "--profiles", "w8a8",
            "--act-mode", "tensor", "--max-new-tokens", "2", "--out", str(tmp_path / "o")]
    assert main(base) == 2                                   # no training data to calibrate on
    assert main(base + ["--train-data", str(train)]) == 0


def test_malformed_squad_file_is_one_line_exit_2(tmp_path, capsys):
    bad = _squad_file(tmp_path / "bad.json", bad=True)
    code = main(["eval", "--model", "tiny-gpt2", "--task", "squad", "--data", str(bad), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "bad.json" in err and "'q3'" in err


@pytest.mark.parametrize("task", ["lm-eval:", "nosuch"])
def test_unknown_task_is_one_line_exit_2(tmp_path, capsys, task):
    assert main(["eval", "--model", "tiny-gpt2", "--task", task, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_lm_eval_without_task_data_is_one_line(tmp_path, capsys):
    """On a machine without hub access (CI, this one) the task data cannot be had: one line, exit 2."""
    pytest.importorskip("lm_eval")
    from bitswitch.hub import hub_reachable

    if hub_reachable():
        pytest.skip("the hub is reachable here: the data could be downloaded")
    code = main(["eval", "--model", "tiny-gpt2", "--task", "lm-eval:boolq", "--limit", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "boolq" in err[-1] and err[-1].startswith("bitswitch: error:")
