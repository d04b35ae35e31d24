"""Low-bit WikiText-2 perplexity of preparation recipes: each recipe rewrites the floating-point model
(``rtn``: as it is; ``rotate``: :func:`bitswitch.prepare.rotate.rotate_model`), then every profile is
plain round-to-nearest fake quantization of that model (weights per output channel or per group, the
``a`` profiles with per-token activations, the LM head in float), scored as ``bitswitch eval --task
wikitext`` scores (:func:`bitswitch.evaluate.scorers.score_text`: the first ``--tokens`` tokens of the
test set, non-overlapping windows of ``--window``). Each PPL is reported with its ratio to the same
recipe's fp PPL (the goals: w4 within 10% of fp, w3 within 25%, w2 under 3x, by weight bits) and to
``rtn`` at the same profile.

A recipe is ``name -> function(model, tokenizer) -> model`` in ``RECIPES`` (a plain transformers model
in, one to make switchable out; in place is fine: each gets its own copy), so GPTQ-style recipes slot
in beside ``rotate``.

On 2 idle CPU cores a setting costs ~3 s per 1024 tokens (several times that when the cores are
shared), so the committed run is small (its size is in its files; ``--full`` for the whole test set):

    python benchmarks/bench_lowbit_ppl.py --tokens 2048 --out benchmarks/results/lowbit_ppl.json
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import time
from pathlib import Path

from common import rel, write

import torch

import bitswitch as bs
from bitswitch.evaluate.scorers import load_text_ids, score_text
from bitswitch.io import atomic_write_text
from bitswitch.prepare.rotate import rotate_model
from bitswitch.results import markdown_table
from bitswitch.switching import clear_caches

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw" / "wiki.test.raw"
PROFILES = ["fp", "w8", "w6", "w4", "w3", "w2", "w4g32", "w3g32", "w2g32", "w4a4", "w4a8"]
GOALS = {4: 1.10, 3: 1.25, 2: 3.0}   # largest PPL ratio to fp, by weight bits
COLUMNS = ["recipe", "profile", "ppl", "vs_fp", "goal", "meets", "vs_rtn", "seconds"]
SEED = 0

RECIPES = {
    "rtn": lambda model, tok: model,
    "rotate": lambda model, tok: (rotate_model(model, seed=SEED), model)[1],
}


def weight_bits(profile: str) -> int | None:
    m = re.match(r"w(\d+)", profile)
    return int(m.group(1)) if m else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=rel(DATA))
    ap.add_argument("--tokens", type=int, default=4096, help="token budget from the start of the test set")
    ap.add_argument("--full", action="store_true", help="the whole test set (overrides --tokens)")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--profiles", nargs="+", default=PROFILES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    base, tok = bs.load_model(a.model, device="cpu")
    ids, window = load_text_ids(base, tok, a.data, None if a.full else a.tokens, 0, a.window)
    rows, fp_ppl, rtn_ppl = [], {}, {}
    for recipe in a.recipes:
        t = time.perf_counter()
        model = RECIPES[recipe](copy.deepcopy(base), tok)
        bs.make_switchable(model)
        print(f"{recipe}: prepared in {time.perf_counter() - t:.0f} s", flush=True)
        for profile in ["fp"] + [p for p in a.profiles if p != "fp"]:
            t = time.perf_counter()
            bs.set_profile(model, profile)
            ppl = score_text(model, ids, window)["ppl"]
            clear_caches(model)   # one profile's codes in memory at a time
            fp_ppl.setdefault(recipe, ppl)
            if recipe == "rtn":
                rtn_ppl[profile] = ppl
            bits = weight_bits(profile)
            goal = GOALS.get(bits)
            rows.append({"recipe": recipe, "profile": profile, "ppl": ppl, "vs_fp": ppl / fp_ppl[recipe],
                         "goal": goal, "meets": None if goal is None else ppl / fp_ppl[recipe] <= goal,
                         "vs_rtn": ppl / rtn_ppl[profile] if profile in rtn_ppl else None,
                         "seconds": round(time.perf_counter() - t, 1)})
            print(f"  {profile}: ppl {ppl:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        del model
    tokens = ids.shape[1]
    size = (f"first {tokens} tokens of the WikiText-2 test set, windows of {window}, {a.model}, weight RTN "
            f"(per output channel; gN per group of N), per-token activations for aN, LM head in float, "
            f"CPU fp32, {a.threads} threads, {time.perf_counter() - t0:.0f} s")
    meta = dict(model=a.model, data=a.data, tokens=tokens, window=window, recipes=a.recipes, profiles=a.profiles,
                rotation_seed=SEED, size=size, seconds=time.perf_counter() - t0)
    write(a.out, rows, COLUMNS, **meta)
    if a.out:
        md = Path(a.out).with_suffix(".md")
        atomic_write_text(md, f"# Low-bit perplexity of preparation recipes ({a.model})\n\n{size}.\n\n"
                              "vs_fp: PPL over the same recipe's fp PPL; goal: the largest vs_fp the weight width "
                              "aims for; vs_rtn: PPL over rtn's at the same profile.\n\n"
                              f"`python {' '.join(sys.argv)}`\n\n{markdown_table(rows, COLUMNS)}\n")
        print(f"written: {rel(md)}")


if __name__ == "__main__":
    main()
