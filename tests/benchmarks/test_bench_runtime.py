"""benchmarks/bench_runtime.py: the goal arithmetic, the prompt, and a smoke run of the transformers
rows on tiny-llama (each row its own process)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_data

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def row(name, decode, rss=100.0, threads=2, batch=1):
    return {"threads": threads, "batch": batch, "row": name, "decode_tok_s": decode, "peak_rss_mb": rss}


def test_goals_are_ratios_within_each_thread_and_batch_group(bench):
    rows = [row("hf-fp32", 20.0, rss=800.0), row("hf-bf16", 40.0), row("w8", 30.0), row("w4g32", 50.0, rss=400.0),
            row("alt", 42.0), row("llama.cpp", 80.0), row("nested", 50.0, rss=480.0),
            row("nested-eager", 40.0, rss=360.0),
            row("hf-fp32", 10.0, threads=1), {**row("w4g32", None, threads=1), "error": "boom"}]
    checks = {(c["threads"], c["goal"]): c for c in bench.goals(rows)}
    assert len(checks) == 2 * len(bench.GOALS)
    two = {goal: (c["ratio"], c["met"]) for (t, goal), c in checks.items() if t == 2}
    assert two["w4g32 decode / hf-fp32 decode"] == (2.5, "yes")          # >= 2.5 holds at equality
    assert two["w4g32 decode / hf-bf16 decode"] == (1.25, "NO")
    assert two["w8 decode / hf-fp32 decode"] == (1.5, "yes")
    assert two["alt decode / mean(w4g32, w8) decode"] == (1.05, "yes")   # 42 / 40: within 10 %
    assert two["w4g32 peak RSS / hf-fp32 peak RSS"] == (0.5, "yes")
    assert two["nested w4g32 peak RSS / hf-fp32 peak RSS"] == (0.6, "NO")
    assert two["nested-eager w4g32 peak RSS / hf-fp32 peak RSS"] == (0.45, "yes")
    assert two["w4g32 decode / llama.cpp decode"] == (0.625, "NO")
    one = [c for (t, _), c in checks.items() if t == 1]
    assert all(c["ratio"] is None and c["met"] == "not measured" for c in one)   # w4g32 failed there


def test_prompt_is_at_most_the_target_and_close_to_it(bench):
    from bitswitch.models import byte_tokenizer

    squad = shared_data("squad-v1.1", "dev-part1-v1.1.json")
    ids, question = bench.build_prompt(byte_tokenizer(), squad, 119)
    assert 100 <= len(ids) <= 119 and question
    assert bench.build_prompt(byte_tokenizer(), squad, 119) == (ids, question)   # deterministic


def test_quick_run_of_the_transformers_rows(tmp_path):
    shared_data("squad-v1.1", "dev-part1-v1.1.json")
    cmd = [sys.executable, str(BENCH / "bench_runtime.py"), "--quick", "--rows", "hf-fp32", "hf-bf16",
           "--threads", "1", "--batch", "1", "2", "--repeats", "1", "--out", "runtime.json"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (tmp_path / "runtime.json").read_text()
    data = json.loads(text)
    assert [(r["row"], r["batch"]) for r in data["rows"]] == [("hf-fp32", 1), ("hf-bf16", 1), ("hf-fp32", 2),
                                                              ("hf-bf16", 2)]
    for r in data["rows"]:
        assert "error" not in r, r
        assert r["new_tokens"] == 8 and 100 <= r["prompt_tokens"] <= 119
        assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["peak_rss_mb"] > 0
        assert len(r["decode_s"]) == len(r["prefill_s"]) == 1
    assert data["meta"]["model"] == "tiny-llama" and data["meta"]["new_tokens"] == 8
    assert all(c["met"] == "not measured" for c in data["goals"])      # no runtime or llama.cpp rows ran
    meta = data["meta"]                                                 # no absolute paths in results
    assert not any(Path(x).is_absolute() for x in [*shlex.split(meta["command"]), meta["squad"]])


def test_quick_run_of_the_runtime_rows(tmp_path, bench):
    if not bench.runtime_available():
        pytest.skip(bench.NO_RUNTIME)
    shared_data("squad-v1.1", "dev-part1-v1.1.json")
    cmd = [sys.executable, str(BENCH / "bench_runtime.py"), "--quick", "--rows", "w4g32", "alt", "nested", "--threads", "1",
           "--batch", "1", "2", "--repeats", "1", "--out", "runtime.json"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "runtime.json").read_text())["rows"]
    assert [(r["row"], r["batch"]) for r in rows] == [("w4g32", 1), ("alt", 1), ("nested", 1), ("w4g32", 2),
                                                      ("alt", 2), ("nested", 2)]
    for r in rows:
        assert "error" not in r, r
        assert r["decode_tok_s"] > 0 and r["resident_mb"] > 0 and r["peak_rss_mb"] > 0
    assert rows[1]["profiles"] == ["w4g32", "w8"] and rows[2]["profiles"] == ["w4g32"]


def test_bad_input_is_exit_2_with_one_line(tmp_path):
    cmd = [sys.executable, str(BENCH / "bench_runtime.py"), "--quick", "--squad", str(tmp_path / "absent.json")]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: SQuAD file") and len(proc.stderr.strip().splitlines()) == 1
