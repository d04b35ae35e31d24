"""RequestController: one width per request (a whole sequence: prefill and every decoding step),
chosen so the average cost over requests meets a fractional budget.

Each request gets the highest width that keeps the running average cost per request within the
budget (error diffusion), so budget 6 with widths w4g32 / w8 alternates them. On an engine:
``engine.set_profile(controller.next_width())``; on a fake-quantized model :meth:`install` does it
at every forward without a KV cache (a new request), which is what ``bitswitch eval`` runs.
"""

from __future__ import annotations

import contextlib

from ..switching import restore, set_profile, snapshot, state
from .routing import is_new_sequence
from .usage import Usage
from .widths import WidthSet


class RequestController:
    def __init__(self, widths: WidthSet, budget: float, by: str = "bits"):
        widths.check_budget(budget, by)
        self.widths, self.budget, self.by = widths, budget, by
        self._cost = [float(sum(c[i] for c in widths.costs(by).values())) for i in range(len(widths.widths))]
        self.spent, self.requests = 0.0, 0

    def next_index(self) -> int:
        """The width index of the next request (and count it)."""
        n = self.requests + 1
        fits = [i for i, c in enumerate(self._cost) if (self.spent + c) / n <= self.budget + 1e-9]
        i = fits[-1] if fits else 0
        self.spent, self.requests = self.spent + self._cost[i], n
        return i

    def next_width(self) -> str:
        return self.widths.widths[self.next_index()]

    @contextlib.contextmanager
    def install(self, model, usage: Usage | None = None):
        """Switch ``model`` at every new request (a forward without a cache); ``usage`` counts tokens."""
        st = state(model)
        saved = snapshot(model)
        current = [0]

        def pre(mod, args, kwargs):
            if is_new_sequence(args, kwargs):
                current[0] = self.next_index()
                set_profile(model, self.widths.widths[current[0]], st.adapters_on)
                if usage is not None:
                    usage.new_sequence()
            if usage is not None:
                ids = kwargs.get("input_ids", args[0] if args else None)
                usage.record_all(current[0], int(ids.numel()))

        handle = model.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
            restore(model, saved)
