"""``bitswitch attack``: adversarial robustness of a switchable model on SQuAD, with or without RPI.

    bitswitch attack --model smollm2-135m --adapters runs/demo/train/adapters --attack hotflip typo \\
      --craft-profile fp w8a8 w6a8 w4a8 --eval-profiles fp w8a8 w6a8 w4a8 \\
      --rpi fp w8a8 w6a8 w4a8 --rpi-p 0.5 --rpi-granularity forward \\
      --data ../shared/data/squad-v1.1/dev-part1-v1.1.json --limit 100 --out runs/attack
"""

from __future__ import annotations

import sys

from .args import add_run_args, config_from_args, print_results


def add_parser(sub) -> None:
    from ..robust.config import ATTACKS
    from ..robust.rpi import GRANULARITIES

    p = sub.add_parser("attack", help="text / embedding attacks on SQuAD, RPI defence, transferability matrix")
    add_run_args(p, "SQuAD v1.1 JSON file, directory or 'squad' (required)")
    p.set_defaults(batch_size=16)
    p.add_argument("--attack", dest="attacks", nargs="+", required=True, metavar="ATTACK",
                   help=f"one or more of {', '.join(ATTACKS)}")
    p.add_argument("--craft-profile", "--craft-profiles", dest="craft", nargs="+", default=["fp"],
                   help="profile(s) the attacker crafts against (rows of the matrix)")
    p.add_argument("--eval-profiles", dest="eval", nargs="+", default=None,
                   help="profiles the examples are replayed at (columns; default: the craft profiles)")
    p.add_argument("--rpi", nargs="+", default=None, metavar="PROFILE",
                   help="random precision inference over these profiles: adds the setting 'rpi' as a row "
                        "(adaptive EOT attacker) and a column (seeded draws)")
    p.add_argument("--rpi-p", type=float, default=0.5, help="RPI switching probability (0: the first profile)")
    p.add_argument("--rpi-granularity", choices=GRANULARITIES, default="forward")
    p.add_argument("--eot", type=int, default=4, help="precision draws the attacker averages over against RPI")
    p.add_argument("--rpi-matrix", choices=["full", "diagonal"], default="full",
                   help="diagonal: evaluate the rpi row only at the rpi column (saves replays)")
    p.add_argument("--budget", type=int, default=None, help="character edits (typo, 4) / token flips (hotflip, 3)")
    p.add_argument("--candidates", type=int, default=None, help="candidates scored per step (typo 12, hotflip 8)")
    p.add_argument("--attack-context", dest="context", action="store_true",
                   help="also edit the context (never the gold answer spans)")
    p.add_argument("--eps", type=float, default=0.5, help="embed attacks: radius relative to the embedding scale")
    p.add_argument("--norm", choices=["linf", "l2"], default="linf")
    p.add_argument("--steps", type=int, default=5, help="embed-pgd steps")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--template", default=None, help="prompt template with {context} and {question}")
    p.add_argument("--chat", action="store_true")
    p.add_argument("--out", required=True, help="output directory")


def run(a, argv) -> int:
    from ..robust.attack_runner import run_attack
    from ..robust.config import AttackConfig

    print_results(run_attack(config_from_args(AttackConfig, a), argv, log=lambda m: print(m, file=sys.stderr)), a.out)
    return 0
