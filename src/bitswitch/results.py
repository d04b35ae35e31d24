"""Results records: run metadata, markdown tables, peak memory; which way a metric improves, standard
errors and rank correlations of results."""

from __future__ import annotations

import math
import platform
import resource
import shlex
import sys
import time


def versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    from . import __version__

    return {"bitswitch": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def run_metadata(argv: list[str] | None, seed: int, **extra) -> dict:
    """What reproduces a results file: the command, the versions, the seed, when and where."""
    cmd = "bitswitch " + shlex.join(argv) if argv is not None else shlex.join(sys.argv)
    return {"command": cmd, "seed": seed, "versions": versions(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), **extra}


HIGHER = {"em", "f1", "accuracy", "acc", "acc_norm", "exact_match", "score"}
LOWER = {"ppl", "answer_ppl", "loss", "nll", "bytes", "weight_bytes", "asr", "drop"}


def higher_is_better(metric: str, given: str | None = None) -> bool:
    """Whether a larger ``metric`` is better (EM, F1, accuracies) or worse (perplexities, losses, bytes).

    ``given`` (``"higher"`` / ``"lower"``) overrides; a metric of unknown direction counts as higher-is-better.
    """
    if given in ("higher", "lower"):
        return given == "higher"
    if metric in HIGHER or metric.endswith("_acc") or metric.endswith(",acc"):
        return True
    if metric in LOWER or metric.endswith("ppl"):
        return False
    return True


def se_of_mean(values) -> float | None:
    """Standard error of the mean of ``values`` (sample standard deviation / sqrt(n)); None for fewer than two."""
    v = list(values)
    if len(v) < 2:
        return None
    mean = sum(v) / len(v)
    return math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1) / len(v))


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties): Pearson correlation of the ranks."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("spearman needs two equally long lists of at least 2 values")
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb) if va > 0 and vb > 0 else float("nan")


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def bound_heap_retention(threshold: int = 1 << 20) -> bool:
    """Serve allocations of ``threshold`` bytes or more with their own mmap (glibc ``mallopt``).

    Why: glibc raises its mmap threshold after large frees (up to 32 MiB), so large activation
    buffers then come from the heap; long-lived tensors created between them (quantized weight
    caches, KV caches) pin that heap and the freed activations stay resident -- hundreds of MiB on
    smollm2-135m, erratically. A fixed threshold returns large buffers to the kernel when freed.
    Process-wide, so the CLI calls it, not the library. Returns False where glibc is absent.
    """
    import ctypes
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))   # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def markdown_table(records: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    rows = ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in records]
    return "\n".join([head, sep, *rows])
