"""``bitswitch run EXPERIMENT.yaml``: run an experiment's steps, skipping those already done."""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run an experiment file's steps (train, eval, ...), skipping finished ones")
    p.add_argument("experiment", help="experiment YAML file, e.g. experiments/accuracy.yaml")
    p.add_argument("--size", default=None, help="one of the file's sizes, e.g. small or full (default: the first)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="VAR=VALUE",
                   help="override an experiment variable (repeatable), e.g. --set steps=40")
    p.add_argument("--out", default=None, help="run directory (default: runs/NAME-SIZE)")
    p.add_argument("--cache", default=None,
                   help="where step outputs live, shared between experiments (default: RUN_DIR/../cache)")
    p.add_argument("--dry-run", action="store_true", help="print each step's command and whether it would run")
    p.add_argument("--only", nargs="+", default=None, metavar="STEP",
                   help="run only these steps (ids, or a foreach step's id for all its items)")
    p.add_argument("--isolate", action="store_true",
                   help="run each step in a fresh Python process (own peak memory; default: in this process)")


def run(args, argv) -> int:
    from ..experiments.runner import default_dirs, run_experiment
    from ..experiments.spec import load_experiment

    build_parser, main = args.command_line   # handed in by the CLI: a step is a CLI command run in-process
    exp = load_experiment(args.experiment, args.size, args.sets, parser=build_parser())
    run_dir, cache = default_dirs(exp, args.out, args.cache)
    return run_experiment(exp, run_dir, cache, dry_run=args.dry_run, isolate=args.isolate, only=args.only,
                          execute=main, log=lambda m: print(m, file=sys.stderr))
