"""``bitswitch demo``: the main job, train switchable adapters on SQuAD and evaluate every profile."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: train switchable adapters on SQuAD, evaluate every profile")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--train-data", default="squad", help="SQuAD training file/dir (default: hub 'squad')")
    p.add_argument("--dev-data", default="squad", help="SQuAD dev file/dir (default: hub 'squad')")
    p.add_argument("--profiles", nargs="+", default=["fp", "w8a8", "w6a8", "w4a8"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-limit", type=int, default=50, help="dev questions to evaluate (sampled across articles)")
    p.add_argument("--recipe", default="auto", help="auto (the best recipe whose estimate, timed here, fits "
                   "--time-budget), gguf (llama.cpp's block grids; w6 runs as w5), gptq, lora, learn-clip or full")
    p.add_argument("--time-budget", type=float, default=20.0, metavar="MINUTES",
                   help="what --recipe auto must fit, timing included (default 20)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/demo")


def run(a, argv) -> int:
    from ..demo import run_demo

    res = run_demo(model=a.model, train_data=a.train_data, dev_data=a.dev_data, profiles=a.profiles,
                   steps=a.steps, batch_size=a.batch_size, lr=a.lr, eval_limit=a.eval_limit, device=a.device,
                   out=a.out, recipe=a.recipe, time_budget=a.time_budget, argv=argv,
                   log=lambda m: print(m, file=sys.stderr))
    print(res["table"])
    print(f"\nrecipe: {res['recipe']} ({res['plan']})\nresults: {res['results']}\nplot: {res['plot']}")
    return 0
