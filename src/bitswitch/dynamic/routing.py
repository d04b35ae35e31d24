"""Per-token widths inside one forward of a switchable (fake-quantized) model.

    with routed(model, widths, router, usage):
        model(ids)          # every block unit runs each token at the width router(unit, x) picks

The units are switched (through :func:`~bitswitch.switching.set_profile`, the one writer of
precision) to the base width (the first: the lowest of a WidthSet); a pre-hook on each unit's first
module asks ``router(unit, x)`` for each token's width index ((N, in) -> (N,) into the widths), and
a hook on each module replaces the rows of tokens routed elsewhere by that module's output at their
width (the base rows computed for them are discarded: fake quantization measures quality, the
runtime measures speed). When every token of the input goes to one width the module's output is
recomputed by the very call a static forward at that width makes, so a router that sends every
token to one width (or a single width) gives that static profile's forward bitwise. Works for any
batch shape, prefill or decoding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F

from ..errors import BitswitchError
from ..quant.functional import fake_quantize_act
from ..switching import adapter_key, resolve_profile, restore, set_profile, snapshot, state, use_profile
from .usage import Usage
from .widths import WidthSet


def is_new_sequence(args, kwargs) -> bool:
    """Whether a model forward starts a sequence: no KV cache given, or an empty one."""
    cache = next((kwargs[k] for k in ("cache", "past_key_values") if kwargs.get(k) is not None), None)
    return cache is None or cache.get_seq_length() == 0


def sequence_marks(model, usage: Usage | None):
    """A forward pre-hook on ``model`` marking each new sequence in ``usage`` (its handle, or None)."""
    if usage is None:
        return None
    return model.register_forward_pre_hook(lambda m, a, kw: usage.new_sequence() if is_new_sequence(a, kw) else None,
                                           with_kwargs=True)


def output_at(mod, x: torch.Tensor, prec, adapter: str | None) -> torch.Tensor:
    """What QuantLinear ``mod`` returns for ``x`` (..., in) at precision ``prec`` with ``adapter``
    active, its state untouched (per-token activation quantization only)."""
    if prec is None or prec.is_fp:
        y = mod.base(x)
    else:
        xq = x if prec.act is None else fake_quantize_act(x, prec.act, None)
        y = mod.base(xq) if prec.weight is None else F.linear(xq, mod.quantized_weight(prec.weight), mod.base.bias)
    if adapter is not None:
        y = y + mod.adapters[adapter](x).to(y.dtype)
    return y


@contextlib.contextmanager
def routed(model, widths: WidthSet | Sequence[str], router, usage: Usage | None = None):
    """Run ``model`` with per-token widths chosen by ``router`` (see the module); restores the
    model's precision on exit. ``usage`` records every decision. ``widths``: a WidthSet (its block
    units are routed), or any profiles (every unit is routed, the head too)."""
    st = state(model)
    names = widths.widths if isinstance(widths, WidthSet) else tuple(widths)
    routed_units = widths.units if isinstance(widths, WidthSet) else list(st.units)
    tables = [resolve_profile(model, w) for w in names]
    for prof, table in tables:
        if any(p.act is not None and p.act.mode == "tensor" for p in table.values()):
            raise BitswitchError(f"width {prof.name!r} quantizes activations with static ranges: dynamic "
                                 "widths need per-token activations (drop --act-mode tensor)")
    base = 0
    saved = snapshot(model)
    set_profile(model, names[base], st.adapters_on)
    choice: dict[str, torch.Tensor] = {}

    def decide(mod, args, unit):
        x = args[0]
        idx = router(unit, x.reshape(-1, x.shape[-1]))
        choice[unit] = idx
        if usage is not None:
            usage.record(unit, idx)

    def replace(mod, args, y, unit):
        idx = choice[unit]
        if bool((idx == base).all()):
            return y
        x = args[0]
        flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]).clone()
        for j in idx.unique().tolist():
            if j == base:
                continue
            prof, table = tables[j]
            prec = table[unit]
            key = adapter_key(st.keying, prof, prec) if st.adapters_on else None
            key = key if key in mod.adapters else None
            if bool((idx == j).all()):   # the whole input at one width: the same call as a static forward
                return output_at(mod, x, prec, key)
            rows = (idx == j).nonzero()[:, 0]
            flat_y[rows] = output_at(mod, flat_x[rows], prec, key)
        return flat_y.view_as(y)

    handles = [h for h in [sequence_marks(model, usage)] if h is not None]
    try:
        for unit in routed_units:
            mods = [model.get_submodule(n) for n in st.units[unit]]
            handles.append(mods[0].register_forward_pre_hook(partial(decide, unit=unit)))
            handles += [m.register_forward_hook(partial(replace, unit=unit)) for m in mods]
        yield
    finally:
        for h in handles:
            h.remove()
        restore(model, saved)


@contextlib.contextmanager
def static_profile(model, widths: WidthSet, profile, usage: Usage | None = None):
    """Run ``model`` at a static ``profile`` (``use_profile``), counting every token of every unit in
    ``usage`` at the width the profile gives it (each must be one of ``widths``)."""
    _, table = resolve_profile(model, profile)
    index = {u: widths.index_of(table[u]) for u in widths.units}

    def pre(mod, args, kwargs):
        if is_new_sequence(args, kwargs):
            usage.new_sequence()
        ids = kwargs.get("input_ids", args[0] if args else None)
        for u, i in index.items():
            usage.counts[u][i] += ids.numel()

    with use_profile(model, profile, state(model).adapters_on):
        handle = model.register_forward_pre_hook(pre, with_kwargs=True) if usage is not None else None
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()
