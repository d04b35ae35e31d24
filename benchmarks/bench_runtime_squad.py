"""SQuAD through the runtime against fake quantization: the same questions, paired per profile.

Runs ``bitswitch eval --task squad`` twice with the same settings, ``--engine fake`` and ``--engine
runtime`` (each resumable in its own output directory), then pairs the two engines' per-question
scores for every profile: F1 / EM of each, the mean difference runtime - fake with its standard
error, the fraction of identical answers, and answer perplexity of each.

    python benchmarks/bench_runtime_squad.py --limit 200 --profiles w8 w4g32 w4g32a8 \
        --runs runs/rt-squad --out benchmarks/results/runtime_squad.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import paired_scores, per_question, rel, write

from bitswitch.io import atomic_write_text
from bitswitch.results import markdown_table

ROOT = Path(__file__).resolve().parents[1]
SQUAD = ROOT.parent / "shared" / "data" / "squad-v1.1" / "dev-part1-v1.1.json"
COLUMNS = ["profile", "n", "f1_fake", "f1_runtime", "d_f1", "se_d_f1", "em_fake", "em_runtime", "d_em",
           "same_answer", "answer_ppl_fake", "answer_ppl_runtime", "goal_met"]


def pair(fake: dict[str, dict], runtime: dict[str, dict]) -> dict:
    """Paired differences (runtime - fake, in points) over the questions both answered."""
    out = paired_scores(fake, runtime, "fake", "runtime")
    ids = [i for i in fake if i in runtime]
    out["same_answer"] = sum(fake[i]["prediction"] == runtime[i]["prediction"] for i in ids) / len(ids)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapters", default=None)
    ap.add_argument("--data", default=str(SQUAD))
    ap.add_argument("--limit", type=int, default=200, help="questions, a seeded sample stratified over articles")
    ap.add_argument("--profiles", nargs="+", default=["w8", "w4g32", "w4g32a8"])
    ap.add_argument("--runs", default="runs/rt-squad", help="the two evals' output directories: RUNS-fake, RUNS-runtime")
    ap.add_argument("--goal", type=float, default=0.5, help="|F1 runtime - F1 fake| at most this, in points")
    ap.add_argument("--weight-grid", default="independent", choices=["independent", "nested"],
                    help="nested for adapters trained with --weight-grid nested (both engines use it)")
    ap.add_argument("--runtime-limit", type=int, default=None,
                    help="the runtime evaluates only the first N of the --limit questions (a prefix of the same "
                         "stratified order; a multiple of --batch-size keeps the batches, so the padding, equal); "
                         "pairs are over those N. For CPUs where bf16 is slow (no AVX-512 BF16)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="eval's default when left out")
    ap.add_argument("--batch-size", type=int, default=None, help="eval's default when left out")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.runtime_limit is not None and not 0 < a.runtime_limit <= a.limit:
        ap.error(f"--runtime-limit must be in 1..--limit ({a.limit}), got {a.runtime_limit}")
    records = {}
    for engine in ("fake", "runtime"):
        out = Path(f"{a.runs}-{engine}")
        cmd = [sys.executable, "-m", "bitswitch.cli", "eval", "--model", a.model, "--task", "squad", "--data",
               rel(a.data), "--limit", str(a.runtime_limit if engine == "runtime" and a.runtime_limit else a.limit),
               "--profiles", *a.profiles, "--engine", engine, "--out", str(out)]
        if a.adapters:
            cmd += ["--adapters", a.adapters]
        if a.weight_grid != "independent":
            cmd += ["--weight-grid", a.weight_grid]
        for flag, value in (("--max-new-tokens", a.max_new_tokens), ("--batch-size", a.batch_size)):
            if value is not None:
                cmd += [flag, str(value)]
        print(" ".join(cmd[2:]), flush=True)
        if subprocess.run(cmd).returncode != 0:
            return 2
        records[engine] = {r["profile"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    rows = []
    for p in a.profiles:
        fake = per_question(Path(f"{a.runs}-fake") / f"predictions-{p}.jsonl")
        runtime = per_question(Path(f"{a.runs}-runtime") / f"predictions-{p}.jsonl")
        row = {"profile": p, **pair(fake, runtime), "answer_ppl_fake": None, "answer_ppl_runtime": None}
        if not a.runtime_limit or a.runtime_limit == a.limit:   # otherwise over other questions: not comparable
            row["answer_ppl_fake"] = records["fake"][p]["answer_ppl"]
            row["answer_ppl_runtime"] = records["runtime"][p]["answer_ppl"]
        row["goal_met"] = abs(row["d_f1"]) <= a.goal
        rows.append(row)
    write(a.out, rows, COLUMNS, model=a.model, adapters=a.adapters and rel(a.adapters), data=rel(a.data),
          limit=a.limit, runtime_limit=a.runtime_limit, order="stratified", goal_abs_d_f1=a.goal,
          weight_grid=a.weight_grid, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size)
    if a.out:
        atomic_write_text(Path(a.out).with_suffix(".md"),
            f"# SQuAD through the runtime vs fake quantization ({a.model})\n\n"
            f"`python benchmarks/bench_runtime_squad.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
            "d_f1, d_em: runtime - fake in points over the same questions; se_d_f1: its standard error.\n\n"
            + markdown_table(rows, COLUMNS) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
