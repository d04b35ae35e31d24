"""Low-bit training recipes side by side: the same switchable training under each recipe, then SQuAD
and WikiText at every profile, paired on the same questions.

Recipes (each one ``bitswitch train`` with identical flags and seed, plus its own):

- ``lora``: today's recipe, LoRA adapters on the frozen round-to-nearest base;
- ``learn-clip``: ``--learn-clip``, a clip factor per output channel / group and width, learned
  with the adapters;
- ``full``: ``--train-base full``, switchable QAT of the block units' weights as well as the adapters;
- ``gptq``: the frozen base rounded by GPTQ at every width the profiles use (``bitswitch prepare
  --gptq``, calibrated on training-set prompts, never dev text), then LoRA as in ``lora``;
- ``recon``: the frozen base given learned grids by block-wise reconstruction at the widths of
  ``--recon-profiles`` (``bitswitch prepare --recon``, calibrated on training-set paragraphs), then
  LoRA as in ``lora``.

Each trained model is evaluated on ``--limit`` SQuAD dev questions (a seeded sample stratified over
articles, the same for every recipe) and on the first ``--wikitext-tokens`` of WikiText-2 test, at
every profile. Per (recipe, profile): F1 / EM, the F1 drop from the same recipe's fp profile (paired,
with its standard error), the F1 difference from ``lora`` at the same profile (paired), WikiText PPL
and its ratio to the recipe's fp, and the recipe's training time (the sum of its step times).
Every step resumes from its own directory under ``--runs``.

    python benchmarks/bench_recipes.py --recipes lora learn-clip full --limit 400 --runs runs/recipes \
        --out benchmarks/results/recipes.json
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
RECIPES = {"lora": [], "learn-clip": ["--learn-clip"], "full": ["--train-base", "full"], "gptq": [], "recon": []}
COLUMNS = ["recipe", "profile", "n", "f1", "em", "drop_from_fp", "se_drop", "d_f1_vs_lora", "se_vs_lora",
           "ppl", "ppl_ratio_fp", "train_s"]


def run(cmd: list[str]) -> None:
    print(" ".join(cmd[2:]), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(2)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bitswitch.cli", *args]


def train_seconds(train_dir: Path) -> float:
    """The sum of the run's step times (metrics.jsonl): what the recipe's training cost, resumes aside."""
    rows = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return round(sum(float(r.get("seconds", 0)) for r in rows if "step" in r), 1)


def asym(a) -> list[str]:
    return ["--weight-asym"] if a.weight_asym else []


def gptq_base(a, runs: Path) -> str:
    """A prepared model directory: SmolLM2 with GPTQ roundings for every weight width of the profiles."""
    out = runs / "gptq-base"
    if not (out / "config.json").is_file():
        run(cli("prepare", "--model", a.model, "--gptq", *[p for p in a.profiles if p != "fp"], "--calib-data",
                rel(a.train), "--calib-questions", str(a.calib_questions), "--gptq-hessians", "fp",
                "--rotate", "none", *asym(a), "--device", a.device, "--out", str(out)))
    return str(out)


def recon_base(a, runs: Path) -> str:
    """A prepared model directory: SmolLM2 with learned grids for every weight width of --recon-profiles."""
    out = runs / "recon-base"
    if not (out / "config.json").is_file():
        run(cli("prepare", "--model", a.model, "--recon", *a.recon_profiles, "--calib-data", rel(a.train),
                "--recon-seqs", str(a.recon_seqs), "--recon-epochs", str(a.recon_epochs), "--recon-lr",
                str(a.recon_lr), "--recon-scale-lr", str(a.recon_scale_lr), "--recon-init", a.recon_init,
                *asym(a), "--device", a.device, "--out", str(out)))
    return str(out)


def train_and_eval(a, recipe: str, runs: Path) -> dict:
    """Train ``recipe`` (resumable), evaluate it on SQuAD and WikiText; returns the eval directories."""
    model = {"gptq": gptq_base, "recon": recon_base}[recipe](a, runs) if recipe in ("gptq", "recon") else a.model
    train = runs / f"train-{recipe}"
    if (train / "checkpoint" / "step.json").is_file() and not (train / "summary.json").is_file():
        run(cli("train", "--resume", str(train)))   # an interrupted run continues bit-exact
    if not (train / "summary.json").is_file():
        run(cli("train", "--model", model, "--data", rel(a.train), "--profiles", *a.train_profiles, "--schedule",
                "random", "--keying", "shared", "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--lr",
                str(a.lr), "--seed", "0", "--device", a.device, "--save-every", "20", "--set",
                f"max_length={a.max_length}", "--set", f"warmup_steps={max(1, a.steps // 10)}", *RECIPES[recipe],
                *(["--set", "weight_symmetric=false"] if a.weight_asym else []),
                "--out", str(train)))
    if recipe == "full":
        model = str(train / "model")   # the trained weights, with the adapters beside them
    common = ["--model", model, "--adapters", str(train / "adapters"), "--profiles", *a.profiles, "--seed", "0",
              *asym(a),
              "--device", a.device]
    squad, wiki = runs / f"squad-{recipe}", runs / f"wikitext-{recipe}"
    run(cli("eval", *common, "--task", "squad", "--data", rel(a.dev), "--limit", str(a.limit), "--max-new-tokens",
            str(a.max_new_tokens), "--batch-size", str(a.eval_batch_size), "--out", str(squad)))
    run(cli("eval", *common, "--task", "wikitext", "--data", rel(a.wikitext), "--max-tokens", str(a.wikitext_tokens),
            "--window", str(a.window), "--out", str(wiki)))
    return {"squad": squad, "wikitext": wiki, "train_s": train_seconds(train)}


def ppl_of(wiki_dir: Path) -> dict[str, float]:
    return {r["profile"]: r["ppl"] for r in json.loads((wiki_dir / "results.json").read_text())["records"]}


def rows_of(a, done: dict[str, dict]) -> list[dict]:
    rows = []
    for recipe, d in done.items():
        preds = {p: per_question(d["squad"] / f"predictions-{p}.jsonl") for p in a.profiles}
        ppl = ppl_of(d["wikitext"])
        for p in a.profiles:
            row = {"recipe": recipe, "profile": p, "train_s": d["train_s"], "ppl": ppl.get(p)}
            own = paired_scores(preds["fp"], preds[p], "fp", "q") if "fp" in preds else None
            row["n"] = own["n"] if own else len(preds[p])
            row["f1"] = own["f1_q"] if own else None
            row["em"] = own["em_q"] if own else None
            row["drop_from_fp"] = 0.0 - own["d_f1"] if own else None   # 0.0, not -0.0, at fp
            row["se_drop"] = own["se_d_f1"] if own else None
            if recipe != "lora" and "lora" in done:
                vs = paired_scores(per_question(done["lora"]["squad"] / f"predictions-{p}.jsonl"), preds[p],
                                   "lora", "r")
                row["d_f1_vs_lora"], row["se_vs_lora"] = vs["d_f1"], vs["se_d_f1"]
            row["ppl_ratio_fp"] = row["ppl"] / ppl["fp"] if row["ppl"] and ppl.get("fp") else None
            rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=["lora", "learn-clip", "full"])
    add_switchable_training_args(ap, DATA)
    ap.add_argument("--wikitext", default=str(DATA / "wikitext-2-raw" / "wiki.test.raw"))
    ap.add_argument("--profiles", nargs="+", default=["fp", "w8a8", "w6a8", "w4a8"], help="evaluated (fp first)")
    ap.add_argument("--wikitext-tokens", type=int, default=2048)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--calib-questions", type=int, default=64, help="gptq: training prompts that calibrate it")
    ap.add_argument("--recon-profiles", nargs="+", default=["w6a8", "w4a8"],
                    help="recon: the widths given learned grids (w8 rounds to nearest within noise)")
    ap.add_argument("--recon-seqs", type=int, default=64)
    ap.add_argument("--recon-epochs", type=int, default=2)
    ap.add_argument("--recon-lr", type=float, default=2e-4)
    ap.add_argument("--recon-scale-lr", type=float, default=2e-3)
    ap.add_argument("--recon-init", choices=["rtn", "search"], default="search")
    ap.add_argument("--weight-asym", action="store_true",
                    help="asymmetric weight grids (a zero point per channel / group) in every recipe's prepare, "
                         "training and evaluation")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--runs", default="runs/recipes")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if "lora" not in a.recipes:
        ap.error("--recipes must include lora: every other recipe is paired against it")
    if a.limit < 2 or a.steps < 1:
        ap.error("--limit must be at least 2 and --steps at least 1")
    runs = Path(a.runs)
    done = {r: train_and_eval(a, r, runs) for r in a.recipes}
    rows = rows_of(a, done)
    write(a.out, rows, COLUMNS, model=a.model, train=rel(a.train), dev=rel(a.dev), wikitext=rel(a.wikitext),
          limit=a.limit, order="stratified", steps=a.steps, batch_size=a.batch_size, lr=a.lr,
          train_profiles=a.train_profiles, wikitext_tokens=a.wikitext_tokens, window=a.window,
          weight_asym=a.weight_asym)
    if a.out:
        atomic_write_text(Path(a.out).with_suffix(".md"),
            f"# Low-bit training recipes ({a.model})\n\n"
            f"`python benchmarks/bench_recipes.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
            "drop_from_fp: the recipe's fp F1 minus this profile's, paired (se_drop its standard error); "
            "d_f1_vs_lora: this recipe minus lora at the same profile, paired; train_s: the sum of the "
            "recipe's step times.\n\n" + markdown_table(rows, COLUMNS) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
