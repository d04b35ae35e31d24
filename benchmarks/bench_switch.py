"""Switching cost and fake-quantized forward time on a model of gpt2's shape (random weights).

Goals: switching between two already-used profiles under 5 ms; forward at w8a8 and
w4a8 at most 1.3x the forward at fp, same batch, one run.

    python benchmarks/bench_switch.py [--batch 4 --seq 256 --repeat 5] --out benchmarks/results/switch.json
"""

from __future__ import annotations

import argparse

from common import timeit, write

import torch
from transformers import AutoModelForCausalLM, GPT2Config

import bitswitch as bs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    dev, dt = bs.models.resolve_device(a.device), bs.models.resolve_dtype(a.dtype)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config()).to(dev, dt).eval()
    bs.make_switchable(model)
    assert len([u for u in model.bitswitch.units if u != "head"]) == 48
    ids = torch.randint(0, 50257, (a.batch, a.seq), device=dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def forward():
        with torch.inference_mode():
            model(ids)
        sync()

    rows, fp_time = [], None
    for prof in ("fp", "w8a8", "w4a8", "w4g32a8"):
        bs.set_profile(model, prof)
        t = timeit(forward, a.repeat)
        fp_time = fp_time or t
        rows.append({"what": f"forward {prof}", "ms": t * 1e3, "vs_fp": t / fp_time})
    # both profiles' weights are cached now: a switch is a walk over the units
    def switch():
        bs.set_profile(model, "w8a8")
        bs.set_profile(model, "w4a8")
    t = timeit(switch, repeat=50, warmup=2) / 2
    rows.append({"what": "switch w8a8 <-> w4a8 (cached)", "ms": t * 1e3, "vs_fp": None})
    bs.switching.clear_caches(model)
    t0 = timeit(lambda: (bs.switching.clear_caches(model), bs.set_profile(model, "w6a8"), forward()), 3, 0)
    rows.append({"what": "first forward at a new profile (quantizes 48 units)", "ms": t0 * 1e3,
                 "vs_fp": t0 / fp_time})
    write(a.out, rows, ["what", "ms", "vs_fp"], device=str(dev), dtype=a.dtype,
          batch=a.batch, seq=a.seq, model="gpt2-shape random (124M, 48 units)")


if __name__ == "__main__":
    main()
