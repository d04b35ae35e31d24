"""What the rounding steps (gptq, recon) share on the plain model: wrap it, round, collect the
roundings, unwrap it (the saved model stays a standard one), and leave the roundings on it for
:func:`~.writer.save_prepared`; and the rule that calibration text is never evaluation text."""

from __future__ import annotations

from torch import nn

from ..errors import BitswitchError
from ..switching import state


def check_training_source(source: str) -> None:
    """Refuse calibration text named like an evaluation split (``dev``, ``test``, ``valid``): what is
    fitted to it (roundings, grids) would be fitted to the evaluation."""
    from pathlib import Path

    name = Path(str(source)).name.lower()
    if any(word in name for word in ("dev", "test", "valid")):
        raise BitswitchError(f"--calib-data {source!r} looks like an evaluation split: calibrate on "
                             "training text (e.g. squad-v1.1/train-subset-v1.1.json or the hub name squad)")


def round_plain_model(model: nn.Module, step: str, weight_asym: bool, round_fn, **extra) -> dict:
    """Make the plain ``model`` switchable (``weight_asym``: asymmetric weight grids), run
    ``round_fn(model)`` (which sets roundings and returns a JSON-ready record), collect the roundings,
    unwrap the model, and keep them with :func:`keep_roundings`. Returns the record plus ``extra``."""
    from ..profiles import QuantOptions
    from ..roundings import collect_roundings
    from ..switching import make_switchable

    if hasattr(model, "bitswitch"):
        raise BitswitchError(f"the {step} step runs on the plain model (it wraps and unwraps it itself)")
    make_switchable(model, QuantOptions(weight_symmetric=not weight_asym))
    try:
        record = round_fn(model)
        roundings = collect_roundings(model)
        units = {name: u for u, names in state(model).units.items() for name in names}
    finally:
        unwrap(model)
    record.update(**extra, weight_asym=weight_asym)
    keep_roundings(model, roundings, units, record)
    return record


def keep_roundings(model: nn.Module, roundings: dict, units: dict, record: dict) -> None:
    """Leave ``roundings`` on the plain ``model`` for :func:`~.writer.save_prepared`. A later step
    adds to an earlier one's (gptq then recon ...); where both round the same module and quantizer,
    the later one's is kept."""
    previous = getattr(model, "bitswitch_roundings", None)
    if previous is not None:
        for module, per_cfg in previous[0].items():
            for cfg, r in per_cfg.items():
                roundings.setdefault(module, {}).setdefault(cfg, r)   # this step's own stay
        units = {**previous[1], **units}
        record = {"steps": previous[2].get("steps", [previous[2]]) + [record]}
    model.bitswitch_roundings = (roundings, units, record)


def source_name(source: str) -> str:
    """A calibration source as recorded: a file's name, never a machine's absolute path."""
    from pathlib import Path

    return Path(str(source)).name


def unwrap(model: nn.Module) -> None:
    """Put the original linears back in place of the QuantLinear wrappers (what make_switchable did)."""
    st = getattr(model, "bitswitch", None)
    if st is None:
        return
    for names in st.units.values():
        for name in names:
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            setattr(owner, child, owner.get_submodule(child).base)
    del model.bitswitch
