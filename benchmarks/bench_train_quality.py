"""Quality of switchable QAT on real data: one ``random``-schedule run over the profiles against one
``fixed``-schedule (dedicated) run per profile, each evaluated on the same SQuAD dev questions
(sampled across articles: the evaluation's default question order).

Goals: w8a8 within 1 F1 of fp, w6a8 within 2, w4a8 (group-wise weights allowed) within 5;
the switchable model within 1 F1 of each dedicated model.

    python benchmarks/bench_train_quality.py --device cuda --steps 600 --dedicated-steps 150 \
        --out benchmarks/results/train_quality.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import rel, write

from bitswitch.evaluate.config import EvalConfig
from bitswitch.evaluate.runner import run_eval
from bitswitch.train.config import TrainConfig
from bitswitch.train.trainer import train

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad-v1.1"


def run(name, a, profiles, schedule, steps, extra=None):
    out = Path(a.runs) / name
    cfg = TrainConfig(model=a.model, data=a.train, profiles=profiles, schedule=schedule, steps=steps,
                      batch_size=a.batch_size, lr=a.lr, warmup_steps=max(1, steps // 20), save_every=steps,
                      device=a.device, dtype=a.dtype, out=str(out / "train"), max_length=a.max_length,
                      seed=a.seed, **(extra or {}))
    if not (out / "train" / "summary.json").is_file():
        train(cfg, log=print)
    summary = json.loads((out / "train" / "summary.json").read_text())
    ev = EvalConfig(model=a.model, task="squad", data=a.dev, adapters=str(out / "train" / "adapters"),
                    profiles=profiles, limit=a.limit, batch_size=a.eval_batch_size, device=a.device,
                    dtype=a.dtype, out=str(out / "eval"))
    res = run_eval(ev, log=print)
    return [{"run": name, "schedule": schedule, "steps": steps, **{k: r[k] for k in ("profile", "em", "f1",
            "answer_ppl", "n")}, "train_tokens_per_s": summary["last"].get("tokens_per_s")}
            for r in res["records"]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--train", default=rel(SHARED / "train-subset-v1.1.json"))
    ap.add_argument("--dev", default=rel(SHARED / "dev-part1-v1.1.json"))
    ap.add_argument("--profiles", nargs="+", default=["fp", "w8a8", "w6a8", "w4a8", "w4g32a8"])
    ap.add_argument("--steps", type=int, default=600, help="steps of the switchable (random) run")
    ap.add_argument("--dedicated-steps", type=int, default=150, help="steps of each fixed run (0 = skip)")
    ap.add_argument("--variants", nargs="*", default=[], help="extra random runs: distill, shared")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain random run (one adapter per profile)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="runs/train_quality")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    rows = [] if a.no_plain else run("switchable-random", a, a.profiles, "random", a.steps)
    for v in a.variants:
        extra = {"distill": {"distill": 1.0}, "shared": {"keying": "shared"}}[v]
        rows += run(f"switchable-random-{v}", a, a.profiles, "random", a.steps, extra)
    if a.dedicated_steps:
        for p in a.profiles:
            rows += run(f"dedicated-{p}", a, [p], "fixed", a.dedicated_steps)
    write(a.out, rows, ["run", "profile", "steps", "em", "f1", "answer_ppl", "n", "train_tokens_per_s"],
          model=a.model, limit=a.limit, lr=a.lr, batch_size=a.batch_size)


if __name__ == "__main__":
    main()
