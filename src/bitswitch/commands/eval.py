"""``bitswitch eval``: wikitext perplexity, SQuAD EM/F1/answer perplexity or lm-eval tasks, every profile."""

from __future__ import annotations

import sys

from .args import add_run_args, config_from_args, print_results


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate profiles: wikitext perplexity, SQuAD EM/F1, lm-eval tasks")
    add_run_args(p, "file, directory or hub name (wikitext, squad)")
    p.add_argument("--task", required=True, help="wikitext | squad | lm-eval:TASK[,TASK...]")
    p.add_argument("--profiles", nargs="+", default=None,
                   help="profiles (names, rules or files); default fp, or an exported model's own profile")
    p.add_argument("--out", required=True, help="output directory (results.json, results.md)")
    p.add_argument("--max-tokens", type=int, default=None, help="wikitext: first N tokens only")
    p.add_argument("--window", type=int, default=1024, help="wikitext: window length in tokens")
    p.add_argument("--stride", type=int, default=None, help="wikitext: window stride (default: window)")
    p.add_argument("--shots", type=int, default=0, help="squad: k-shot examples per prompt")
    p.add_argument("--train-data", default=None,
                   help="SQuAD training file: k-shot examples, static calibration, --dynamic fitting on "
                        "squad, and the gate's training")
    p.add_argument("--template", default=None, help="squad: prompt template with {context} and {question}")
    p.add_argument("--chat", action="store_true", help="squad: wrap prompts in the chat template")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--calib-batches", type=int, default=4, help="batches for static activation ranges")
    p.add_argument("--engine", choices=["auto", "fake", "runtime"], default="auto",
                   help="fake: fake quantization (exact grids, float compute); runtime: packed int4/int8 kernels "
                        "in bf16 (bitswitch generate's engine); auto (default): runtime for a nested checkpoint")
    p.add_argument("--dynamic", choices=["threshold", "gate", "request"], default=None,
                   help="choose widths while running instead of --profiles: threshold (per token and unit, by an "
                        "error estimate fitted to --budget on calibration data), gate (per token and unit, a "
                        "learned gate trained and fitted on calibration data) or request (one width per sequence)")
    p.add_argument("--budget", type=float, default=None,
                   help="--dynamic: average weight bits per token (or bytes read, with --budget-by bytes), e.g. 4.5")
    p.add_argument("--widths", default="w4g32,w8", help="--dynamic: the widths to choose from, comma-separated")
    p.add_argument("--budget-by", choices=["bits", "bytes"], default="bits", help="--dynamic: what --budget counts")
    p.add_argument("--gate-penalty", type=float, default=0.05,
                   help="--dynamic gate: weight of the expected average weight bits in the gate's loss")
    p.add_argument("--gate-steps", type=int, default=64,
                   help="--dynamic gate: training steps, one calibration prompt each (see --calib-batches)")
    p.add_argument("--gate-target", choices=["prompt", "answer"], default="prompt",
                   help="--dynamic gate: train on the KL of every calibration prompt token (prompt) or of the "
                        "tokens of each prompt's gold answer, appended (answer: what a SQuAD answer depends on)")
    p.add_argument("--gate", default=None, metavar="FILE",
                   help="--dynamic gate: reuse a gate saved by an earlier run (its gate-*.safetensors) instead of "
                        "training one; only its price is fitted to --budget again")
    p.add_argument("--rpi", nargs="+", default=None, metavar="PROFILE",
                   help="random precision inference over these profiles: evaluates the one setting 'rpi' "
                        "(seeded draws) instead of --profiles")
    p.add_argument("--rpi-p", type=float, default=0.5, help="--rpi: switching probability at a draw point")
    p.add_argument("--rpi-granularity", choices=["batch", "forward", "unit", "token"], default="forward")
    p.add_argument("--rpi-calib", choices=["dynamic", "per-profile", "shared"], default="dynamic",
                   help="--rpi activation ranges: dynamic per token (default), or static per tensor (adapters "
                        "trained per token run with static ranges) calibrated per profile, or once for all "
                        "profiles while the precision switches at random (shared)")
    p.add_argument("--weight-cache", choices=["codes", "float"], default="codes",
                   help="cache quantized weights as 1-byte codes (default, least memory) or as float "
                        "(faster token-by-token decoding, as large as the float units); same results")


def run(a, argv) -> int:
    from ..evaluate.config import EvalConfig
    from ..evaluate.runner import run_eval

    cfg = config_from_args(EvalConfig, a)
    if cfg.dynamic:
        from ..dynamic.eval import run_dynamic_eval as run_eval   # noqa: F811 - same signature
    elif cfg.rpi:
        from ..robust.rpi_eval import run_rpi_eval as run_eval   # noqa: F811 - same signature
    print_results(run_eval(cfg, argv, log=lambda m: print(m, file=sys.stderr)), a.out)
    return 0
