"""WikiText-2 test perplexity of SmolLM2-135M at low weight widths: round-to-nearest against GPTQ
roundings (fp Hessians shared by all widths, and sequential Hessians per width), optionally after a
Hadamard rotation. Calibration: prompts of the SQuAD *training* subset; WikiText test is never seen.

    python benchmarks/bench_gptq_ppl.py --wikitext ../shared/data/wikitext-2-raw/wiki.test.raw \
        --calib ../shared/data/squad-v1.1/train-subset-v1.1.json --calib-questions 32 \
        --max-tokens 4096 --window 1024 --out benchmarks/results/gptq_ppl.json
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (puts src/ on the path, relative argv)
import torch

from bitswitch.io import atomic_write_json
from bitswitch.evaluate.scorers import load_text_ids, score_text
from bitswitch.loading import load
from bitswitch.prepare.gptq import calibration_ids, gptq_round
from bitswitch.profiles import QuantOptions
from bitswitch.switching import make_switchable, set_profile

SPECS = ["w8", "w4", "w3", "w2", "w4g32", "w3g32", "w2g32"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--wikitext", required=True)
    p.add_argument("--calib", required=True)
    p.add_argument("--calib-questions", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=4096)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--specs", nargs="+", default=SPECS)
    p.add_argument("--recipes", nargs="+", default=["rtn", "gptq-fp", "gptq-seq"])
    p.add_argument("--rotate", action="store_true", help="Hadamard-rotate the model first (every recipe)")
    p.add_argument("--weight-asym", action="store_true", help="asymmetric weight grids (a zero point per group)")
    p.add_argument("--refit-groups", action="store_true", help="GPTQ fits each group's grid when it reaches it")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t_all = time.time()
    model, tok = load(a.model, device="cpu")
    if a.rotate:
        from bitswitch.prepare.rotate import rotate_model

        rotate_model(model, seed=0)
    make_switchable(model, QuantOptions(weight_symmetric=not a.weight_asym))
    ids, window = load_text_ids(model, tok, a.wikitext, a.max_tokens, 0, a.window)
    calib = calibration_ids(tok, a.calib, a.calib_questions)
    pre = ("rotate+" if a.rotate else "") + ("asym+" if a.weight_asym else "") + ("refit+" if a.refit_groups else "")
    rows = []

    def measure(recipe: str, spec: str, extra: dict) -> None:
        t0 = time.time()
        set_profile(model, spec)
        r = score_text(model, ids, window)
        rows.append({"recipe": pre + recipe, "profile": spec, "ppl": round(r["ppl"], 3), "tokens": r["tokens"],
                     "seconds": round(time.time() - t0, 1), **extra})
        print(rows[-1], flush=True)

    measure("fp", "fp", {})
    fp_ppl = rows[0]["ppl"]
    for recipe in a.recipes:
        for spec in a.specs:   # one width at a time: each row is written as soon as it is measured
            extra = {}
            if recipe != "rtn":
                t0 = time.time()
                rec = gptq_round(model, [spec], calib, sequential=recipe == "gptq-seq", refit_groups=a.refit_groups)
                extra = {"gptq_seconds": round(time.time() - t0, 1), "calib_tokens": rec["tokens"]}
            measure(recipe, spec, extra)
            if a.out:
                atomic_write_json(a.out, {"meta": {"partial": True}, "rows": rows})
    for r in rows:
        r["x_fp"] = round(r["ppl"] / fp_ppl, 3)
    common.write(a.out, rows, ["recipe", "profile", "ppl", "x_fp", "tokens", "seconds"],
                 model=a.model, wikitext=common.rel(a.wikitext), calib=common.rel(a.calib),
                 calib_questions=a.calib_questions, max_tokens=a.max_tokens, window=window, threads=a.threads,
                 rotate=a.rotate, weight_asym=a.weight_asym, refit_groups=a.refit_groups, total_seconds=round(time.time() - t_all, 1))


if __name__ == "__main__":
    main()
