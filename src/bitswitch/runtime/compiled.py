"""The compiled decode step (gpt-fast's recipe): ``torch.compile`` of the one-token forward.

Eager decoding of a small model is bound by Python (hundreds of small ops per token, each a
dispatch), not by the int4 / int8 kernels; inductor fuses the norms, rotary positions and casts
around the kernels into a few C++ loops. Only steps of one column run compiled: the prefill (many
columns, once per request) and speculative verification stay eager, so one graph per batch size
and profile is traced, with the cache position dynamic.

``emulate_precision_casts`` makes inductor round every bf16 cast as eager does (by default a fused
kernel keeps float32 between casts), so the compiled step computes what the eager one does up to
float32 accumulation order (greedy tokens the same in tests and on SmolLM2 checked by hand).

Switching precision stays module state: a unit's ``active`` spec is guarded, so each uniform profile
is compiled once on first use (a minute or so for SmolLM2 on 2 cores) and reused afterwards, and
per-token alternation between compiled profiles costs nothing more. Per-unit mixes set at run time
(``Runtime.set_unit_profiles``: dynamic routing) would recompile for every combination: they run eager.
"""

from __future__ import annotations

import os
import shutil

import torch

from ..errors import BitswitchError

MODES = ("auto", "on", "off")
ENV = "BITSWITCH_COMPILE"   # overrides "auto" (e.g. off in the test suite, where compile time dominates)


def compiler_available() -> bool:
    """inductor's CPU code needs a C++ compiler on PATH (``CXX`` or one of the usual names)."""
    names = [os.environ.get("CXX"), "g++", "clang++", "c++"]
    return any(n and shutil.which(n) for n in names)


def resolve(mode: str, device: torch.device | str = "cpu") -> bool:
    """Whether to compile: ``on`` (a clear error without a compiler), ``off``, or ``auto`` (on where a
    compiler exists, unless ``BITSWITCH_COMPILE`` says otherwise)."""
    if mode not in MODES:
        raise BitswitchError(f"compile must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        env = os.environ.get(ENV, "auto").strip().lower()
        if env not in MODES:
            raise BitswitchError(f"{ENV} must be one of {', '.join(MODES)}, got {env!r}")
        mode = env
    device = torch.device(device)
    if mode == "on" and device.type == "cpu" and not compiler_available():
        raise BitswitchError("--compile on needs a C++ compiler (g++ or clang++) on PATH for torch.compile: "
                             "install one or use --compile off")
    if mode == "auto":
        return device.type == "cuda" or compiler_available()
    return mode == "on"


def compile_step(forward):
    """``forward(ids, cache, pos, last_only)`` compiled for one-column steps."""
    return torch.compile(forward, dynamic=None, options={"emulate_precision_casts": True})
