"""Quantization maths as pure functions.

Conventions (shared by fake quantization and export, so the two agree bit for bit):

* symmetric uniform: ``code = clamp(round(x / s), -(2^(b-1)-1), 2^(b-1)-1)``, ``x_hat = code * s``,
  ``s = amax / (2^(b-1)-1)``  (at most 2^b - 1 levels);
* asymmetric uniform: ``code = clamp(round(x / s) + z, 0, 2^b-1)``, ``x_hat = (code - z) * s``,
  ``s = (max - min) / (2^b-1)`` with the range widened to include 0, ``z = round(-min / s)``;
* log (symmetric): ``x_hat = sign(x) * s * 2^-k`` for ``k`` in ``0 .. 2^(b-1)-2`` or ``x_hat = 0``,
  ``s = amax``; code ``0`` is zero, ``+-(k+1)`` the magnitudes (at most 2^b - 1 levels).

* nested (symmetric, 2-8 bits): one int8 master per weight, ``c8`` and ``s8`` as symmetric 8 bits
  above; width ``b`` keeps the ``b`` most significant bits of ``c8`` (:func:`slice_codes`:
  ``c_b = clamp(sign(c8) * floor((|c8| + 2^(7-b)) / 2^(8-b)), -(2^(b-1)-1), 2^(b-1)-1)``, i.e.
  round half away from zero, then clip), ``s_b = s8 * 2^(8-b)`` (exact: a power of two).

* gguf (4, 5, 8 bits, blocks of 32 input columns): llama.cpp's Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0,
  bit for bit (:mod:`bitswitch.quant.gguf_grid`). Symmetric codes ``c`` give ``c * d``; asymmetric
  ones give ``d * q + m``, where the "zero" these functions pass around is the fp16 block minimum
  ``m`` (a value, not a zero point).

Weight scales are rounded to fp16 for ``bits <= 8`` (fp32 for 16 bits) because export stores them
that way; activation scales are computed on the fly and stay in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import gguf_grid
from .config import ActQuant, WeightQuant


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer code range for ``bits``."""
    if symmetric:
        q = 2 ** (bits - 1) - 1
        return -q, q
    return 0, 2**bits - 1


def scale_dtype(bits: int) -> torch.dtype:
    """The dtype weight scales are stored in (and rounded to) at ``bits``."""
    return torch.float16 if bits <= 8 else torch.float32


def _safe(scale: Tensor) -> Tensor:
    # An all-zero row/group/token would give scale 0 and NaN codes; any positive scale is exact there.
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def compute_qparams(xmin: Tensor, xmax: Tensor, bits: int, symmetric: bool, method: str = "uniform"):
    """Scale and zero point from a range. ``xmin``/``xmax``: any shape, float32.

    Returns ``(scale, zero)`` of the same shape; ``zero`` is None when symmetric.
    """
    if method == "log" or symmetric:
        amax = torch.maximum(xmin.abs(), xmax.abs())
        denom = 1.0 if method == "log" else float(qrange(bits, True)[1])
        return _safe(amax / denom), None
    qmax = 2**bits - 1
    xmin = xmin.clamp(max=0.0)
    scale = (xmax.clamp(min=0.0) - xmin).div_(qmax)
    scale.masked_fill_(scale == 0, 1.0)  # an all-zero range: any positive scale is exact
    zero = xmin.div(scale).neg_().round_()  # in [0, qmax] since xmin <= 0 and scale >= -xmin / qmax
    return scale, zero


def quantize(x: Tensor, scale: Tensor, zero: Tensor | None, bits: int, method: str = "uniform") -> Tensor:
    """Integer codes (as float tensor) of ``x``; ``scale``/``zero`` broadcast against ``x``."""
    if method == "log":
        levels = 2 ** (bits - 1) - 1                      # magnitudes 2^0 .. 2^-(levels-1), and zero
        mag = (x.abs() / scale).clamp(max=1.0)
        k = torch.round(-torch.log2(mag.clamp(min=2.0 ** -(levels + 8))))
        # below half the smallest magnitude rounds to zero (log2 of 0.5*2^-(levels-1) is -levels)
        code = torch.where(k <= levels - 1, levels - k, torch.zeros_like(k))
        return code.clamp(0, levels) * torch.sign(x)
    lo, hi = qrange(bits, zero is None)
    q = torch.round(x / scale)
    if zero is not None:
        q = q + zero
    return q.clamp(lo, hi)


def dequantize(code: Tensor, scale: Tensor, zero: Tensor | None, bits: int, method: str = "uniform") -> Tensor:
    if method == "log":
        levels = 2 ** (bits - 1) - 1
        mag = torch.exp2(code.abs() - levels)            # code c>0 -> 2^-(levels-c)
        return torch.where(code == 0, torch.zeros_like(mag), torch.sign(code) * mag * scale)
    if zero is not None:
        code = code - zero
    return code * scale


def weight_qparams(w: Tensor, cfg: WeightQuant) -> tuple[Tensor, Tensor | None]:
    """Per-channel or per-group scale/zero of a weight ``w`` of shape (out, in).

    Returns tensors of shape (out, 1) per channel or (out, in // group_size) per group; the scale is
    rounded to :func:`scale_dtype` and returned as float32.
    """
    wg = _grouped(w.float(), cfg.group_size)
    return range_qparams(wg.amin(-1), wg.amax(-1), cfg)


def range_qparams(wmin: Tensor, wmax: Tensor, cfg: WeightQuant) -> tuple[Tensor, Tensor | None]:
    """:func:`weight_qparams` from a given range per row or group (``wmin``/``wmax``: (out, groups)),
    so that a clipped range (a range search) gets the same scale rounding and zero point rule."""
    scale, zero = compute_qparams(wmin, wmax, cfg.bits, cfg.symmetric, cfg.method)
    sd = scale_dtype(cfg.bits)
    scale = _safe(scale.to(sd).float())   # what export stores; an fp16 underflow to 0 becomes 1
    if zero is not None and cfg.method == "uniform":  # recompute with the rounded scale
        zero = torch.round(-wmin.clamp(max=0.0) / scale).clamp(0, 2**cfg.bits - 1)
    return scale, zero


def _grouped(w: Tensor, group_size: int | None) -> Tensor:
    """(out, in) -> (out, groups, group) view; one group per row when ``group_size`` is None."""
    out, inp = w.shape
    if group_size is None:
        return w.reshape(out, 1, inp)
    if inp % group_size:
        raise ValueError(f"group size {group_size} does not divide the {inp} input columns")
    return w.reshape(out, inp // group_size, group_size)


def nested_master(cfg: WeightQuant) -> WeightQuant:
    """The int8 master quantizer a nested ``cfg`` slices (same groups)."""
    return WeightQuant(8, cfg.group_size, True, "uniform")


def slice_codes(master: Tensor, bits: int) -> Tensor:
    """The ``bits`` most significant bits of symmetric int8 codes ``master`` (any shape, integers
    in -127..127): ``clamp(sign(c) * floor((|c| + 2^(7-bits)) / 2^(8-bits)), -(2^(bits-1)-1),
    2^(bits-1)-1)``, computed in integers (round half away from zero, so ``slice(-c) ==
    -slice(c)``). Returns int32; ``bits == 8`` returns the codes unchanged."""
    c = master.to(torch.int32)
    shift = 8 - bits
    if shift == 0:
        return c
    mag = (c.abs() + (1 << (shift - 1))) >> shift
    q = 2 ** (bits - 1) - 1
    return (torch.sign(c) * mag).clamp_(-q, q)


def quantize_weight(w: Tensor, cfg: WeightQuant) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(codes, scale, zero)`` of a weight (out, in): codes (out, in) as int32, scale/zero (out, groups)
    (for the gguf grid, ``zero`` is the block minimum ``m`` of the asymmetric formats)."""
    if cfg.grid == "gguf":
        return gguf_grid.quantize_blocks(w, cfg.bits, cfg.symmetric)
    if cfg.grid == "nested":
        codes, scale, _ = quantize_weight(w, nested_master(cfg))
        return slice_codes(codes, cfg.bits), scale * 2.0 ** (8 - cfg.bits), None
    scale, zero = weight_qparams(w, cfg)
    wg = _grouped(w.float(), cfg.group_size)
    code = quantize(wg, scale.unsqueeze(-1), None if zero is None else zero.unsqueeze(-1), cfg.bits, cfg.method)
    return code.reshape(w.shape).to(torch.int32), scale, zero


def dequantize_weight(code: Tensor, scale: Tensor, zero: Tensor | None, cfg: WeightQuant,
                      dtype: torch.dtype = torch.float32, out: Tensor | None = None) -> Tensor:
    """Inverse of :func:`quantize_weight`: codes (out, in) -> weight (out, in) in ``dtype``.

    ``out``: a float32 (out, in) buffer to write into instead of allocating (uniform quantizers;
    the same float ops in the same order, so bitwise the allocating result).
    """
    if cfg.grid == "gguf":
        buf = out if out is not None and out.dtype == torch.float32 == dtype else None
        return gguf_grid.dequantize_blocks(code, scale, zero, out=buf).to(dtype)
    if out is not None and cfg.method == "uniform" and out.dtype == torch.float32 == dtype:
        og = _grouped(out, cfg.group_size)
        og.copy_(_grouped(code, cfg.group_size))
        if zero is not None:
            og.sub_(zero.unsqueeze(-1))
        return og.mul_(scale.unsqueeze(-1)).reshape(code.shape)
    cg = _grouped(code.float(), cfg.group_size)
    w = dequantize(cg, scale.unsqueeze(-1), None if zero is None else zero.unsqueeze(-1), cfg.bits, cfg.method)
    return w.reshape(code.shape).to(dtype)


def fake_quantize_weight(w: Tensor, cfg: WeightQuant) -> Tensor:
    """Quantize then dequantize a weight (out, in); same dtype and shape as ``w``; no gradient."""
    with torch.no_grad():
        return dequantize_weight(*quantize_weight(w, cfg), cfg, dtype=w.dtype)


def act_range(x: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """(min, max) of ``x`` (..., C): per token (..., 1) or per tensor (scalars), float32."""
    if mode == "token":
        lo, hi = torch.aminmax(x.detach(), dim=-1, keepdim=True)
    else:
        lo, hi = torch.aminmax(x.detach())
    return lo.float(), hi.float()


def _fake_quant(x: Tensor, scale: Tensor, zero: Tensor | None, bits: int, method: str) -> Tensor:
    """quantize + dequantize of ``x`` in ``x``'s dtype; the uniform case in place on one buffer,
    since this runs on every unit input at every step."""
    xf = x.float()
    if method == "log":
        out = dequantize(quantize(xf, scale, zero, bits, method), scale, zero, bits, method)
    else:
        lo, hi = qrange(bits, zero is None)
        out = xf / scale
        out.round_()
        if zero is not None:
            out.add_(zero)
        out.clamp_(lo, hi)
        if zero is not None:
            out.sub_(zero)
        out.mul_(scale)
    return out.to(x.dtype)


class _BlockQ8STE(torch.autograd.Function):
    """llama.cpp's q8_0 activation blocks with a straight-through gradient (amax ranges clip nothing)."""

    @staticmethod
    def forward(ctx, x):
        return gguf_grid.fake_quantize_q8_blocks(x).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _FakeQuantSTE(torch.autograd.Function):
    """Fake quantization with a straight-through estimator.

    Saves nothing for a dynamic (per-token) range: nothing is clipped there, so the gradient is
    the identity. A static range can clip; then only a bool mask (1 byte/element) is saved.
    """

    @staticmethod
    def forward(ctx, x, scale, zero, bits, method, clip):
        out = _fake_quant(x, scale, zero, bits, method)
        ctx.clip = clip
        if clip:
            xf = x.float()
            if method == "log":
                mask = xf.abs() <= scale
            else:
                lo, hi = qrange(bits, zero is None)
                raw = xf / scale + (0 if zero is None else zero)
                mask = (raw >= lo - 0.5) & (raw <= hi + 0.5)
            ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx, grad):
        if ctx.clip:
            (mask,) = ctx.saved_tensors
            grad = grad * mask
        return grad, None, None, None, None, None


def fake_quantize_act(x: Tensor, cfg: ActQuant, static_range: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Fake-quantize an activation ``x`` (..., C) with an STE gradient.

    ``cfg.mode == 'token'``: the range comes from each token (last dim) of ``x`` itself.
    ``cfg.mode == 'tensor'``: ``static_range`` (min, max scalars from an observer) is required.
    ``cfg.mode == 'q8_0'``: llama.cpp's blocks of 32 (:func:`gguf_grid.fake_quantize_q8_blocks`).
    """
    if cfg.mode == "q8_0":
        if not (x.requires_grad and torch.is_grad_enabled()):
            return gguf_grid.fake_quantize_q8_blocks(x).to(x.dtype)
        return _BlockQ8STE.apply(x)
    if cfg.mode == "token":
        lo, hi = act_range(x, "token")
        clip = False
    else:
        if static_range is None:
            raise ValueError("static (per-tensor) activation quantization needs a calibrated range")
        lo, hi = static_range
        clip = True
    scale, zero = compute_qparams(lo, hi, cfg.bits, cfg.symmetric, cfg.method)
    if not (x.requires_grad and torch.is_grad_enabled()):  # inference: skip the autograd machinery
        return _fake_quant(x, scale, zero, cfg.bits, cfg.method)
    return _FakeQuantSTE.apply(x, scale, zero, cfg.bits, cfg.method, clip)
