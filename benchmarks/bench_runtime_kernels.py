"""Weight-only kernels of the runtime against fp32 and bf16 F.linear, on SmolLM2-135M's decode shapes.

For each thread count, (K, N) = (in, out) of the model's units (576x576 q/o, 576x192 k/v, 576x1536
gate/up, 1536x576 down) and batch M (decode: 1 token per sequence): the median time of one
``y = x @ W.T`` as fp32 F.linear, bf16 F.linear, the int8 kernel (``w8``, per channel) and the int4
kernel (``w4g32``), each through the runtime's packed weights (bf16 activations), and the ratio
of each median time to fp32's (below 1: faster; the JSON adds each minimum and the load average).
Random weights; timings only, no accuracy.

    python benchmarks/bench_runtime_kernels.py --out benchmarks/results/runtime_kernels.json

A measurement is the median time of single calls (``--calls``, at most ``--budget`` seconds): on a
shared machine a call that is descheduled moves one sample, not the median. Under 25 s with the
defaults. A 2-thread call needs both cores: on 2 cores loaded by other processes (load average
6.7 in the committed run) most 2-thread kernel calls took 8-20 ms, minimum included -- a wait for
the second thread to be scheduled, not the kernel -- so those rows say nothing about the kernels.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from common import write

import torch
import torch.nn.functional as F

from bitswitch.quant.config import WeightQuant
from bitswitch.runtime.pack import int4_available, pack_weight

SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576)]   # (K, N) of SmolLM2-135M's units


def call_us(fn, calls: int, budget_s: float) -> tuple[float, float]:
    """(median, min) time of one call in microseconds, over ``calls`` calls or ``budget_s`` seconds,
    whichever ends first (at least 11 calls), after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    end = time.perf_counter() + budget_s
    while len(times) < calls and (len(times) < 11 or time.perf_counter() < end):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6, min(times) * 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--budget", type=float, default=0.25, help="seconds per measurement at most")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    kernels = ["fp32", "bf16", "int8"] + (["int4"] if int4_available() else [])
    rows = []
    before, load = torch.get_num_threads(), os.getloadavg()
    try:
        for threads in a.threads:
            torch.set_num_threads(threads)
            for k, n in SHAPES:
                w = torch.randn(n, k, generator=g) * 0.05
                wb = w.to(torch.bfloat16)
                packed = {"int8": pack_weight(w, WeightQuant(8)), "int4": pack_weight(w, WeightQuant(4, 32))}
                assert packed["int8"].kind == "int8" and packed["int4"].kind in ("int4", "dequant")
                for m in a.batch:
                    x = torch.randn(m, k, generator=g)
                    xb = x.to(torch.bfloat16)
                    fns = {"fp32": lambda: F.linear(x, w), "bf16": lambda: F.linear(xb, wb),
                           "int8": lambda: packed["int8"].matmul(xb), "int4": lambda: packed["int4"].matmul(xb)}
                    with torch.inference_mode():
                        both = {kn: call_us(fns[kn], a.calls, a.budget) for kn in kernels}
                    us = {kn: t[0] for kn, t in both.items()}
                    row = {"threads": threads, "K": k, "N": n, "batch": m}
                    row.update({f"{kn}_us": us[kn] for kn in kernels})
                    row.update({f"{kn}_vs_fp32": us[kn] / us["fp32"] for kn in kernels if kn != "fp32"})
                    row.update({f"{kn}_min_us": both[kn][1] for kn in kernels})   # JSON only
                    rows.append(row)
    finally:
        torch.set_num_threads(before)
    cols = ["threads", "K", "N", "batch", *[f"{kn}_us" for kn in kernels],
            *[f"{kn}_vs_fp32" for kn in kernels if kn != "fp32"]]
    # the load average says how much of the 2-thread rows is the machine rather than the kernel
    write(a.out, rows, cols, load_avg_1m_before=load[0], load_avg_1m_after=os.getloadavg()[0],
          cores=os.cpu_count(), cpu=platform.processor() or platform.machine(), calls=a.calls,
          budget_s=a.budget, int4="w4g32 symmetric", int8="w8 symmetric per channel")


if __name__ == "__main__":
    main()
