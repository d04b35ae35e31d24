"""Nested against independent weight grids after the same switchable training, on SQuAD.

Trains the same switchable LoRA twice (``bitswitch train``, identical flags and seed) on the
independent grids (each width its own scale) and on the nested grid (``--set weight_grid=nested``:
every width the top bits of one int8 master, what ``export --nested`` and the runtime run), then
evaluates both on the same dev questions at every quantized profile (fake quantization) and pairs
them per question: F1 / EM of each, the mean difference nested - independent with its standard
error, and answer perplexity of each. Each step resumes from its own directory under ``--runs``.

    python benchmarks/bench_nested_squad.py --limit 400 --runs runs/nvi \
        --out benchmarks/results/nested_squad.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import add_switchable_training_args, paired_scores, per_question, rel, write

from bitswitch.io import atomic_write_text
from bitswitch.results import markdown_table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
GRIDS = ("independent", "nested")
COLUMNS = ["profile", "n", "f1_independent", "f1_nested", "d_f1", "se_d_f1", "significant", "em_independent",
           "em_nested", "d_em", "answer_ppl_independent", "answer_ppl_nested"]


def pair(ind: dict[str, dict], nest: dict[str, dict]) -> dict:
    """Paired differences (nested - independent, in points) over the questions both answered."""
    out = paired_scores(ind, nest, "independent", "nested")
    out["significant"] = abs(out["d_f1"]) > 2 * out["se_d_f1"]
    return out


def run(cmd: list[str]) -> None:
    print(" ".join(cmd[2:]), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    add_switchable_training_args(ap, DATA)
    ap.add_argument("--profiles", nargs="+", default=["w8a8", "w6a8", "w4a8"], help="evaluated and paired")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runs", default="runs/nested-squad", help="RUNS/train-GRID, RUNS/eval-GRID")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    runs = Path(a.runs)
    records, preds = {}, {}
    for grid in GRIDS:
        train = runs / f"train-{'ind' if grid == 'independent' else grid}"
        cmd = [sys.executable, "-m", "bitswitch.cli", "train", "--model", a.model, "--data", rel(a.train),
               "--profiles", *a.train_profiles, "--schedule", "random", "--keying", "shared", "--steps",
               str(a.steps), "--batch-size", str(a.batch_size), "--lr", str(a.lr), "--seed", "0", "--device",
               a.device, "--save-every", "20", "--set", f"max_length={a.max_length}", "--set",
               f"warmup_steps={max(1, a.steps // 10)}"]
        if grid == "nested":
            cmd += ["--set", "weight_grid=nested"]
        if not (train / "adapters" / "adapter_config.json").exists():
            run(cmd + ["--out", str(train)])
        out = runs / f"eval-{grid}"
        # the adapters carry their grid (adapter_config.json): eval takes it from there
        run([sys.executable, "-m", "bitswitch.cli", "eval", "--model", a.model, "--adapters",
             str(train / "adapters"), "--task", "squad", "--data", rel(a.dev), "--limit", str(a.limit),
             "--profiles", *a.profiles, "--max-new-tokens", str(a.max_new_tokens), "--batch-size",
             str(a.eval_batch_size), "--seed", "0", "--device", a.device, "--out", str(out)])
        records[grid] = {r["profile"]: r for r in json.loads((out / "results.json").read_text())["records"]}
        preds[grid] = out
    rows = []
    for p in a.profiles:
        row = {"profile": p, **pair(per_question(preds["independent"] / f"predictions-{p}.jsonl"),
                                    per_question(preds["nested"] / f"predictions-{p}.jsonl"))}
        for grid in GRIDS:
            row[f"answer_ppl_{grid}"] = records[grid][p]["answer_ppl"]
        rows.append(row)
    write(a.out, rows, COLUMNS, model=a.model, train=rel(a.train), dev=rel(a.dev), limit=a.limit,
          order="stratified", steps=a.steps, batch_size=a.batch_size, lr=a.lr, train_profiles=a.train_profiles)
    if a.out:
        atomic_write_text(Path(a.out).with_suffix(".md"),
            f"# Nested vs independent grids after the same switchable training ({a.model})\n\n"
            f"`python benchmarks/bench_nested_squad.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
            "d_f1, d_em: nested - independent in points over the same questions; se_d_f1: its standard error; "
            "significant: |d_f1| > 2 se.\n\n" + markdown_table(rows, COLUMNS) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
