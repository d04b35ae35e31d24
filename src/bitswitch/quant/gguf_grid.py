"""llama.cpp's legacy block formats as pure functions, bit for bit: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

A weight (out, in) is cut into blocks of :data:`BLOCK` = 32 consecutive input columns of one row;
every block has its own fp16 scale ``d`` (and, for the ``_1`` formats, an fp16 minimum ``m``).
Everything is computed in float32 in the order of llama.cpp's ``quantize_row_*_ref`` (and of
gguf-py's numpy port, ``gguf.quants``), including their quirks: the codes are computed with the
float32 ``d`` (``id = 1/d``, 0 when ``d == 0``) but dequantized with ``d`` rounded to fp16.

* ``Q8_0`` (8 bits, symmetric): ``d = amax / 127``, ``c = roundf(x * id)`` (half away from zero),
  ``x_hat = c * fp16(d)``; ``c`` in -127..127.
* ``Q4_0`` / ``Q5_0`` (symmetric, ``h = 8`` / ``16``): ``max`` is the block's value of largest
  magnitude *with its sign* (the first one on ties), ``d = max / -h``,
  ``q = min(2h - 1, trunc(x * id + h + 0.5))``, ``x_hat = (q - h) * fp16(d)``. The code
  ``c = q - h`` lies in ``-h .. h-1``: ``max`` itself is ``c = -h`` exactly, the other end of the
  grid is one step short of ``-max``.
* ``Q4_1`` / ``Q5_1`` (asymmetric, ``L = 15`` / ``31``): ``d = (max - min) / L``, ``m = min``,
  ``q = min(L, trunc((x - min) * id + 0.5))``, ``x_hat = fp16(d) * q + fp16(m)`` (a multiply, then an
  add: never fused, as in gguf-py's dequantization).

Codes are returned as int32: symmetric formats the signed ``c``, asymmetric ones the unsigned ``q``.
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK = 32
#: (bits, symmetric) -> the llama.cpp type name
TYPES = {(8, True): "Q8_0", (4, True): "Q4_0", (4, False): "Q4_1", (5, True): "Q5_0", (5, False): "Q5_1"}
BITS = (4, 5, 8)


def gguf_type(bits: int, symmetric: bool) -> str:
    """The llama.cpp type of a width: ``(4, True) -> 'Q4_0'``; ValueError when there is none."""
    name = TYPES.get((bits, symmetric))
    if name is None:
        have = ", ".join(f"w{b}{'' if s else ' asymmetric'} = {t}" for (b, s), t in TYPES.items())
        raise ValueError(f"the gguf grid has no {'symmetric' if symmetric else 'asymmetric'} {bits}-bit "
                         f"format ({have})")
    return name


def _blocks(w: Tensor) -> Tensor:
    """(out, in) -> float32 (out, in // 32, 32)."""
    out, inp = w.shape
    if inp % BLOCK:
        raise ValueError(f"the gguf grid quantizes blocks of {BLOCK} input columns: {inp} is not a multiple of {BLOCK}")
    return w.float().reshape(out, inp // BLOCK, BLOCK)


def _inverse(d: Tensor) -> Tensor:
    # llama.cpp: id = d ? 1.0f/d : 0.0f (an all-zero block gets codes of zero, whatever d's sign)
    return torch.where(d == 0, torch.zeros_like(d), 1.0 / d)


def _roundf(v: Tensor) -> Tensor:
    """C's ``roundf`` (half away from zero), exactly: ``floor(|v| + 0.5)`` would round
    0.49999997 up, since the float32 sum is 1.0. Same formula as gguf-py's ``np_roundf``."""
    a = v.abs()
    f = a.floor()
    return torch.sign(v) * (f + (2 * (a - f)).floor())


def quantize_blocks(w: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(codes, d, m)`` of a weight (out, in) in the format of ``(bits, symmetric)``.

    codes (out, in) int32; ``d`` (out, in // 32) float32 holding fp16 values; ``m`` likewise for
    the asymmetric formats, else None.
    """
    gguf_type(bits, symmetric)
    x = _blocks(w)
    out, inp = w.shape
    if bits == 8:
        d = x.abs().amax(-1, keepdim=True) / 127
        codes = _roundf(x * _inverse(d))
        m = None
    elif symmetric:
        h = 2 ** (bits - 1)
        mx = x.gather(-1, x.abs().argmax(-1, keepdim=True))   # argmax: the first of equal magnitudes
        d = mx / -h
        q = (x * _inverse(d) + (h + 0.5)).trunc_().clamp_(0, 2 * h - 1)
        codes = q.sub_(h)
        m = None
    else:
        levels = 2**bits - 1
        lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
        d = (hi - lo) / levels
        codes = ((x - lo) * _inverse(d) + 0.5).trunc_().clamp_(0, levels)
        m = lo.half().float().squeeze(-1)
    return codes.reshape(out, inp).to(torch.int32), d.half().float().squeeze(-1), m


def dequantize_blocks(codes: Tensor, d: Tensor, m: Tensor | None, out: Tensor | None = None) -> Tensor:
    """Inverse of :func:`quantize_blocks`: codes (out, in) -> float32 (out, in), ``c * d`` or
    ``d * q + m`` per block. ``out``: a float32 (out, in) buffer to write into (same ops, same bits)."""
    rows, inp = codes.shape
    if out is None:
        out = torch.empty(rows, inp, dtype=torch.float32, device=codes.device)
    ob = out.view(rows, inp // BLOCK, BLOCK)
    ob.copy_(codes.reshape(rows, inp // BLOCK, BLOCK))
    ob.mul_(d.unsqueeze(-1))
    if m is not None:
        ob.add_(m.unsqueeze(-1))
    return out


def fake_quantize_q8_blocks(x: Tensor) -> Tensor:
    """llama.cpp's Q8_0 quantization of activations, quantized then dequantized: ``x`` (..., C) with C a
    multiple of 32 -> float32 of the same shape (blocks of 32 along the last dim, as the weights').

    Exactly the Q8_0 weight rule (``d = amax / 127``, ``roundf``, ``c * fp16(d)``). llama.cpp's SIMD
    quantizers round exact ties to even where the reference rounds them away from zero: activations
    that land exactly on ``k + 0.5`` may differ by one step there."""
    shape = x.shape
    if shape[-1] % BLOCK:
        raise ValueError(f"q8_0 activations are blocks of {BLOCK}: the input width {shape[-1]} is not a multiple "
                         f"of {BLOCK}")
    codes, d, _ = quantize_blocks(x.reshape(-1, shape[-1]), 8, True)
    return dequantize_blocks(codes, d, None).reshape(shape)
