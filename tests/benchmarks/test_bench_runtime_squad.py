"""benchmarks/bench_runtime_squad.py: the paired arithmetic, and a smoke run on tiny-llama."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import shared_data

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def q(pred, f1, em=0.0):
    return {"prediction": pred, "f1": f1, "em": em}


def test_pairs_only_shared_questions_in_points(bench):
    fake = {"a": q("x", 0.5), "b": q("y", 1.0, 1.0), "c": q("z", 0.0)}
    runtime = {"a": q("x", 0.5), "b": q("w", 0.0), "d": q("v", 1.0)}
    row = bench.pair(fake, runtime)
    assert row["n"] == 2 and row["f1_fake"] == 75.0 and row["f1_runtime"] == 25.0
    assert row["d_f1"] == -50.0 and row["se_d_f1"] == 50.0       # differences 0 and -100
    assert row["d_em"] == -50.0 and row["same_answer"] == 0.5


def test_smoke_run_on_tiny_llama(tmp_path):
    data = shared_data("squad-v1.1", "dev-part1-v1.1.json")
    cmd = [sys.executable, str(BENCH / "bench_runtime_squad.py"), "--model", "tiny-llama", "--data", str(data),
           "--limit", "4", "--profiles", "w8", "w4g32", "--runs", "runs/rt", "--out", "rt.json"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "rt.json").read_text())["rows"]
    assert [r["profile"] for r in rows] == ["w8", "w4g32"] and all(r["n"] == 4 for r in rows)
    assert (tmp_path / "rt.md").read_text().startswith("# SQuAD through the runtime")
