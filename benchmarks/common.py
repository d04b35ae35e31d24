"""Helpers shared by the benchmark scripts: timing, tables and JSON output."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from bitswitch.io import atomic_write_json  # noqa: E402
from bitswitch.results import markdown_table, run_metadata  # noqa: E402


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
