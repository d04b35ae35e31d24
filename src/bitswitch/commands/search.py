"""``bitswitch search``: a mixed-precision profile under a budget or a drop, verified by measuring it."""

from __future__ import annotations

import argparse
import sys

from .args import config_from_args, print_results
from .sensitivity import add_measure_args

DESCRIPTION = """\
Per-unit bits from --candidates (weights only; activations stay at the base profile's), chosen
from per-unit damages (--sensitivity: fisher (default), fisher-grad, taylor, hutchinson, measured, or the
results.json of bitswitch sensitivity --granularity unit) computed on the calibration data
(--calib-offset/--calib-limit; default: the evaluation data). --below-penalty F [F ...] multiplies
the damages of units lowered below the widest uniform profile the budget allows (several: each
solution is measured on the calibration data and the best is kept; with several budgets, the
solutions of the other budgets that fit a budget compete for it too). --alt-sensitivity SRC [...]
adds further tables whose solutions compete in the same way (e.g. a fisher and a fisher-grad table:
which one searches best differs between budgets).

Targets (exactly one):
  --avg-bits B [B ...]   average weight bits (parameter-weighted, as bitswitch profiles reports)
  --max-bytes N [N ...]  exact weight bytes (packed codes + fp16 scales + zero points + the rest at fp16)
  --max-drop D           F1/EM points, or relative perplexity increase (0.05 = 5%), against the base
Methods: budget (exact multiple-choice knapsack over the damage table; with --max-drop it bisects
the average-bits budget) or greedy (lower the least damaging unit per byte saved, step by step;
with --max-drop every step is measured on the calibration data).

Every result is measured on the evaluation data (--data, --offset, --limit / --max-tokens) and
written to OUT/results.json ("kind": "search"), OUT/results.md and OUT/profiles/<label>.json,
which bitswitch eval --profiles FILE loads (unit-bits adapters compose per unit). --pareto also
measures the uniform profiles, marks the Pareto front and plots OUT/pareto.png."""


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="mixed-precision search (budget knapsack or greedy), Pareto front",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_measure_args(p, "SQuAD v1.1 file/dir or 'squad'; text file or 'wikitext'")
    p.add_argument("--task", default="squad", help="squad (default) or wikitext")
    p.add_argument("--metric", default=None, help="squad-f1 (squad default) | squad-em | answer-ppl | ppl")
    p.add_argument("--candidates", default="4,6,8", help="weight bit-widths to choose from (default 4,6,8)")
    p.add_argument("--avg-bits", type=float, nargs="+", default=[], metavar="B")
    p.add_argument("--max-bytes", type=int, nargs="+", default=[], metavar="N")
    p.add_argument("--max-drop", type=float, default=None, metavar="D")
    p.add_argument("--method", default="budget", help="budget (default) or greedy")
    p.add_argument("--base", default=None, help="starting profile (default w{highest candidate}a8)")
    p.add_argument("--sensitivity", nargs="+", default=["fisher"],
                   help="fisher (default) | fisher-grad | taylor | hutchinson | measured | sensitivity results.json file(s): "
                        "several sweeps merge their probes (e.g. w3a8 and w8a8 from a w4a8 base)")
    p.add_argument("--alt-sensitivity", nargs="+", default=[], metavar="SRC",
                   help="further damage tables, each a proxy name or one sensitivity results.json: each is solved "
                        "like --sensitivity (every --below-penalty factor) and its solutions compete on the "
                        "calibration data (needs --calib-offset/--calib-limit)")
    p.add_argument("--sens-metric", default=None,
                   help="metric of a measured sensitivity sweep and of the --below-penalty calibration "
                        "(default answer-ppl for squad, ppl for wikitext)")
    p.add_argument("--damage-fit", default="side",
                   help="measured sweeps: keep each measured damage (side, default) or fit one energy coefficient "
                        "per unit to all its sweeps (pooled: less noise when sweeps lie on both sides of the base)")
    p.add_argument("--below-penalty", type=float, nargs="+", default=[1.0], metavar="F",
                   help="multiply the damage of lowering a unit below the widest uniform profile within the "
                        "budget by F (the additive table underestimates many lowered units together); several: solve with each, measure each on the calibration "
                        "data (--sens-metric), keep the best (needs --calib-offset/--calib-limit)")
    p.add_argument("--calib-offset", type=int, default=None, help="first question (squad) or token (wikitext) of the calibration slice")
    p.add_argument("--calib-limit", type=int, default=None, help="squad: questions in the calibration slice")
    p.add_argument("--pareto", action="store_true", help="also measure uniform profiles; Pareto front + plot")
    p.add_argument("--chunk", type=int, default=1, help="greedy --max-drop: moves tried per measurement")
    p.add_argument("--max-states", type=int, default=200_000,
                   help="budget: largest knapsack table before costs are discretised (gap reported)")


def run(a, argv) -> int:
    from ..search.config import SearchConfig
    from ..search.search_runner import run_search

    results = run_search(config_from_args(SearchConfig, a), argv, log=lambda m: print(m, file=sys.stderr))
    print_results(results, a.out)
    for r in results["records"]:
        if r["kind"] == "searched":
            print(f"\n{r['label']}: {r['file']}\n  {r['profile']}")
    return 0
