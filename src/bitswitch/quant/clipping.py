"""Learned weight clipping: pure maths (OmniQuant's learnable weight clipping, trained LSQ-style).

A clip is one parameter per output channel (per-channel quantizers) or per group of input columns
(group quantizers) -- two for asymmetric quantizers, one on the minimum and one on the maximum.
Its factor ``f = clamp(theta, CLIP_MIN, 1)`` multiplies the range before the scale is computed:

* symmetric: ``s = fp16(f * amax / qmax)`` instead of ``fp16(amax / qmax)``;
* asymmetric: ``[f_lo * min, f_hi * max]`` instead of ``[min, max]`` (widened to include 0 as usual).

``theta`` starts at exactly 1, where every operation below is the one
:func:`~bitswitch.quant.functional.quantize_weight` does (``x * 1.0 == x``), so an untrained clip
gives the round-to-nearest grid bit for bit. The factor is a clamp, not OmniQuant's sigmoid,
because a sigmoid never reaches 1 exactly; the trainer projects ``theta`` back into
``[CLIP_MIN, 1]`` after every update (:func:`project_`), so the clamp never holds a gradient at zero
for longer than one step.

The gradient reaches ``theta`` through the scale, with a straight-through estimator on rounding
and on the fp16 rounding of the scale: ``d x_hat / d s`` is ``round(x/s) - x/s`` for a weight inside
the range and ``+-qmax`` (the clamped code) for a clipped one (LSQ's step-size gradient): clipped
weights pull the range out, the others' rounding errors push it in. The weight's own range is a
statistic (detached); a trainable weight gets the straight-through gradient, zero where clipped.

Only uniform quantizers of at most 8 bits on the ``independent`` grid take a clip: the nested grid's
widths are slices of one int8 master (a clip per width would break the nesting) and the gguf grid
is llama.cpp's own scale rule.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from .config import WeightQuant
from .functional import _grouped, qrange, scale_dtype

CLIP_MIN = 0.25   # the smallest factor: a quarter of the range (2-bit groups can want ~0.5)


def supports_clip(cfg: WeightQuant | None) -> bool:
    """Whether ``cfg`` can take a learned clip."""
    return cfg is not None and cfg.grid == "independent" and cfg.method == "uniform" and cfg.bits <= 8


def clip_key(cfg: WeightQuant) -> str:
    """The name a clip is stored under: ``w4g32``, ``w8``, ``w4g32-asym`` (read by :func:`parse_clip_key`)."""
    if not supports_clip(cfg):
        raise ValueError(f"w{cfg.bits} on the {cfg.grid} grid ({cfg.method}) takes no learned clip")
    return f"w{cfg.bits}" + (f"g{cfg.group_size}" if cfg.group_size else "") + ("" if cfg.symmetric else "-asym")


_KEY = re.compile(r"w([2-8])(?:g([1-9][0-9]*))?(-asym)?")


def parse_clip_key(key: str) -> WeightQuant:
    m = _KEY.fullmatch(key)
    if m is None:
        raise ValueError(f"{key!r} is not a clip key (like w4g32, w8, w4g32-asym)")
    return WeightQuant(int(m[1]), int(m[2]) if m[2] else None, m[3] is None)


def clip_shape(out_features: int, in_features: int, cfg: WeightQuant) -> tuple[int, ...]:
    """(out, groups) for a symmetric quantizer, (2, out, groups) -- [min factor, max factor] -- for
    an asymmetric one."""
    if cfg.group_size is not None and in_features % cfg.group_size:
        raise ValueError(f"group size {cfg.group_size} does not divide the {in_features} input columns")
    groups = 1 if cfg.group_size is None else in_features // cfg.group_size
    return (out_features, groups) if cfg.symmetric else (2, out_features, groups)


def init_clip(out_features: int, in_features: int, cfg: WeightQuant, device=None) -> Tensor:
    """The untrained clip: every factor exactly 1 (the round-to-nearest grid)."""
    return torch.ones(clip_shape(out_features, in_features, cfg), device=device)


def clip_factor(theta: Tensor) -> Tensor:
    """``theta`` -> factor in ``[CLIP_MIN, 1]`` (a clamp: the identity, gradient included, inside)."""
    return theta.clamp(CLIP_MIN, 1.0)


@torch.no_grad()
def project_(theta: Tensor) -> Tensor:
    """Put ``theta`` back into ``[CLIP_MIN, 1]`` in place (after an optimizer step)."""
    return theta.clamp_(CLIP_MIN, 1.0)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _ScaleSTE(torch.autograd.Function):
    """The scale rounded to its stored dtype (and an underflow to 0 made 1), identity gradient."""

    @staticmethod
    def forward(ctx, s, dtype):
        s = s.to(dtype).float()
        return torch.where(s > 0, s, torch.ones_like(s))

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def clipped_qparams(w: Tensor, cfg: WeightQuant, theta: Tensor) -> tuple[Tensor, Tensor | None]:
    """Scale (out, groups) and zero point (or None) of ``w`` (out, in) under the clip ``theta``
    (:func:`clip_shape`); differentiable in ``theta``. At ``theta == 1`` bitwise
    :func:`~bitswitch.quant.functional.weight_qparams`."""
    wg = _grouped(w.detach().float(), cfg.group_size)
    lo, hi = wg.amin(-1), wg.amax(-1)
    f = clip_factor(theta)
    sd = scale_dtype(cfg.bits)
    if cfg.symmetric:
        amax = torch.maximum(lo.abs(), hi.abs()) * f
        raw = amax / float(qrange(cfg.bits, True)[1])
        raw = torch.where(raw > 0, raw, torch.ones_like(raw))
        return _ScaleSTE.apply(raw, sd), None
    qmax = 2**cfg.bits - 1
    xmin = (lo * f[0]).clamp(max=0.0)
    raw = (hi * f[1]).clamp(min=0.0) - xmin
    raw = raw / qmax
    raw = torch.where(raw == 0, torch.ones_like(raw), raw)
    scale = _ScaleSTE.apply(raw, sd)
    zero = _RoundSTE.apply(-xmin / scale).clamp(0, qmax)
    return scale, zero


def _clipped_codes(w: Tensor, cfg: WeightQuant, theta: Tensor):
    """Float codes (out, groups, group) -- STE-rounded, clamped -- with the scale and zero."""
    scale, zero = clipped_qparams(w, cfg, theta)
    wg = _grouped(w.float(), cfg.group_size)
    s = scale.unsqueeze(-1)
    q = _RoundSTE.apply(wg / s)
    if zero is not None:
        q = q + zero.unsqueeze(-1)
    lo, hi = qrange(cfg.bits, zero is None)
    return q.clamp(lo, hi), scale, zero


def quantize_weight_clipped(w: Tensor, cfg: WeightQuant, theta: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(codes int32 (out, in), scale, zero)`` like :func:`~bitswitch.quant.functional.quantize_weight`,
    on the clipped grid (no gradient)."""
    with torch.no_grad():
        q, scale, zero = _clipped_codes(w, cfg, theta)
    return q.reshape(w.shape).to(torch.int32), scale, zero


def fake_quantize_weight_clipped(w: Tensor, cfg: WeightQuant, theta: Tensor) -> Tensor:
    """Quantize + dequantize ``w`` (out, in) on the clipped grid, differentiable in ``theta`` (and in
    ``w``: straight through, zero where clipped); the value is bitwise
    ``dequantize_weight(*quantize_weight_clipped(w, cfg, theta), cfg)`` in ``w``'s dtype."""
    q, scale, zero = _clipped_codes(w, cfg, theta)
    if zero is not None:
        q = q - zero.unsqueeze(-1)
    return (q * scale.unsqueeze(-1)).reshape(w.shape).to(w.dtype)
