"""Nested against independent weight grids, without any training: WikiText-2 test perplexity at every
width 8..2, per output channel and per group, plus fp.

``independent``: each width its own symmetric scale (amax / (2^(b-1)-1)). ``nested``: every width the
``b`` most significant bits of one int8 master (``slice_codes``, scale ``s8 * 2^(8-b)``), what a
nested checkpoint (``bitswitch export --nested``) stores and the runtime slices. Weights only
(``w{b}``, activations in float), the LM head left in float as every ``w{b}`` profile does.

The model is loaded once; every setting is scored on the same windows (the first ``--windows``
non-overlapping windows of ``--window`` tokens of the test set), so nested and independent are
paired: the table gives each perplexity, their ratio, and the mean over windows of the
nested-minus-independent difference of a window's mean token NLL with its standard error. At 8 bits
the two grids are one (the master is the 8-bit quantizer), measured once.

On 2 shared CPU cores a setting costs ~12 s of quantization plus ~2.5 s per 128 tokens, so the
committed run is small (the size is in its files):

    python benchmarks/bench_nested.py --windows 4 --window 96 --out benchmarks/results/nested_ppl.json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from common import rel, write

import torch

import bitswitch as bs
from bitswitch.data.text import load_text, tokenize_text
from bitswitch.evaluate.perplexity import perplexity
from bitswitch.io import atomic_write_text
from bitswitch.quant.config import WeightQuant
from bitswitch.quant.functional import quantize_weight
from bitswitch.results import markdown_table, se_of_mean
from bitswitch.switching import clear_caches, state

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
COLUMNS = ["granularity", "bits", "ppl_independent", "ppl_nested", "nested_vs_independent", "d_nll", "se_d_nll",
           "significant", "codes_equal"]


def window_nlls(model, windows: list[torch.Tensor]) -> list[tuple[float, int]]:
    """``(summed NLL, scored tokens)`` of each window, scored on its own (the perplexity guide's protocol)."""
    out = []
    for w in windows:
        r = perplexity(model, w, window=w.shape[1])
        out.append((r["nll"] * r["tokens"], r["tokens"]))
    return out


def ppl(nlls: list[tuple[float, int]]) -> float:
    return math.exp(sum(n for n, _ in nlls) / sum(t for _, t in nlls))


def use_options(model, options: bs.QuantOptions) -> None:
    """Switch the quantizer options of a switchable model in place (profiles resolve anew, as
    ``load_adapters`` does when it takes saved options); weight caches are keyed by quantizer."""
    st = state(model)
    st.options = options
    st._resolved.clear()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=rel(DATA / "wikitext-2-raw" / "wiki.test.raw"))
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 7, 6, 5, 4, 3, 2])
    ap.add_argument("--group-sizes", type=int, nargs="+", default=[0, 32], help="0 = per output channel")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model, tok = bs.load_model(a.model, device="cpu")
    bs.make_switchable(model)
    ids = tokenize_text(tok, load_text(a.data), max_tokens=a.windows * a.window)
    if ids.shape[1] < a.windows * a.window:
        raise SystemExit(f"{a.data} has {ids.shape[1]} tokens, fewer than {a.windows} windows of {a.window}")
    windows = [ids[:, i * a.window:(i + 1) * a.window] for i in range(a.windows)]
    bs.set_profile(model, "fp")
    fp = window_nlls(model, windows)
    rows = [{"granularity": "-", "bits": "fp", "ppl_independent": ppl(fp), "ppl_nested": ppl(fp)}]
    print(f"fp: ppl {ppl(fp):.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    for g in a.group_sizes:
        group = g or None
        for bits in a.bits:
            by_grid = {}
            # at 8 bits the nested grid is the independent one (the master is the 8-bit quantizer), so
            # it is measured once; codes_equal below checks that on a unit
            for grid in ("independent",) if bits == 8 else ("independent", "nested"):
                use_options(model, bs.QuantOptions(group_size=group, weight_grid=grid))
                bs.set_profile(model, f"w{bits}")
                by_grid[grid] = window_nlls(model, windows)
                clear_caches(model)   # one setting's codes at a time in memory
            by_grid.setdefault("nested", by_grid["independent"])
            w = model.get_submodule(model.bitswitch.units["L0.attn_in"][0]).weight_out_in()
            codes = [quantize_weight(w, WeightQuant(bits, group, grid=grid))[:2] for grid in ("independent", "nested")]
            assert bits != 8 or all(torch.equal(x, y) for x, y in zip(*codes)), "nested w8 must be independent w8"
            d = [(n_n - n_i) / t for (n_i, t), (n_n, _) in zip(by_grid["independent"], by_grid["nested"])]
            se = se_of_mean(d)
            row = {"granularity": "channel" if group is None else f"g{group}", "bits": bits,
                   "ppl_independent": ppl(by_grid["independent"]), "ppl_nested": ppl(by_grid["nested"]),
                   "d_nll": sum(d) / len(d), "se_d_nll": se,
                   "significant": None if se is None else abs(sum(d) / len(d)) > 2 * se,
                   "codes_equal": all(torch.equal(x, y) for x, y in zip(*codes))}
            row["nested_vs_independent"] = row["ppl_nested"] / row["ppl_independent"]
            rows.append(row)
            print(f"{row['granularity']} w{bits}: independent {row['ppl_independent']:.3f}, nested "
                  f"{row['ppl_nested']:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    tokens = sum(t for _, t in fp)
    size = (f"{a.windows} windows x {a.window} tokens of the WikiText-2 test set ({tokens} scored tokens), "
            f"{a.model}, no training, weights only (w{{b}}), CPU fp32, {time.perf_counter() - t0:.0f} s")
    meta = dict(model=a.model, data=a.data, windows=a.windows, window=a.window, scored_tokens=tokens,
                group_sizes=a.group_sizes, bits=a.bits, size=size, seconds=time.perf_counter() - t0)
    write(a.out, rows, COLUMNS, **meta)
    if a.out:
        md = Path(a.out).with_suffix(".md")
        atomic_write_text(md, f"# Nested vs independent weight grids, no training ({a.model})\n\n{size}.\n\n"
                              "d_nll: mean over windows of (nested - independent) mean token NLL, paired; "
                              "significant: |d_nll| > 2 se. codes_equal: L0.attn_in's first module has the same codes "
                              "and scales on both grids; at 8 bits the nested grid is the independent one (codes_equal "
                              "True) and is measured once.\n\n"
                              f"`python {' '.join(sys.argv)}`\n\n{markdown_table(rows, COLUMNS)}\n")
        print(f"written: {rel(md)}")


if __name__ == "__main__":
    main()
