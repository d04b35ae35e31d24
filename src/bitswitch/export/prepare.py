"""Get a model ready to export: load, wrap, load adapters, switch, calibrate static ranges."""

from __future__ import annotations

from ..data.squad import calibration_batches, load_squad
from ..errors import BitswitchError
from ..loading import is_exported, load_switchable
from ..switching import calibrate, needs_calibration, set_profile


def prepare_for_export(spec: str, adapters: str | None, profile: str, options, device="cpu", dtype="fp32",
                       seed: int = 0, calib_data: str | None = None, calib_examples: int = 32):
    """``(model, tokenizer)`` switched to ``profile`` (its adapter active), calibrated when it needs it."""
    model, tok = load_switchable(spec, adapters, options, device, dtype, seed)
    if is_exported(model):
        raise BitswitchError(f"{spec!r} is already an export: export from the original model")
    set_profile(model, profile)
    if needs_calibration(model, profile):
        if not calib_data:
            raise BitswitchError(f"profile {profile!r} uses static activation ranges: pass --calib-data "
                                 "(a SQuAD training file) to calibrate them, or use --act-mode token")
        calibrate(model, calibration_batches(tok, load_squad(calib_data, split="train"), calib_examples))
    return model, tok
