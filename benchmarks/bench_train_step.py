"""Training step speed and peak memory: plain peft LoRA against bitswitch's switchable QAT.

Every row runs in a fresh process (so peak resident memory is its own), on the same seeded
batches of SQuAD training examples, for ``--steps`` steps after one warm-up step:

- ``peft-lora-fp``: peft LoRA (r=8 on q/k/v/o/gate/up/down), HF loss over all positions;
- ``bitswitch-fp``: bitswitch at fp, one adapter, LM head only at supervised positions;
- ``bitswitch-fp-fullhead``: the same with the LM head at every position (the saving of the above);
- ``bitswitch-random``: the ``random`` schedule over fp, w8a8, w6a8, w4a8;
- ``bitswitch-random-distill``: the same with self-distillation from the fp pass;
- ``bitswitch-random-ckpt``: ``random`` with activation checkpointing (``--checkpointing``).

Goals: random QAT step at most 1.25x the fp LoRA step; QAT peak memory at most 1.3x the
fp LoRA peak, with distillation at most 1.6x. With ``--fit-batch 4`` every row also runs at
batch 4; peak memory is fitted as base + slope x padded tokens of the widest batch, which gives the
largest batch of ``--max-length`` rows that fits ``--budget-gib`` (an extrapolation, stated as such).

    python benchmarks/bench_train_step.py --steps 30 --batch-size 8 --fit-batch 4 \
        --rows peft-lora-fp bitswitch-random bitswitch-random-distill bitswitch-random-ckpt --out benchmarks/results/train_step_30.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import rel, write

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "squad-v1.1" / "train-subset-v1.1.json"
ROWS = ["peft-lora-fp", "bitswitch-fp", "bitswitch-fp-fullhead", "bitswitch-random", "bitswitch-random-distill",
        "bitswitch-random-ckpt"]


def vm_hwm_mb() -> float:
    """This process's own peak resident set (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(row: str, a) -> dict:
    import torch

    import bitswitch as bs
    from bitswitch.adapters import adapter_parameters
    from bitswitch.train.data import LengthGroupedBatches, collate, squad_examples
    from bitswitch.train.losses import cross_entropy, distill_kl, supervised_forward
    from bitswitch.train.schedules import Schedule

    torch.manual_seed(0)
    model, tok = bs.load_model(a.model, device=a.device)
    examples = squad_examples(tok, a.data, 2000, a.max_length)
    batches = LengthGroupedBatches([len(e) for e in examples], a.batch_size, None, seed=0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    if row == "peft-lora-fp":
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        if model.config.model_type == "gpt2":
            targets = ["c_attn", "c_proj", "c_fc"]
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets,
                                                 fan_in_fan_out=model.config.model_type == "gpt2"))
        params = [p for p in model.parameters() if p.requires_grad]

        def loss_fn(batch, step):
            return model(**batch).loss
    else:
        bs.make_switchable(model, keying="shared")
        profiles = ["fp"] if row.startswith("bitswitch-fp") else ["fp", "w8a8", "w6a8", "w4a8"]
        bs.add_adapters(model, profiles, bs.AdapterConfig(r=8, alpha=16))
        bs.freeze_base(model)
        params = list(adapter_parameters(model))
        sched = Schedule("random", profiles, a.steps + 1, seed=0)
        distill = row.endswith("distill")
        if row.endswith("ckpt"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

        def loss_fn(batch, step):
            if row.endswith("fullhead"):
                bs.set_profile(model, "fp")
                return model(**batch).loss
            teacher = None
            if distill:
                with torch.no_grad(), bs.use_profile(model, "fp"):
                    teacher = supervised_forward(model, batch)[0]
            bs.set_profile(model, sched.at(step)[0])
            logits, targets, _ = supervised_forward(model, batch)
            loss = cross_entropy(logits, targets)
            return loss + distill_kl(logits, teacher) if teacher is not None else loss
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4)
    times, tokens, widest = [], 0, 0
    for step in range(a.steps + 1):
        batch = collate([examples[i] for i in batches.batch(step)], pad, model.device)
        widest = max(widest, batch["input_ids"].numel())
        t0 = time.perf_counter()
        loss_fn(batch, step).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:  # step 0 warms up (first-touch allocations, weight fake-quant caches)
            times.append(time.perf_counter() - t0)
            tokens += int(batch["attention_mask"].sum())
    return {"row": row, "steps": a.steps, "batch_size": a.batch_size, "seconds_per_step": sum(times) / len(times),
            "tokens_per_s": tokens / sum(times), "peak_rss_mb": vm_hwm_mb(), "max_batch_tokens": widest}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=rel(SHARED))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    ap.add_argument("--fit-batch", type=int, default=None,
                    help="also run every row at this batch size (--fit-steps steps) and fit peak memory as "
                         "base + slope x padded batch tokens, to give the largest batch that fits --budget-gib")
    ap.add_argument("--fit-steps", type=int, default=5)
    ap.add_argument("--budget-gib", type=float, default=16.0)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(child(a.child, a)))
        return
    def run(row, batch_size, steps):
        args = [sys.executable, __file__, "--child", row, "--model", a.model, "--data", a.data, "--steps",
                str(steps), "--batch-size", str(batch_size), "--max-length", str(a.max_length), "--device", a.device]
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"row {row} (batch {batch_size}) failed:\n{proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.split("RESULT ", 1)[1])
        print(f"{row} batch {batch_size}: {r['seconds_per_step']:.2f} s/step, {r['peak_rss_mb']:.0f} MiB", flush=True)
        return r

    rows = []
    for row in a.rows:
        rows.append(run(row, a.batch_size, a.steps))
        if a.fit_batch:
            small = run(row, a.fit_batch, a.fit_steps)
            # peak = base + slope * widest padded batch: two points per row
            slope = (rows[-1]["peak_rss_mb"] - small["peak_rss_mb"]) / (rows[-1]["max_batch_tokens"] - small["max_batch_tokens"])
            base = rows[-1]["peak_rss_mb"] - slope * rows[-1]["max_batch_tokens"]
            rows[-1].update(fit_mb_per_token=slope, fit_base_mb=base, fit_small_peak_mb=small["peak_rss_mb"],
                            largest_batch_in_budget=int((a.budget_gib * 1024 - base) / (slope * a.max_length)))
    base = rows[0]
    for r in rows:
        r["time_vs_first"] = r["seconds_per_step"] / base["seconds_per_step"]
        r["peak_vs_first"] = r["peak_rss_mb"] / base["peak_rss_mb"]
    cols = ["row", "seconds_per_step", "tokens_per_s", "peak_rss_mb", "time_vs_first", "peak_vs_first"]
    write(a.out, rows, cols + (["largest_batch_in_budget"] if a.fit_batch else []), budget_gib=a.budget_gib,
          model=a.model, steps=a.steps, batch_size=a.batch_size, device=a.device)


if __name__ == "__main__":
    main()
