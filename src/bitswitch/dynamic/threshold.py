"""ThresholdController: each unit runs each token at the lowest width whose estimated error is
under one global threshold, fitted on calibration data so the realized cost meets a budget.

The error estimate of running unit ``u`` at width ``w`` instead of the top width on input ``x`` is
a random sketch of the output error ``(W_w - W_top) x``:

    err(u, w, x) = ||P_w x||,    P_w = S (W_w - W_top)    (r x in, S: r x out Gaussian of variance 1/r)

so ``E err^2 = ||(W_w - W_top) x||^2`` (Johnson-Lindenstrauss): token-dependent in direction, not
only in norm (a plain ``||x|| ||W_w - W_top||`` ties every token of a unit after a norm layer, whose
inputs all have about the same norm), at r / out of the unit's cost. ``P_w`` is computed once
per unit and width (the top width's is zero, so it is always allowed).

Fitting (:meth:`ThresholdController.fit`): one pass records every unit's estimates on the
calibration tokens, a bisection on those gives a first threshold (ignoring that lower widths change
the inputs of later units), then real routed passes on the log threshold
(:func:`~.budget.fit_scalar`) bring the realized cost within ``tol`` of the budget.
"""

from __future__ import annotations

import math

import torch

from ..switching import resolve_profile, state, unit_modules
from .budget import fit_scalar, realized_cost
from .routing import routed
from .usage import Usage
from .widths import WidthSet

RANK = 16


@torch.no_grad()
def unit_sketches(model, widths: WidthSet, rank: int = RANK, seed: int = 0) -> dict[str, torch.Tensor]:
    """Per block unit, (W, rank, in) float32: ``S (W_w - W_top)`` for each width (zeros for the top)."""
    tables = [resolve_profile(model, w)[1] for w in widths.widths]
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for unit, _, mod in unit_modules(model):
        if unit not in widths.params:
            continue

        def weight(prec):
            if prec.weight is None:
                return mod.weight_out_in().detach().float().clone()
            return mod.quantized_weight(prec.weight).detach().float().clone()   # clone: a shared scratch buffer

        top = weight(tables[-1][unit])
        s = torch.randn(rank, top.shape[0], generator=gen).to(top.device) / math.sqrt(rank)   # this module's rows of S
        part = torch.stack([s @ (weight(t[unit]) - top) for t in tables[:-1]] + [torch.zeros(rank, top.shape[1],
                                                                                            device=top.device)])
        out[unit] = out[unit] + part if unit in out else part
    return out


class ThresholdController:
    """A router for :func:`~.routing.routed`: ``threshold`` is the fitted global scale."""

    def __init__(self, widths: WidthSet, sketches: dict[str, torch.Tensor], threshold: float = 0.0):
        self.widths, self.sketches, self.threshold = widths, sketches, threshold
        self._flat: dict = {}   # (unit, device) -> the sketch as one (in, W * r) matrix
        self.calib_errors: dict[str, torch.Tensor] | None = None   # per unit (N, W): estimates seen by fit()

    @classmethod
    def from_model(cls, model, widths: WidthSet, rank: int = RANK, seed: int = 0) -> ThresholdController:
        return cls(widths, unit_sketches(model, widths, rank, seed))

    def errors(self, unit: str, x: torch.Tensor) -> torch.Tensor:
        """x (N, in) -> (N, W) estimated output error of each width (0 for the top)."""
        w, r, _ = self.sketches[unit].shape
        flat = self._flat.get((unit, x.device))
        if flat is None:   # (in, W * r), laid out once: one matmul per unit and token
            flat = self._flat[(unit, x.device)] = self.sketches[unit].to(x.device).reshape(w * r, -1).t().contiguous()
        return (x.detach().float() @ flat).view(x.shape[0], w, r).norm(dim=-1)

    def __call__(self, unit: str, x: torch.Tensor) -> torch.Tensor:
        """x (N, in) -> (N,) the lowest width index whose estimated error is <= the threshold."""
        return (self.errors(unit, x) <= self.threshold).int().argmax(-1)                  # first allowed

    def install(self, model, usage: Usage | None = None):
        """``with controller.install(model, usage):`` runs the model under this controller."""
        return routed(model, self.widths, self, usage)

    # -- fitting ---------------------------------------------------------------------------------
    def measure(self, model, batches, by: str = "bits") -> float:
        """Realized cost per token of the current threshold over ``batches`` ((1, T) id tensors)."""
        return realized_cost(self, model, batches, by)

    @torch.inference_mode()
    def estimates(self, model, batches) -> dict[str, torch.Tensor]:
        """Per unit, (N, W): the error estimates of every calibration token, all units at the top width."""
        found: dict[str, list] = {u: [] for u in self.widths.units}
        top = len(self.widths.widths) - 1

        def record(unit, x):
            found[unit].append(self.errors(unit, x).cpu())
            return torch.full((x.shape[0],), top, dtype=torch.long, device=x.device)

        with routed(model, self.widths, record):
            for ids in batches:
                model(ids.to(next(model.parameters()).device))
        return {u: torch.cat(v) for u, v in found.items()}

    @staticmethod
    def _estimate(errors, tau: float, costs) -> float:
        return sum(float(costs[u][(e <= tau).int().argmax(-1)].sum()) / len(e) for u, e in errors.items())

    def fit(self, model, batches, budget: float, by: str = "bits", tol: float = 0.02, max_iter: int = 8) -> float:
        """Set ``threshold`` so the realized cost on ``batches`` is within ``tol`` of ``budget``
        (or as near as ``max_iter`` routed passes get); returns the realized cost."""
        self.widths.check_budget(budget, by)
        state(model)
        batches = list(batches)
        if len(self.widths.widths) == 1:
            self.threshold = 0.0
            return self.measure(model, batches, by)
        costs = self.widths.costs(by)
        errors = self.calib_errors = self.estimates(model, batches)
        errs = torch.cat([e[:, :-1].flatten() for e in errors.values()])
        errs = errs[errs > 0]
        lo, hi = math.log(float(errs.min()) / 2), math.log(float(errs.max()) * 2)   # all top .. all lowest
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self._estimate(errors, math.exp(mid), costs) > budget else (lo, mid)

        # real passes on the log threshold (lower widths change later units' inputs)
        def measure(log_tau):
            self.threshold = math.exp(log_tau)
            return self.measure(model, batches, by)

        log_tau, got = fit_scalar(measure, (lo + hi) / 2, budget, tol, max_iter)
        self.threshold = math.exp(log_tau)
        return got
