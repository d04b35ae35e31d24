"""A learned grid: weights, scales and zero points trained through rounding (EfficientQAT's Block-AP,
OmniQuant's reconstruction objective), as pure functions.

Round-to-nearest fixes the scale from the weight's range and each code from the weight alone; GPTQ
keeps the scale and picks the codes. A learned grid trains all three -- a copy of the weight ``w``
(out, in), the scale ``s`` and, for asymmetric quantizers, the zero point ``z`` (both (out, groups))
-- through the straight-through estimator, so that a block's output at that width matches the
floating-point block's (:mod:`bitswitch.prepare.recon` runs the optimization). The floating-point
weights are never changed: what comes out is a rounding, codes plus scales plus zeros, for one
quantizer only, which ``QuantLinear.set_rounding`` takes like a GPTQ rounding.

Forward values (gradients pass every rounding unchanged)::

    s_r = fp16(max(s, SCALE_MIN))              # the dtype export stores scales in
    z_r = clamp(round(z), 0, qmax)             # asymmetric only; stored as uint8
    q   = clamp(round(w / s_r) + z_r, lo, hi)  # lo, hi = qrange(bits, symmetric)
    w_q = (q - z_r) * s_r

computed in float32 on the grouped (out, groups, group) layout, so that :func:`learned_codes` followed
by :func:`~bitswitch.quant.functional.dequantize_weight` gives ``w_q`` bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import WeightQuant
from .functional import _grouped, qrange, range_qparams, weight_qparams

SCALE_MIN = 2.0 ** -20   # scales are clamped here before the fp16 rounding (a zero scale has no codes)


def supports_learned_grid(cfg: WeightQuant | None) -> bool:
    """Uniform quantizers of 2-8 bits on the independent grid (the nested grid's widths are slices of
    one master; the gguf grid is llama.cpp's fixed rule)."""
    return cfg is not None and cfg.grid == "independent" and cfg.method == "uniform" and 2 <= cfg.bits <= 8


def _ste(x: Tensor, value: Tensor) -> Tensor:
    """``value`` forward, the identity's gradient backward."""
    return x + (value - x).detach()


def init_grid(w: Tensor, cfg: WeightQuant) -> tuple[Tensor, Tensor | None]:
    """The round-to-nearest grid of ``w`` (out, in) as float32 ``(scale, zero)`` (out, groups): the
    starting point, where :func:`learned_fake_quantize` equals round to nearest."""
    scale, zero = weight_qparams(w.detach(), cfg)
    return scale.clone(), None if zero is None else zero.clone()


INITS = ("rtn", "search")


def search_grid(w: Tensor, cfg: WeightQuant, steps: int = 20, min_shrink: float = 0.5
                ) -> tuple[Tensor, Tensor | None]:
    """A clipped starting grid (OmniQuant's and AWQ's clip search): per row or group, the range
    ``shrink * [min, max]`` for ``shrink`` in ``1, ..., min_shrink`` (``steps + 1`` values) whose
    :func:`learned_fake_quantize` has the least squared weight error. ``shrink = 1`` is round to
    nearest and wins ties, so no group's weight error is ever above round to nearest's. At 2-3 bits
    the min-max range wastes most levels on a few outliers; clipping them halves the error of the rest.
    Returns float32 ``(scale, zero)`` (out, groups), as :func:`init_grid`."""
    if not (steps >= 1 and 0 < min_shrink < 1):
        raise ValueError(f"search_grid needs steps >= 1 and 0 < min_shrink < 1, got {steps} and {min_shrink}")
    w = w.detach().float()
    wg = _grouped(w, cfg.group_size)
    wmin, wmax = wg.amin(-1), wg.amax(-1)
    best_scale, best_zero = init_grid(w, cfg)
    best_err = _group_error(w, best_scale, best_zero, cfg)
    for i in range(1, steps + 1):
        shrink = 1.0 - (1.0 - min_shrink) * i / steps
        scale, zero = range_qparams(wmin * shrink, wmax * shrink, cfg)
        err = _group_error(w, scale, zero, cfg)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        if zero is not None:
            best_zero = torch.where(better, zero, best_zero)
    return best_scale, best_zero


def _group_error(w: Tensor, scale: Tensor, zero: Tensor | None, cfg: WeightQuant) -> Tensor:
    """Squared error of the grid's weight per row or group: (out, groups)."""
    with torch.no_grad():
        d = learned_fake_quantize(w, scale, zero, cfg) - w
        return _grouped(d, cfg.group_size).pow(2).sum(-1)


def _rounded_grid(scale: Tensor, zero: Tensor | None, cfg: WeightQuant) -> tuple[Tensor, Tensor | None]:
    s = scale.clamp(min=SCALE_MIN)
    s = _ste(s, s.detach().half().float())
    if zero is None:
        return s, None
    z = zero.clamp(0, 2 ** cfg.bits - 1)
    return s, _ste(z, z.detach().round())


def learned_fake_quantize(w: Tensor, scale: Tensor, zero: Tensor | None, cfg: WeightQuant) -> Tensor:
    """``w_q`` (out, in), differentiable in ``w``, ``scale`` and ``zero`` (straight-through)."""
    s, z = _rounded_grid(scale, zero, cfg)
    lo, hi = qrange(cfg.bits, cfg.symmetric)
    wg = _grouped(w.float(), cfg.group_size)
    s3 = s.unsqueeze(-1)
    x = wg / s3
    q = _ste(x, x.detach().round())
    if z is not None:
        q = q + z.unsqueeze(-1)
    q = q.clamp(lo, hi)
    if z is not None:
        q = q - z.unsqueeze(-1)
    return (q * s3).reshape(w.shape)


def learned_codes(w: Tensor, scale: Tensor, zero: Tensor | None, cfg: WeightQuant
                  ) -> tuple[Tensor, Tensor, Tensor | None]:
    """The rounding a learned grid stands for: ``(codes int32 (out, in), scale float32 (fp16 values),
    zero float32 (integers) | None)``, as ``QuantLinear.set_rounding`` takes it."""
    with torch.no_grad():
        s, z = _rounded_grid(scale.detach(), None if zero is None else zero.detach(), cfg)
        lo, hi = qrange(cfg.bits, cfg.symmetric)
        q = (_grouped(w.detach().float(), cfg.group_size) / s.unsqueeze(-1)).round()
        if z is not None:
            q = q + z.unsqueeze(-1)
        codes = q.clamp(lo, hi).reshape(w.shape).to(torch.int32)
        return codes, s.clone(), None if z is None else z.clone()
