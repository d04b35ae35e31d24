"""``bitswitch generate --speculative`` and ``bitswitch eval --dynamic`` on tiny models."""

import json

import pytest

from bitswitch.cli import main
from bitswitch.dynamic import RuntimeEngine, greedy_generate
from bitswitch.runtime import Runtime

from ..evaluate.test_squad_eval import _squad_file


def test_generate_speculative_equals_greedy_at_high(tmp_path, capsys):
    out = tmp_path / "g.json"
    assert main(["generate", "--model", "tiny-llama", "--speculative", "w4g32:w8", "--draft-k", "3", "--prompt",
                 "hello", "--prompt", "a b c", "--max-new-tokens", "8", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    engine = RuntimeEngine(Runtime.load("tiny-llama", profiles=["w8", "w4g32"], device="cpu"))
    for prompt, text in zip(["hello", "a b c"], res["texts"]):
        toks = greedy_generate(engine, engine.tokenizer(prompt).input_ids, "w8", 8).tokens
        want = engine.tokenizer.decode(toks, skip_special_tokens=True)   # no stop strings by default
        assert text == want
    spec = res["speculative"]
    assert spec["low"] == "w4g32" and spec["high"] == "w8" and spec["draft_k"] == 3 and spec["drafted"] > 0
    assert spec["draft_min_prob"] is None
    # an adaptive draft length: the same texts
    assert main(["generate", "--model", "tiny-llama", "--speculative", "w4g32:w8", "--draft-k", "6",
                 "--draft-min-prob", "0.5", "--prompt", "hello", "--prompt", "a b c", "--max-new-tokens", "8",
                 "--device", "cpu", "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["texts"] == res["texts"] and again["speculative"]["draft_min_prob"] == 0.5
    assert "of drafts accepted (k=3)" in capsys.readouterr().err


@pytest.mark.parametrize("argv, needle", [
    (["--speculative", "w8"], "LOW:HIGH"),
    (["--speculative", "w8:w8"], "LOW:HIGH"),
    (["--speculative", "w4g32:w8", "--draft-k", "0"], "--draft-k"),
    (["--speculative", "w4g32:w8", "--temperature", "0.7"], "greedily"),
    (["--speculative", "w4g32:w8", "--draft-min-prob", "1.5"], "--draft-min-prob"),
    (["--draft-min-prob", "0.5"], "--speculative"),
])
def test_generate_speculative_bad_input_is_one_line(argv, needle, capsys):
    assert main(["generate", "--model", "tiny-llama", "--device", "cpu", "--prompt", "x", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


@pytest.mark.parametrize("kind", ["threshold", "gate", "request"])
def test_eval_dynamic_squad_reports_bits_beside_f1(tmp_path, kind):
    data = _squad_file(tmp_path / "dev.json", n=4)
    train = _squad_file(tmp_path / "train.json", n=4, prefix="t")
    out = tmp_path / kind
    assert main(["eval", "--model", "tiny-llama", "--task", "squad", "--data", str(data), "--train-data", str(train),
                 "--dynamic", kind, "--budget", "6", "--widths", "w4g32,w8", "--max-new-tokens", "4",
                 "--gate-steps", "6", "--device", "cpu", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    (rec,) = res["records"]
    assert rec["profile"] == f"dynamic-{kind}-6" and rec["n"] == 4 and "f1" in rec and "answer_ppl" in rec
    assert 4 <= rec["avg_w_bits"] <= 8 and rec["bytes_per_token"] > 0 and rec["sequences"]["n"] == 4
    if kind == "request":
        assert rec["avg_w_bits"] != 6 or rec["width_share"]["w8"] > 0
    else:
        assert abs(rec["calib_avg_w_bits"] - 6) <= 0.05
    if kind == "gate":
        assert len(rec["gate_history"]["kl"]) == 6 and (out / rec["gate_file"]).is_file()
    assert "bytes_per_token" in (out / "results.md").read_text()


def test_eval_dynamic_gate_trained_on_answers_is_its_own_record(tmp_path):
    """--gate-target answer trains another gate (another record id, the target in the record) on the
    same calibration examples, with the same price fit on their bare prompts."""
    data = _squad_file(tmp_path / "dev.json", n=3)
    train = _squad_file(tmp_path / "train.json", n=4, prefix="t")
    common = ["eval", "--model", "tiny-llama", "--task", "squad", "--data", str(data), "--train-data", str(train),
              "--dynamic", "gate", "--budget", "6", "--max-new-tokens", "4", "--gate-steps", "4", "--device", "cpu"]
    recs = {}
    for target in ("prompt", "answer"):
        assert main([*common, "--gate-target", target, "--out", str(tmp_path / target)]) == 0
        (recs[target],) = json.loads((tmp_path / target / "results.json").read_text())["records"]
    assert recs["answer"]["gate_target"] == "answer" and recs["prompt"]["gate_target"] == "prompt"
    assert recs["answer"]["profile_id"] != recs["prompt"]["profile_id"]
    assert recs["answer"]["gate_history"]["kl"] != recs["prompt"]["gate_history"]["kl"]
    assert abs(recs["answer"]["calib_avg_w_bits"] - 6) <= 0.05
    assert main([*common, "--gate-target", "tokens", "--out", str(tmp_path / "bad")]) == 2


def test_eval_dynamic_gate_reuses_a_saved_gate(tmp_path):
    data = _squad_file(tmp_path / "dev.json", n=3)
    train = _squad_file(tmp_path / "train.json", n=4, prefix="t")
    common = ["eval", "--model", "tiny-llama", "--task", "squad", "--data", str(data), "--train-data", str(train),
              "--dynamic", "gate", "--budget", "6", "--max-new-tokens", "4", "--device", "cpu"]
    assert main([*common, "--gate-steps", "4", "--out", str(tmp_path / "a")]) == 0
    (first,) = json.loads((tmp_path / "a" / "results.json").read_text())["records"]
    gate = tmp_path / "a" / first["gate_file"]
    assert main([*common, "--gate", str(gate), "--out", str(tmp_path / "b")]) == 0
    (again,) = json.loads((tmp_path / "b" / "results.json").read_text())["records"]
    assert "gate_history" not in again and again["gate_file"] == gate.name
    for key in ("price", "calib_avg_w_bits", "avg_w_bits", "f1", "answer_ppl", "width_share"):
        assert again[key] == first[key], key      # same gate, same calibration prompts: the same fit and run


def test_eval_dynamic_wikitext(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "w"
    assert main(["eval", "--model", "tiny-gpt2", "--task", "wikitext", "--data", str(text), "--window", "64",
                 "--max-tokens", "512", "--dynamic", "threshold", "--budget", "5.5", "--device", "cpu",
                 "--out", str(out)]) == 0
    (rec,) = json.loads((out / "results.json").read_text())["records"]
    assert rec["ppl"] > 1 and abs(rec["calib_avg_w_bits"] - 5.5) <= 0.05 and rec["sequences"]["n"] == 8


@pytest.mark.parametrize("argv, needle", [
    (["--dynamic", "threshold"], "--budget"),
    (["--dynamic", "threshold", "--budget", "3"], "outside"),
    (["--budget", "5"], "--dynamic"),
    (["--dynamic", "request", "--budget", "5", "--profiles", "w8"], "--profiles"),
    (["--dynamic", "request", "--budget", "5", "--engine", "runtime"], "--engine runtime"),
    (["--dynamic", "gate", "--budget", "5"], "--train-data"),
    (["--dynamic", "gate", "--budget", "5", "--gate-steps", "0"], "--gate-steps"),
    (["--dynamic", "threshold", "--budget", "5", "--gate", "g.safetensors"], "--gate"),
    (["--dynamic", "gate", "--budget", "5", "--gate", "missing.safetensors"], "cannot be read"),
])
def test_eval_dynamic_bad_input_is_one_line(tmp_path, argv, needle, capsys):
    text = tmp_path / "t.txt"
    text.write_text("some text " * 50)
    assert main(["eval", "--model", "tiny-gpt2", "--task", "wikitext", "--data", str(text), "--device", "cpu",
                 "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err
