"""Helpers shared by the benchmark scripts: timing, tables and JSON output."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bitswitch.io import atomic_write_json  # noqa: E402
from bitswitch.results import markdown_table, run_metadata, se_of_mean  # noqa: E402


def rel(path) -> str:
    """``path`` relative to the current directory: results files hold no machine-absolute paths."""
    return os.path.relpath(path)


# results files record the command line (``run_metadata`` reads ``sys.argv``): absolute paths in it,
# the script's own included, are written relative to the current directory
sys.argv[:] = [rel(x) if os.path.isabs(x) else x for x in sys.argv]


def timeit(fn, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write(out: str | None, rows: list[dict], columns: list[str], **meta) -> None:
    """Print the table and write ``{"meta", "rows"}`` to ``out``."""
    print(markdown_table(rows, columns))
    if out:
        atomic_write_json(out, {"meta": {**run_metadata(None, meta.pop("seed", 0)), **meta}, "rows": rows})
        print(f"\nwritten: {out}")


def per_question(path) -> dict[str, dict]:
    """An eval's ``predictions-<profile>.jsonl`` by question id."""
    return {r["id"]: r for r in map(json.loads, Path(path).read_text().splitlines()) if r}


def paired_scores(a: dict[str, dict], b: dict[str, dict], name_a: str, name_b: str) -> dict:
    """F1 / EM of ``a`` and ``b`` (per_question dicts) in points over the questions both answered:
    ``n``, ``f1_<name>`` / ``em_<name>`` means, ``d_f1`` / ``d_em`` (b - a) and their standard errors
    ``se_d_f1`` / ``se_d_em``."""
    ids = [i for i in a if i in b]
    if not ids:
        raise SystemExit("error: the two evaluations share no question: were they run with the same settings?")
    out = {"n": len(ids)}
    for m in ("f1", "em"):
        x = [100 * float(a[i][m]) for i in ids]
        y = [100 * float(b[i][m]) for i in ids]
        d = [v - u for u, v in zip(x, y)]
        out[f"{m}_{name_a}"], out[f"{m}_{name_b}"] = sum(x) / len(x), sum(y) / len(y)
        out[f"d_{m}"], out[f"se_d_{m}"] = sum(d) / len(d), se_of_mean(d)
    return out


def add_switchable_training_args(ap, data) -> None:
    """The arguments of one switchable SQuAD training and its evaluation, as the paired training
    benchmarks share them (``data``: the shared data directory)."""
    ap.add_argument("--train", default=str(data / "squad-v1.1" / "train-subset-v1.1.json"))
    ap.add_argument("--dev", default=str(data / "squad-v1.1" / "dev-part1-v1.1.json"))
    ap.add_argument("--train-profiles", nargs="+", default=["fp", "w8a8", "w6a8", "w4a8"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--limit", type=int, default=400, help="dev questions, a seeded sample stratified over articles")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--eval-batch-size", type=int, default=16)
