"""``bitswitch prepare``: rewrite a model before quantization (rotations now) and save it as a
standard Hugging Face directory that every other command loads with ``--model DIR``."""

from __future__ import annotations

from .args import add_model_args


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="rotate a model (Hadamard, fused into the weights; same function in fp) "
                                       "and save it as a Hugging Face directory")
    add_model_args(p)   # its --seed also seeds the rotation
    p.add_argument("--rotate", choices=["hadamard", "orthogonal", "none"], default="hadamard",
                   help="hadamard: random Hadamard rotation of the residual stream and per-head values "
                        "(default); orthogonal: Haar-random, for sizes with no Hadamard matrix; none: no rotation")
    p.add_argument("--out", required=True, help="new or empty directory, or an earlier prepared model (replaced)")


def steps_from_args(a) -> list:
    """The preparation steps the flags ask for, in the order they run."""
    from ..prepare.steps import Step

    steps = []
    if a.rotate != "none":
        steps.append(Step("rotate", {"kind": a.rotate, "seed": a.seed}))
    return steps


def run(a, argv) -> int:
    from ..prepare.steps import prepare_model

    record = prepare_model(a.model, steps_from_args(a), a.out, device=a.device, dtype=a.dtype, seed=a.seed)
    done = ", ".join(f"{s['step']} ({', '.join(f'{k}={v}' for k, v in s['options'].items())})"
                     for s in record["steps"]) or "no steps (a plain copy)"
    untied = any(s["result"].get("untied_head") for s in record["steps"])
    print(f"prepared {a.model}: {done}" + ("; LM head untied from the embedding" if untied else ""))
    print(f"model: {a.out}")
    return 0
