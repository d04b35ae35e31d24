"""benchmarks/bench_gguf.py: its rows, the --quick sizes and the markdown of a record."""

from __future__ import annotations

import pytest

from bitswitch.profiles import parse_profile
from bitswitch.verify import stats


def test_rows_and_quick_sizes(bench):
    assert bench.ROWS == {"w8": ("w8a8", True), "w4": ("w4a8", True), "w4-asym": ("w4a8", False),
                          "mixed": ("w4a8;L*.attn_*=w8a8", True)}
    parse_profile(bench.MIXED)                                       # the grammar takes it
    a = bench.parse(["--quick", "--rows", "w4"])
    assert (a.limit, a.windows, a.window, a.speed_repeats, a.rows) == (6, 2, 64, 1, ["w4"])
    full = bench.parse([])
    assert (full.limit, full.windows, full.window, full.threads, full.unquantized_dtype) == (200, 8, 256, 1, "fp16")
    assert (full.noise_floor, full.kv_cache, full.flash_attention) == (1e-6, "f16", "auto")
    speed = bench.parse(["--speed-only"])
    assert (speed.squad, speed.wikitext, speed.noise_floor, speed.speed_repeats) == (None, None, 0.0, 3)


def test_markdown_of_a_record(bench):
    size = {"file_bytes": 1100, "theoretical_bytes": 1000, "overhead_bytes": 100, "quantized_bits_per_weight": 4.5,
            "by_type": stats.theoretical_bytes([("Q4_0", 64), ("F32", 16)])["by_type"]}
    record = {"row": "w4", "profile": "w4a8", "adapter": True, "tensor_types": {"Q4_0": 1, "F32": 1},
              "squad": {"n": 2, "agreement": 1.0, "noise_floor": {"self_agreement": 0.5}, "bitswitch": {"em": 50.0, "f1": 60.0},
                        "llama.cpp": {"em": 50.0, "f1": 60.0}, "d_f1": {"mean": 0.0, "se": 0.0, "n": 2}},
              "wikitext": {"bitswitch": {"ppl": 20.0}, "llama.cpp": {"ppl": 20.1}, "rel_diff": 0.005},
              "speed": {"export": {"decode_tok_s": 50.0}, "reference": {"decode_tok_s": 55.0}},
              "sizes": {"model.gguf": size}}
    record["goals"] = stats.goal_checks({"agreement": 1.0, "d_f1": 0.0, "ppl_rel_diff": 0.005})
    md = bench.markdown([record], {"threads": 1})
    assert "| w4 | w4a8 | Q4_0 | True | 2 | 1 | 0.5 | 50 | 50 | 60 | 60 | 0 | 0 | 20 | 20.1 | 0.005 |" in md
    assert "| w4 | model.gguf | 1,100 | 1,000 | 100 | 4.5 |" in md
    assert "| w4 | model.gguf | Q4_0 | 1 | 64 | 4.5 | 36 |" in md
    assert md.count("| yes |") == 3


def test_combine_rows_run_apart(bench, tmp_path):
    import json

    from bitswitch.verify import stats as st

    def doc(row, adapters, threads=1, asym=None):
        rec = {"row": row, "profile": bench.ROWS[row][0], "adapter": adapters is not None,
               "tensor_types": {"Q4_0": 1}, "sizes": {"model.gguf": {
                   "file_bytes": 40, "theoretical_bytes": 36, "overhead_bytes": 4, "quantized_bits_per_weight": 4.5,
                   "by_type": st.theoretical_bytes([("Q4_0", 64)])["by_type"]}},
               "goals": st.goal_checks({})}
        meta = {"command": f"bench --rows {row}", "adapters": adapters, "asym_adapters": asym, "threads": threads,
                **{k: None for k in bench.SETTINGS if k not in ("adapters", "asym_adapters", "threads")}}
        return {"meta": meta, "rows": [], "records": [rec]}

    files = []
    for row, adapters, asym in (("mixed", "runs/a", None), ("w4-asym", None, "runs/b"), ("w8", "runs/a", None)):
        files.append(tmp_path / f"{row}.json")
        files[-1].write_text(json.dumps(doc(row, adapters, asym=asym)))
    out = tmp_path / "gguf.json"
    bench.main(["--combine", *map(str, files), "--out", str(out)])
    got = json.loads(out.read_text())
    assert [r["row"] for r in got["records"]] == ["w8", "w4-asym", "mixed"]       # the ROWS order
    assert got["meta"]["adapters"] == ["None", "runs/a"] and len(got["meta"]["command"]) == 3
    assert got["meta"]["asym_adapters"] == ["None", "runs/b"]
    assert (tmp_path / "gguf.md").read_text().count("| model.gguf | Q4_0 |") == 3
    files[0].write_text(json.dumps(doc("mixed", "runs/a", threads=2)))
    with pytest.raises(SystemExit, match="differ in threads"):
        bench.main(["--combine", *map(str, files), "--out", str(out)])
