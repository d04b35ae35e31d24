"""The ``bench`` fixture: the benchmark script a test file tests, imported from ``benchmarks/``
(``test_bench_X.py`` gets ``benchmarks/bench_X.py``; the scripts import ``common`` from there)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench(request):
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
