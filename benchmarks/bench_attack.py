"""Adversarial robustness across precisions, and random precision inference (RPI) as a defence.

On SmolLM2-135M with the switchable (shared) adapters: HotFlip and typo attacks crafted at each of
``--profiles`` and replayed at each (the transferability matrix), and RPI over ``--rpi`` with an
adaptive attacker (EOT over ``--eot`` precision draws). Prints the tables and writes JSON.

    python benchmarks/bench_attack.py --adapters runs/cache/train-0ce8c3c621de/adapters \\
        --limit 100 --attacks hotflip typo --budget 1 --profiles fp w8a8 w6a8 w4a8 --rpi w8a8 w4a8 --eot 2 \\
        --rpi-matrix full --runs runs/bench_attack100 --out benchmarks/results/attack/attack100-b1.json

(the run behind docs/results.md; on 2 CPU cores a question costs 3-4 s to attack at a fixed profile
with one edit, twice that against RPI with EOT 2, and a replay cell of 100 questions about 1.7 min).
Every adversarial file and replay cell is kept under ``--runs``: a rerun with more profiles or
``--rpi-matrix full`` computes only what is new.

Budgets default to the attack defaults, 3 flipped question tokens (hotflip) and 4 character edits (typo);
``--budget N`` sets both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import rel, write

from bitswitch.robust.attack_runner import AttackConfig, run_attack

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad-v1.1"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapters", default="runs/demo/train/adapters")
    ap.add_argument("--data", default=rel(SHARED / "dev-part1-v1.1.json"))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--attacks", nargs="+", default=["hotflip", "typo"])
    ap.add_argument("--profiles", nargs="+", default=["fp", "w8a8", "w6a8", "w4a8"])
    ap.add_argument("--rpi", nargs="+", default=["fp", "w8a8", "w6a8", "w4a8"])
    ap.add_argument("--rpi-p", type=float, default=0.5)
    ap.add_argument("--rpi-granularity", default="forward")
    ap.add_argument("--rpi-matrix", default="diagonal")
    ap.add_argument("--eot", type=int, default=4)
    ap.add_argument("--budget", type=int, default=None, help="token flips / character edits (default: hotflip 3, typo 4)")
    ap.add_argument("--candidates", type=int, default=None, help="per step (default: hotflip 8, typo 12)")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runs", default="runs/bench_attack", help="where the attack runs write (resumable)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    # one run for every attack: one model load, and the clean replays are shared
    cfg = AttackConfig(model=a.model, data=a.data, out=a.runs, attacks=a.attacks, craft=a.profiles,
                       eval=a.profiles, adapters=a.adapters, rpi=a.rpi or None, rpi_p=a.rpi_p,
                       rpi_granularity=a.rpi_granularity, rpi_matrix=a.rpi_matrix, eot=a.eot, limit=a.limit,
                       budget=a.budget, candidates=a.candidates, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size,
                       device=a.device)
    res = run_attack(cfg, log=print)
    print(res["table"])
    rows, summaries = [{"attack": "-", "craft": "(clean)", **{c: v["f1"] for c, v in res["clean"].items()}}], {}
    for attack in a.attacks:
        r = res["results"][attack]
        for craft, cols in r["matrix"].items():
            rows.append({"attack": attack, "craft": craft, **{c: v["f1"] for c, v in cols.items()},
                         "mean_edits": r["craft_stats"][craft]["mean_edits"],
                         "success_rate": cols.get(craft, {}).get("success_rate")})
        summaries[attack] = r["rpi_summary"]
    cols = ["attack", "craft", *a.profiles, *(["rpi"] if a.rpi else []), "mean_edits", "success_rate"]
    print()
    srows = [{"attack": k, **(v or {})} for k, v in summaries.items()]
    write(None, srows, ["attack", "clean_f1_fixed_mean", "clean_f1_rpi", "clean_cost", "clean_cost_se",
                        "attacked_f1_fixed_mean", "attacked_f1_rpi_adaptive", "recovered_adaptive",
                        "recovered_adaptive_se", "attacked_f1_rpi_transfer", "recovered_transfer",
                        "recovered_transfer_se"])
    print()
    write(a.out, rows, cols, model=a.model, adapters=a.adapters, limit=a.limit, rpi=a.rpi, rpi_p=a.rpi_p,
          rpi_granularity=a.rpi_granularity, eot=a.eot, budgets={k: res["results"][k]["params"] for k in a.attacks},
          clean={k: v for k, v in res["clean"].items()}, rpi_summary=summaries, runs=a.runs,
          command=res["command"], results_json=f"{a.runs}/results.json")


if __name__ == "__main__":
    main()
