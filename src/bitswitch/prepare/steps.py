"""Preparation as a list of steps, each ``name -> fn(model, tokenizer, **options) -> record``,
applied in order to one loaded model and saved once (:func:`prepare_model`).

A new step (e.g. GPTQ, which needs the tokenizer for calibration text) registers its function in
``STEPS``; ``bitswitch prepare`` turns its flags into :class:`Step` values.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import BitswitchError
from .gptq import gptq_step
from .recon import recon_step
from .rotate import rotate_model
from .writer import check_target, save_prepared


def _rotate(model, tokenizer, kind: str = "hadamard", seed: int = 0, heads: bool = True) -> dict:
    return rotate_model(model, seed=seed, kind=kind, heads=heads)


STEPS = {"rotate": _rotate, "gptq": gptq_step, "recon": recon_step}


@dataclass(frozen=True)
class Step:
    name: str
    options: dict = field(default_factory=dict)


def apply_steps(model, tokenizer, steps: list[Step]) -> list[dict]:
    """Run ``steps`` on ``model`` in place; one record per step (its name, options and result)."""
    records = []
    for step in steps:
        if step.name not in STEPS:
            raise BitswitchError(f"unknown preparation step {step.name!r}: use one of {', '.join(STEPS)}")
        result = STEPS[step.name](model, tokenizer, **step.options)
        records.append({"step": step.name, "options": dict(step.options), "result": result})
    return records


def prepare_model(spec: str, steps: list[Step], out: str | os.PathLike, device="auto", dtype="fp32",
                  seed: int = 0) -> dict:
    """Load ``spec`` (a plain model: not an export or a nested checkpoint), apply ``steps``, save to
    ``out`` (:func:`~.writer.save_prepared`); return the record written beside the model."""
    from ..loading import is_export_dir, is_nested_dir, load

    check_target(out)   # before the (slow) load
    if is_export_dir(spec) or is_nested_dir(spec):
        raise BitswitchError(f"{spec!r} is a quantized export: prepare the floating-point model it came from")
    model, tok = load(spec, device=device, dtype=dtype, seed=seed)
    record = {"source": spec, "dtype": str(dtype), "steps": apply_steps(model, tok, steps)}
    save_prepared(model, tok, out, record)
    return record
