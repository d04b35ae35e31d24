"""Per-token widths on the packed runtime: :func:`~.routing.routed`'s contract over
:class:`bitswitch.runtime.Runtime`, where the speed is real.

A pre-hook on each block unit asks ``router(unit, x)`` for each token's width; when every token of
the forward agrees (always, when decoding one sequence) the unit is switched to that width through
``Runtime.set_unit_profile`` (constant time) before its one matmul runs, so a token routed low reads only the low
width's packed weights. When tokens disagree (a prefill), the unit runs at the lowest width and the
rows routed higher are recomputed at theirs (``forward`` called directly, hooks not re-entered).
"""

from __future__ import annotations

import contextlib
from functools import partial

import torch

from .usage import Usage
from .widths import WidthSet


@contextlib.contextmanager
def runtime_routed(runtime, widths: WidthSet, router, usage: Usage | None = None):
    """Run ``runtime`` with per-token widths chosen by ``router``; the widths must be packed profiles.
    Leaves every unit at the top width on exit."""
    for w in widths.widths:
        runtime.check_profile(w)
    top = len(widths.widths) - 1
    units = dict(runtime.model.units())
    choice: dict[str, torch.Tensor] = {}

    names = widths.widths

    def decide(mod, args, unit):
        x = args[0]
        idx = router(unit, x.reshape(-1, x.shape[-1]))
        if usage is not None:
            usage.record(unit, idx)
        if idx.numel() == 1:   # decoding one sequence, the common case: one switch, nothing to replace
            choice[unit] = None
            runtime.set_unit_profile(unit, names[int(idx)])
            return
        first = int(idx[0])
        uniform = bool((idx == first).all())
        choice[unit] = None if uniform else idx
        runtime.set_unit_profile(unit, names[first] if uniform else names[0])

    def replace(mod, args, y, unit):
        idx = choice[unit]
        if idx is None:
            return y
        x = args[0]
        flat_x, flat_y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]).clone()
        for j in idx.unique().tolist():
            if j != 0:
                rows = (idx == j).nonzero()[:, 0]
                runtime.set_unit_profile(unit, names[j])
                flat_y[rows] = mod.forward(flat_x[rows])
        runtime.set_unit_profile(unit, names[0])
        return flat_y.view_as(y)

    runtime.set_profile(widths.widths[top])
    handles = []
    try:
        for unit in widths.units:
            handles.append(units[unit].register_forward_pre_hook(partial(decide, unit=unit)))
            handles.append(units[unit].register_forward_hook(partial(replace, unit=unit)))
        yield
    finally:
        for h in handles:
            h.remove()
        runtime.set_profile(widths.widths[top])
