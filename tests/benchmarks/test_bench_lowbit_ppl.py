"""benchmarks/bench_lowbit_ppl.py on a tiny model: recipes, rows, ratios and its two files."""

from __future__ import annotations

import json

import pytest

from tests.conftest import shared_data


def test_tiny_run_writes_rows_and_markdown(bench, tmp_path):
    assert set(bench.RECIPES) == {"rtn", "rotate"} and bench.weight_bits("w4g32a8") == 4
    out = tmp_path / "lowbit.json"
    data = shared_data("wikitext-2-raw", "wiki.test.raw")
    bench.main(["--model", "tiny-llama", "--data", str(data), "--tokens", "128", "--window", "64",
                "--profiles", "w4", "w3g32", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["recipe"], r["profile"]) for r in rows] == [(r, p) for r in ("rtn", "rotate") for p in ("fp", "w4", "w3g32")]
    fp = {r["recipe"]: r["ppl"] for r in rows if r["profile"] == "fp"}
    assert fp["rotate"] == pytest.approx(fp["rtn"], rel=1e-4)          # the rotation is exact in fp
    w4 = [r for r in rows if r["profile"] == "w4"]
    assert all(r["goal"] == 1.10 and r["vs_fp"] == pytest.approx(r["ppl"] / fp[r["recipe"]]) for r in w4)
    assert w4[1]["vs_rtn"] == pytest.approx(w4[1]["ppl"] / w4[0]["ppl"])
    assert "| rotate | w3g32 |" in out.with_suffix(".md").read_text()
