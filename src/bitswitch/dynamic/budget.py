"""Fitting one scalar of a controller so its realized cost per token meets a budget.

A controller's cost falls as its scalar grows (the threshold of ThresholdController, the price
per bit of GateController), but only roughly: a lower width on one unit changes the inputs of the
units after it. So the fit runs real passes: step out from a first guess, doubling the step, until
the budget is bracketed, then bisect; it keeps the scalar whose cost came nearest.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .usage import Usage


def fit_scalar(measure: Callable[[float], float], start: float, budget: float, tol: float, max_iter: int,
               step: float = 0.5) -> tuple[float, float]:
    """``measure(x)``: the realized cost at scalar ``x`` (falling in x). Returns the ``(x, cost)``
    nearest ``budget`` among at most ``max_iter`` measured, stopping once within ``tol``."""
    x, above, below, best = start, None, None, None       # above / below: scalars known to cost more / less
    for _ in range(max_iter):
        got = measure(x)
        if best is None or abs(got - budget) < abs(best[1] - budget):
            best = (x, got)
        if abs(got - budget) <= tol:
            break
        if got > budget:
            above = x
            x = (x + below) / 2 if below is not None else x + step
        else:
            below = x
            x = (x + above) / 2 if above is not None else x - step
        step *= 2
    return best


@torch.inference_mode()
def realized_cost(controller, model, batches, by: str = "bits") -> float:
    """The cost per token ``controller`` (with ``install`` and ``widths``) realizes over ``batches``
    ((1, T) id tensors)."""
    usage = Usage(controller.widths)
    device = next(model.parameters()).device
    with controller.install(model, usage):
        for ids in batches:
            model(ids.to(device))
    return usage.realized(by)
