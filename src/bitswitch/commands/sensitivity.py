"""``bitswitch sensitivity``: per-unit or per-layer sensitivity, measured or by a gradient proxy."""

from __future__ import annotations

import argparse
import sys

from .args import add_run_args, config_from_args, print_results

DESCRIPTION = """\
Measured: from --base, move one unit (--granularity unit: L{i}.{role} and head) or one block
(--granularity layer: all four units of L{i}) at a time to the --probe spec, measure --metric, and
record the metric, its change from the base and the damage (F1/EM points lost, or ln of the
perplexity ratio). Resumes: a rerun with the same settings skips what OUT/results.json holds.

Proxy (--proxy fisher|fisher-grad|taylor|hutchinson): no sweep; one gradient pass over --proxy-batches
batches at the base profile scores every unit's quantization noise at the probe bits (and --proxy-bits):
fisher = 1/2 sum F_ii dW_i^2 (diagonal empirical Fisher of the per-token losses), fisher-grad = fisher
+ g . (Q_b(W) - Q_base(W)) (the first-order term), taylor = 1/2 mean (g . dW)^2,
hutchinson = 1/2 tr(H)/n ||dW||^2. --against FILE adds the Spearman rank correlation with another
sensitivity results.json (e.g. a measured sweep).

Writes OUT/results.json ("kind": "sensitivity"), OUT/results.md and OUT/sensitivity.png
(layers x roles heatmap, or a bar chart per layer)."""


def add_measure_args(p, data_help: str) -> None:
    """The flags sensitivity and search share (``bitswitch.search.config.MetricConfig``)."""
    add_run_args(p, data_help)
    p.add_argument("--max-tokens", type=int, default=None, help="ppl: first N tokens (from --offset)")
    p.add_argument("--window", type=int, default=1024, help="ppl: window length")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--proxy-batches", type=int, default=4, help="proxy: batches of --batch-size (default 4)")
    p.add_argument("--out", required=True, help="output directory")


def add_parser(sub) -> None:
    p = sub.add_parser("sensitivity", help="per-unit / per-layer sensitivity heatmaps, measured or Fisher proxy",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_measure_args(p, "SQuAD v1.1 file/dir or 'squad'; text file or 'wikitext' for ppl")
    p.add_argument("--base", default="w8a8", help="the profile everything else stays at (default w8a8)")
    p.add_argument("--probe", default="w4a8", help="the spec a probed unit moves to (default w4a8)")
    p.add_argument("--granularity", default="unit", help="unit (L{i}.{role}, head) or layer (all units of L{i})")
    p.add_argument("--metric", default="answer-ppl", help="squad-f1 | squad-em | answer-ppl (default) | ppl")
    p.add_argument("--proxy", default=None, help="fisher | fisher-grad | taylor | hutchinson: a gradient proxy instead of measuring")
    p.add_argument("--proxy-bits", default="", help="proxy: more weight bit-widths to score, e.g. 3,4,6")
    p.add_argument("--against", default=None, help="a sensitivity results.json to rank-correlate with (Spearman)")
    p.add_argument("--no-prefix", dest="prefix", action="store_false",
                   help="run every block for every probe (default: replay unchanged blocks; same numbers)")


def run(a, argv) -> int:
    from ..search.config import SensitivityConfig
    from ..search.sensitivity_runner import run_sensitivity

    results = run_sensitivity(config_from_args(SensitivityConfig, a), argv, log=lambda m: print(m, file=sys.stderr))
    print_results(results, a.out)
    rho = results.get("spearman")
    if rho and rho["rho"] is not None:
        print(f"\nSpearman rank correlation with {rho['against']}: {rho['rho']:.3f} over {rho['n']} records")
    return 0
