"""The arithmetic of a GGUF verification, as pure functions: agreement, paired differences, sizes, goals.

Sizes: a llama.cpp block format stores ``block`` weights in ``block_bytes`` bytes (gguf-py's
``GGML_QUANT_SIZES``: Q8_0 32 in 34 = 8.5 bits per weight, Q4_0 32 in 18 = 4.5, Q4_1 32 in 20 =
5.0, Q5_0 5.5, Q5_1 6.0; F16 16, F32 32). The theoretical size of a file is the sum over its tensors
of weights x bits per weight / 8; what the file holds beyond that is its header, metadata,
tokenizer and alignment padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ..results import se_of_mean

#: the goals of a verification: (name, metric key, kind, target); kind "min": value >= target,
#: "abs_max": |value| <= target
GOALS = (("identical answers >= 95%", "agreement", "min", 0.95),
         ("F1 llama.cpp - bitswitch within 1", "d_f1", "abs_max", 1.0),
         ("PPL llama.cpp / bitswitch - 1 within 1%", "ppl_rel_diff", "abs_max", 0.01))


def agreement(a: Sequence[str], b: Sequence[str]) -> float:
    """Fraction of positions where ``a[i] == b[i]`` (the same answer text, character for character)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"agreement needs two non-empty lists of one length, got {len(a)} and {len(b)}")
    return sum(x == y for x, y in zip(a, b)) / len(a)


def paired_difference(x: Sequence[float], y: Sequence[float]) -> dict:
    """``mean(x - y)`` over paired values and its standard error (sample sd of the differences / sqrt n;
    None for fewer than two pairs): ``{"mean", "se", "n"}``."""
    if len(x) != len(y) or not x:
        raise ValueError(f"paired_difference needs two non-empty lists of one length, got {len(x)} and {len(y)}")
    d = [a - b for a, b in zip(x, y)]
    return {"mean": sum(d) / len(d), "se": se_of_mean(d), "n": len(d)}


def relative_difference(value: float, reference: float) -> float:
    """``value / reference - 1`` (a perplexity ratio's distance from 1)."""
    if not reference or not math.isfinite(reference):
        raise ValueError(f"the reference must be finite and non-zero, got {reference}")
    return value / reference - 1


def block_format(type_name: str) -> tuple[int, int]:
    """``(weights per block, bytes per block)`` of a GGML type name (``"Q4_0" -> (32, 18)``)."""
    import gguf

    try:
        qtype = gguf.GGMLQuantizationType[type_name]
    except KeyError:
        raise ValueError(f"unknown GGML type {type_name!r}") from None
    return gguf.GGML_QUANT_SIZES[qtype]


def bits_per_weight(type_name: str) -> float:
    """Stored bits per weight of a GGML type: ``8 * block bytes / block weights`` (Q4_0: 4.5)."""
    block, size = block_format(type_name)
    return 8 * size / block


def theoretical_bytes(tensors: Iterable[tuple[str, int]]) -> dict:
    """Tensor bytes of ``(type name, weights)`` pairs at their formats' bits per weight.

    Returns ``{"bytes", "by_type": {type: {"tensors", "weights", "bits_per_weight", "bytes"}},
    "quantized_weights", "quantized_bits_per_weight"}``, the last over the block-quantized types
    (None without any). A tensor's weight count must fill whole blocks.
    """
    by_type: dict[str, dict] = {}
    for name, n in tensors:
        block, size = block_format(name)
        if n % block:
            raise ValueError(f"a {name} tensor of {n} weights does not fill blocks of {block}")
        row = by_type.setdefault(name, {"tensors": 0, "weights": 0, "bits_per_weight": bits_per_weight(name),
                                        "bytes": 0})
        row["tensors"] += 1
        row["weights"] += n
        row["bytes"] += n // block * size
    quantized = {k: v for k, v in by_type.items() if k not in ("F32", "F16", "BF16")}
    q_weights = sum(v["weights"] for v in quantized.values())
    q_bytes = sum(v["bytes"] for v in quantized.values())
    return {"bytes": sum(v["bytes"] for v in by_type.values()), "by_type": dict(sorted(by_type.items())),
            "quantized_weights": q_weights, "quantized_bits_per_weight": 8 * q_bytes / q_weights if q_weights else None}


def goal_checks(metrics: dict) -> list[dict]:
    """Each of :data:`GOALS` against ``metrics`` (keys ``agreement``, ``d_f1``, ``ppl_rel_diff``):
    ``[{"goal", "value", "target", "met": "yes" | "NO" | "not measured"}]``."""
    out = []
    for name, key, kind, target in GOALS:
        value = metrics.get(key)
        if value is None:
            met = "not measured"
        elif kind == "min":
            met = "yes" if value >= target else "NO"
        else:
            met = "yes" if abs(value) <= target else "NO"
        out.append({"goal": name, "value": value, "target": target, "met": met})
    return out
