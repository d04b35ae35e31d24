"""Make a model switchable and switch it: the one way precision is changed.

``make_switchable`` wraps every unit's modules in :class:`~bitswitch.quant.QuantLinear` and attaches
a :class:`SwitchState` to the model; ``set_profile`` / ``use_profile`` set every wrapper's precision,
active adapter and observer key from a resolved profile table. RPI, schedules and search all go
through ``set_profile``.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import BitswitchError
from .profiles import Profile, QuantOptions, parse_profile, resolve, safe_key
from .quant import QuantLinear, UnitPrecision
from .units import find_units

log = logging.getLogger(__name__)
KEYINGS = ("profile", "shared", "unit-bits")


@dataclass
class SwitchState:
    """What bitswitch keeps on a switchable model (``model.bitswitch``)."""

    units: "OrderedDict[str, list[str]]"
    options: QuantOptions
    keying: str = "profile"
    profile: Profile | None = None
    table: dict[str, UnitPrecision] = field(default_factory=dict)
    adapters_on: bool = True
    adapter_config: object = None   # adapters.AdapterConfig once adapters exist
    _resolved: dict[str, dict[str, UnitPrecision]] = field(default_factory=dict)


def make_switchable(model: nn.Module, options: QuantOptions = QuantOptions(), keying: str = "profile") -> nn.Module:
    """Wrap the units of ``model`` in place and return it; runs at ``fp`` until switched.

    keying: how adapters are looked up when a profile is set: ``profile`` (one set per profile
    name), ``shared`` (one set for all), ``unit-bits`` (per unit, one per spec it runs at).
    """
    if keying not in KEYINGS:
        raise BitswitchError(f"unknown adapter keying {keying!r}: use one of {', '.join(KEYINGS)}")
    if hasattr(model, "bitswitch"):
        return model
    units = find_units(model)
    scratch: dict = {}
    for names in units.values():
        share = {} if len(names) > 1 else None
        for i, name in enumerate(names):
            parent, _, child = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            wrapped = QuantLinear(owner.get_submodule(child))
            wrapped.input_share, wrapped.input_share_last = share, i == len(names) - 1
            wrapped.scratch = scratch
            setattr(owner, child, wrapped)
    model.bitswitch = SwitchState(units, options, keying)
    return model


def state(model: nn.Module) -> SwitchState:
    st = getattr(model, "bitswitch", None)
    if st is None:
        raise BitswitchError("model is not switchable: call bitswitch.make_switchable(model) first")
    return st


def unit_modules(model: nn.Module, unit: str | None = None):
    """Yield ``(unit, module_name, QuantLinear)`` for every wrapped module (or one unit's)."""
    st = state(model)
    for u, names in st.units.items():
        if unit is None or u == unit:
            for name in names:
                yield u, name, model.get_submodule(name)


def resolve_profile(model: nn.Module, profile: str | Profile) -> tuple[Profile, dict[str, UnitPrecision]]:
    """Parse and resolve ``profile`` against the model's units (cached by profile text)."""
    st = state(model)
    prof = parse_profile(profile) if isinstance(profile, str) else profile
    if prof.name not in st._resolved:
        st._resolved[prof.name] = resolve(prof, st.units, st.options)
    return prof, st._resolved[prof.name]


def adapter_key(keying: str, profile: Profile, precision: UnitPrecision) -> str:
    """The adapter a unit uses under ``profile``: by profile name, ``shared``, or by the unit's spec."""
    if keying == "shared":
        return "shared"
    if keying == "unit-bits":
        return precision.spec
    return profile.key


def set_profile(model: nn.Module, profile: str | Profile, adapters: bool = True) -> Profile:
    """Switch every unit to ``profile`` and activate its adapters (when ``adapters`` and they exist).

    Costs a dictionary walk: fake-quantized weights are cached per quantizer, so switching to a
    profile already used re-quantizes nothing.
    """
    st = state(model)
    prof, table = resolve_profile(model, profile)
    missing = 0
    for unit, _, mod in unit_modules(model):
        prec = table[unit]
        mod.precision = None if prec.is_fp else prec
        mod.observer_key = prof.key
        key = adapter_key(st.keying, prof, prec) if adapters else None
        if key is not None and key not in mod.adapters:
            missing += bool(len(mod.adapters))
            key = None
        mod.active_adapter = key
    if missing:
        log.warning("profile %r: %d wrapped modules have adapters but none for this profile; they run "
                    "without one", prof.name, missing)
    st.profile, st.table, st.adapters_on = prof, table, adapters
    return prof


@contextlib.contextmanager
def use_profile(model: nn.Module, profile: str | Profile, adapters: bool = True):
    """``with use_profile(model, 'w4a8'):`` ... restores the previous profile on exit."""
    st = state(model)
    previous, prev_adapters = st.profile, st.adapters_on
    try:
        yield set_profile(model, profile, adapters)
    finally:
        set_profile(model, previous if previous is not None else "fp", prev_adapters)


@torch.no_grad()
def calibrate(model: nn.Module, batches, profile: str | Profile | None = None) -> int:
    """Fill the static (per-tensor) activation observers of the current (or given) profile.

    batches: an iterable of model keyword dicts (``{"input_ids": (B, T), "attention_mask": ...}``)
    or of input-id tensors (B, T). Observers are keyed by profile, since a unit's input range
    depends on the precision of the units before it. Returns the number of batches seen.
    """
    ctx = use_profile(model, profile) if profile is not None else contextlib.nullcontext()
    with ctx:
        mods = [m for _, _, m in unit_modules(model)]
        for m in mods:  # re-calibration starts afresh
            m.observer(create=True).count.zero_()
            m.calibrating = True
        n = 0
        try:
            for batch in batches:
                model(**batch) if isinstance(batch, dict) else model(batch)
                n += 1
        finally:
            for m in mods:
                m.calibrating = False
    if n == 0:
        raise BitswitchError("calibration got no batches: pass at least one batch of inputs")
    return n


def needs_calibration(model: nn.Module, profile: str | Profile) -> bool:
    _, table = resolve_profile(model, profile)
    return any(p.act is not None and p.act.mode == "tensor" for p in table.values())


def clear_caches(model: nn.Module) -> None:
    """Drop every cached fake-quantized weight (after editing base weights out of place, or to free
    the caches of profiles that will not run again)."""
    for _, _, m in unit_modules(model):
        m.clear_cache()


WEIGHT_CACHES = ("auto", "codes", "float")


def set_weight_cache(model: nn.Module, mode: str) -> None:
    """How frozen quantized weights are cached: ``codes`` (1 byte per weight + scales, dequantized at
    every forward), ``float`` (the fake-quantized float weight: no dequantization, but as large as the
    float units) or ``auto`` (the default: codes for inference, float under autograd). All give
    bitwise the same outputs; existing caches are dropped."""
    if mode not in WEIGHT_CACHES:
        raise BitswitchError(f"unknown weight cache {mode!r}: use one of {', '.join(WEIGHT_CACHES)}")
    for _, _, m in unit_modules(model):
        m.weight_cache = mode
        m.clear_cache()
