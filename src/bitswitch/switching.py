"""Make a model switchable and switch it: the one way precision is changed.

``make_switchable`` wraps every unit's modules in :class:`~bitswitch.quant.QuantLinear` and attaches
a :class:`SwitchState` to the model; ``set_profile`` / ``use_profile`` set every wrapper's precision,
active adapter and observer key from a resolved profile table. :func:`set_unit_profiles` (which
``set_profile`` calls) is the only code that writes a unit's precision, and it records every write
in the :class:`SwitchState`, so the state always names what the units run at. RPI (whole-model and
per-unit draws), schedules and search all go through it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import BitswitchError
from .profiles import Profile, QuantOptions, parse_profile, precision_text, resolve, table_id, table_to_string
from .quant import QuantLinear, UnitPrecision
from .units import find_units

log = logging.getLogger(__name__)
KEYINGS = ("profile", "shared", "unit-bits")


@dataclass
class SwitchState:
    """What bitswitch keeps on a switchable model (``model.bitswitch``), rewritten by every switch.

    ``unit_profiles``: the profile each unit runs under (its precision, adapter and observer come
    from it); empty until the first switch (every unit at fp). ``profile``: that profile when all
    units share one, else a profile spelling the per-unit mix (:func:`~bitswitch.profiles.table_to_string`).
    ``table``: each unit's precision as it runs.
    """

    units: "OrderedDict[str, list[str]]"
    options: QuantOptions
    keying: str = "profile"
    profile: Profile | None = None
    table: dict[str, UnitPrecision] = field(default_factory=dict)
    unit_profiles: dict[str, Profile] = field(default_factory=dict)
    adapters_on: bool = True
    adapter_config: object = None   # adapters.AdapterConfig once adapters exist
    shared_observer: str | None = None   # set by share_observers: one static-range key for every profile
    _resolved: dict[tuple, dict[str, UnitPrecision]] = field(default_factory=dict)   # by rules, not name


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


def unit_widths(model: nn.Module) -> dict[str, int]:
    """Each unit's input width (its modules read the same input, so they share it)."""
    return {u: model.get_submodule(names[0]).in_features for u, names in state(model).units.items()}


def resolve_profile(model: nn.Module, profile: str | Profile) -> tuple[Profile, dict[str, UnitPrecision]]:
    """Parse and resolve ``profile`` against the model's units. Resolutions are cached by the
    profile's rules, never its name: two files of one name, or a file named like a built-in, each
    resolve to what they hold."""
    st = state(model)
    prof = parse_profile(profile) if isinstance(profile, str) else profile
    if prof.rules not in st._resolved:
        st._resolved[prof.rules] = resolve(prof, st.units, st.options, unit_widths(model))
    return prof, st._resolved[prof.rules]


def profile_id(model: nn.Module, profile: str | Profile, adapters: bool = True) -> str:
    """The identity of ``profile`` on this model (:func:`~bitswitch.profiles.table_id`): a digest of
    what every unit runs at under it, its full precision and the adapter it uses (when ``adapters``
    and one exists: with ``profile`` keying, the adapter follows the name). Two profiles share it
    exactly when switching to either runs the model the same; results are keyed by it."""
    st = state(model)
    prof, table = resolve_profile(model, profile)
    entries = {}
    for unit, names in st.units.items():
        prec, text = table[unit], precision_text(table[unit])
        key = adapter_key(st.keying, prof, prec) if adapters else None
        if key is not None and any(key in model.get_submodule(n).adapters for n in names):
            text += f"@{key}"
        entries[unit] = text
    return table_id(entries)


def adapter_key(keying: str, profile: Profile, precision: UnitPrecision) -> str:
    """The adapter a unit uses under ``profile``: by profile name, ``shared``, or by the unit's spec."""
    if keying == "shared":
        return "shared"
    if keying == "unit-bits":
        return precision.spec
    return profile.key


def set_unit_profiles(model: nn.Module, profiles: Mapping[str, str | Profile], adapters: bool = True) -> Profile:
    """Switch each unit to what it runs at under its own profile (``{unit: profile}``, every unit
    named): its precision, its adapter (when ``adapters`` and it exists) and its observer key. The one
    function that writes unit precision; it records the result in ``model.bitswitch`` (``profile``,
    ``table``, ``unit_profiles``, ``adapters_on``) and returns the recorded profile.

    Costs a dictionary walk: fake-quantized weights are cached per quantizer, so switching to a
    precision already used re-quantizes nothing.
    """
    st = state(model)
    if set(profiles) != set(st.units):
        wrong = sorted(set(profiles) ^ set(st.units))
        raise BitswitchError(f"unit profiles must name every unit of the model once; {wrong[0]!r} is "
                             f"{'not a unit' if wrong[0] in profiles else 'missing'}")
    resolved: dict[str | Profile, tuple[Profile, dict[str, UnitPrecision]]] = {}   # by the value given
    for p in profiles.values():
        if p not in resolved:
            resolved[p] = resolve_profile(model, p)
    unit_profiles, table = {}, {}
    missing = 0
    for unit, _, mod in unit_modules(model):
        prof, prof_table = resolved[profiles[unit]]
        prec = prof_table[unit]
        unit_profiles[unit], table[unit] = prof, prec
        mod.precision = None if prec.is_fp else prec
        mod.observer_key = st.shared_observer or prof.key
        key = adapter_key(st.keying, prof, prec) if adapters else None
        if key is not None and key not in mod.adapters:
            missing += bool(len(mod.adapters))
            key = None
        mod.active_adapter = key
    if len({prof for prof, _ in resolved.values()}) == 1:
        (recorded, _), *_ = resolved.values()
    else:
        recorded = parse_profile(table_to_string(table))
    if missing:
        log.warning("profile %r: %d wrapped modules have adapters but none for this profile; they run "
                    "without one", recorded.name, missing)
    st.profile, st.table, st.unit_profiles, st.adapters_on = recorded, table, unit_profiles, adapters
    return recorded


def set_profile(model: nn.Module, profile: str | Profile, adapters: bool = True) -> Profile:
    """Switch every unit to ``profile`` and activate its adapters (when ``adapters`` and they exist)."""
    prof, _ = resolve_profile(model, profile)
    return set_unit_profiles(model, dict.fromkeys(state(model).units, prof), adapters)


def snapshot(model: nn.Module) -> tuple[dict[str, Profile], bool]:
    """What :func:`restore` needs to put the model back as it is now (a per-unit mix included)."""
    st = state(model)
    return dict(st.unit_profiles), st.adapters_on


def restore(model: nn.Module, saved: tuple[dict[str, Profile], bool]) -> None:
    """Put the model back in a state saved by :func:`snapshot` (``fp`` if it was never switched)."""
    unit_profiles, adapters = saved
    if unit_profiles:
        set_unit_profiles(model, unit_profiles, adapters)
    else:
        set_profile(model, "fp", adapters)


def refresh(model: nn.Module) -> None:
    """Write the recorded state again: after adapters were added or loaded (they become active where
    the state says so) or the quantizer options changed (profiles are resolved anew)."""
    st = state(model)
    if st.unit_profiles:
        restore(model, snapshot(model))


def set_options(model: nn.Module, options: QuantOptions) -> None:
    """Change the quantizer options of a switchable model (e.g. static activation ranges at inference for
    adapters trained with per-token ones); profiles are resolved anew and the state rewritten."""
    st = state(model)
    st.options = options
    st._resolved.clear()
    refresh(model)


def share_observers(model: nn.Module, key: str | None) -> None:
    """Static activation ranges shared by every profile under ``key`` (e.g. calibrated once while the
    precision switches at random), or per profile again (``None``, the default). Rewrites the state."""
    st = state(model)
    st.shared_observer = key
    refresh(model)


@contextlib.contextmanager
def use_profile(model: nn.Module, profile: str | Profile, adapters: bool = True):
    """``with use_profile(model, 'w4a8'):`` ... restores the previous state on exit."""
    saved = snapshot(model)
    try:
        yield set_profile(model, profile, adapters)
    finally:
        restore(model, saved)


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
