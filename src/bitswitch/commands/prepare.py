"""``bitswitch prepare``: rewrite a model before quantization (rotations now) and save it as a
standard Hugging Face directory that every other command loads with ``--model DIR``."""

from __future__ import annotations

from ..errors import BitswitchError
from .args import add_model_args


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="rotate a model (Hadamard, fused into the weights; same function in fp), round its "
                                       "frozen base per width (GPTQ, block-wise reconstruction), and save it as a "
                                       "Hugging Face directory")
    add_model_args(p)   # its --seed also seeds the rotation
    p.add_argument("--rotate", choices=["hadamard", "orthogonal", "none"], default="none",
                   help="hadamard: random Hadamard rotation of the residual stream and per-head values; "
                        "orthogonal: Haar-random, for sizes with no Hadamard matrix; none: no rotation (default: on SmolLM2 rotation helps 4-bit activations "
                        "but hurts weight-only 4-bit)")
    g = p.add_argument_group("GPTQ roundings (after the rotation; saved beside the model, used wherever --model DIR is)")
    g.add_argument("--gptq", nargs="+", default=None, metavar="PROFILE",
                   help="round the frozen base with GPTQ for every weight quantizer these profiles use (w4 w3g32 ...)")
    g.add_argument("--calib-data", default=None,
                   help="SQuAD training JSON (or the hub name squad) whose prompts calibrate GPTQ and whose paragraphs "
                        "calibrate --recon; never evaluation text")
    g.add_argument("--calib-questions", type=int, default=128, help="calibration prompts (default 128)")
    g.add_argument("--gptq-hessians", choices=["sequential", "fp"], default="sequential",
                   help="sequential: each width's Hessians from the blocks already rounded at it (default); "
                        "fp: one floating-point pass shared by all widths (faster)")
    g.add_argument("--weight-asym", action="store_true", help="asymmetric weight quantizers (as eval/train --weight-asym)")
    g.add_argument("--act-order", action="store_true", help="round columns in order of decreasing Hessian diagonal")
    g.add_argument("--gptq-damp", type=float, default=0.01, help="damping, a fraction of the mean Hessian diagonal")
    g.add_argument("--calib-max-length", type=int, default=512, help="tokens per calibration prompt at most")
    r = p.add_argument_group("block-wise reconstruction (after GPTQ; a learned grid per width, saved like GPTQ's roundings)")
    r.add_argument("--recon", nargs="+", default=None, metavar="PROFILE",
                   help="learn weights, scales and zero points per block for every weight quantizer these profiles "
                        "use (w4 w3g32 w2g32 ...), so each quantized block reproduces the fp block; fp stays unchanged")
    r.add_argument("--recon-seqs", type=int, default=128, help="calibration sequences (default 128)")
    r.add_argument("--recon-seq-len", type=int, default=512, help="tokens per calibration sequence (default 512)")
    r.add_argument("--recon-batch-size", type=int, default=4, help="sequences per step (default 4)")
    r.add_argument("--recon-epochs", type=int, default=2, help="passes over the calibration sequences per block (default 2)")
    r.add_argument("--recon-lr", type=float, default=2e-4, help="Adam learning rate of the weights (default 2e-4)")
    r.add_argument("--recon-scale-lr", type=float, default=2e-3,
                   help="Adam learning rate of the scales and zero points (default 2e-3)")
    r.add_argument("--recon-loss", choices=["mse", "channel", "token"], default="mse",
                   help="mse: the block output's mean squared error (default); channel: each hidden channel's "
                        "squared error relative to its fp mean square; token: each token's squared error relative "
                        "to its fp mean square (what the next RMSNorm sees)")
    r.add_argument("--recon-init", choices=["rtn", "search"], default="search",
                   help="starting grid: search, per group the clipped range of least weight error (default; on SmolLM2 "
                        "w2g32 270 PPL against 709, w3g32 33.9 against 35.8); rtn: round to nearest's min-max range")
    p.add_argument("--out", required=True, help="new or empty directory, or an earlier prepared model (replaced)")


def steps_from_args(a) -> list:
    """The preparation steps the flags ask for, in the order they run."""
    from ..prepare.steps import Step

    steps = []
    if a.rotate != "none":
        steps.append(Step("rotate", {"kind": a.rotate, "seed": a.seed}))
    if a.gptq:
        if not a.calib_data:
            raise BitswitchError("--gptq needs --calib-data: SQuAD training JSON (or squad), never evaluation text")
        steps.append(Step("gptq", {"profiles": list(a.gptq), "calib_data": a.calib_data,
                                   "calib_questions": a.calib_questions, "hessians": a.gptq_hessians,
                                   "weight_asym": a.weight_asym, "act_order": a.act_order, "damp": a.gptq_damp,
                                   "max_length": a.calib_max_length, "seed": a.seed}))
    if a.recon:
        if not a.calib_data:
            raise BitswitchError("--recon needs --calib-data: SQuAD training JSON (or squad), never evaluation text")
        steps.append(Step("recon", {"profiles": list(a.recon), "calib_data": a.calib_data, "seqs": a.recon_seqs,
                                    "seq_len": a.recon_seq_len, "batch_size": a.recon_batch_size,
                                    "epochs": a.recon_epochs, "lr": a.recon_lr, "scale_lr": a.recon_scale_lr,
                                    "loss": a.recon_loss, "init": a.recon_init,
                                    "weight_asym": a.weight_asym, "seed": a.seed}))
    if a.calib_data and not (a.gptq or a.recon):
        raise BitswitchError("--calib-data calibrates GPTQ or reconstruction: pass --gptq or --recon PROFILES too")
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
