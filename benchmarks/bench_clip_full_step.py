"""Seconds per training step on smollm2-135m (2 threads): LoRA vs LoRA+learn_clip vs full QAT (+LoRA),
interleaved on one loaded model and one fixed batch so every mode sees the same machine load.

Usage: python benchmarks/bench_clip_full_step.py BATCH MAX_LENGTH ROUNDS   (e.g. 4 256 3; round 0 warms up)
"""
import statistics
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(2)
import bitswitch as bs
from bitswitch.adapters import AdapterConfig, add_adapters, add_clips, adapter_parameters, clip_parameters, freeze_base
from bitswitch.quant.clipping import project_
from bitswitch.switching import set_profile
from bitswitch.train.data import collate, squad_examples
from bitswitch.train.full import base_parameters
from bitswitch.train.losses import cross_entropy, supervised_forward

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad-v1.1" / "train-subset-v1.1.json"
B, L, ROUNDS = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
model, tok = bs.load_model("smollm2-135m", device="cpu")
bs.make_switchable(model, keying="shared")
ex = squad_examples(tok, str(DATA), 64, L)[0]
batch = collate(ex[:B], tok.pad_token_id or 0, torch.device("cpu"))
print("batch", tuple(batch["input_ids"].shape), flush=True)
add_adapters(model, ["w4g32"], AdapterConfig())
add_clips(model, ["w4g32"])
freeze_base(model)
set_profile(model, "w4g32")
model.train()
lora, clips = list(adapter_parameters(model)), list(clip_parameters(model))
base = [p for _, p in base_parameters(model)]
modes = {"lora": (lora, [], []), "lora+clip": (lora, clips, []), "full+lora": (lora, [], base)}
opts = {m: torch.optim.AdamW([{"params": g} for g in gs if g], lr=1e-9) for m, gs in modes.items()}
times = {m: [] for m in modes}
order = ["lora", "lora", "lora+clip", "full+lora"]   # lora twice: its weight cache is refilled after a full step
for r in range(ROUNDS):
    for i, m in enumerate(order):
        a, c, w = modes[m]
        for p in clips + base:
            p.requires_grad_(False)
        for p in c + w:
            p.requires_grad_(True)
        t = time.perf_counter()
        logits, targets, _ = supervised_forward(model, batch)
        loss = cross_entropy(logits, targets)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opts[m].step(); opts[m].zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        for p in c:
            project_(p)
        dt = time.perf_counter() - t
        if r and i:   # round 0 warms up (optimizer state, caches); the first lora refills the cache
            times[m].append(dt)
        print(r, m, round(dt, 2), "fwd", round(t1 - t, 2), "bwd", round(t2 - t1, 2), "opt", round(t3 - t2, 2), flush=True)
for m, ts in times.items():
    print(f"{m}: median {statistics.median(ts):.2f} s/step over {len(ts)} (all {[round(x, 2) for x in ts]})")
