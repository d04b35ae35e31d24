"""Lower-precision normalization: quantizers for the weights and outputs of RMSNorm / LayerNorm.

Definitions (``b`` bits, 2-16; both with a straight-through gradient):

* norm weight (the gain ``g``, and LayerNorm's bias ``beta`` on its own), symmetric uniform per
  tensor: ``s = max|g| / (2^(b-1) - 1)``, ``g_hat = clamp(round(g / s), -(2^(b-1)-1), 2^(b-1)-1) * s``
  (an all-zero tensor is returned unchanged); the scale stays in float32.
* norm output ``y`` (..., C), asymmetric uniform per token (last dim), dynamic like the units'
  activations: ``lo = min(min(y), 0)``, ``hi = max(max(y), 0)``, ``s = (hi - lo) / (2^b - 1)``,
  ``z = round(-lo / s)``, ``y_hat = (clamp(round(y / s) + z, 0, 2^b - 1) - z) * s`` (a token whose
  range is 0 is returned unchanged).

:class:`QuantNorm` wraps a norm module; its precision is module state (``norm_bits``: ``None`` runs
the wrapped module itself, bitwise), written only by :func:`bitswitch.norms.set_norm_bits`. A
quantized norm computes ``normalize(x) * g_hat (+ beta_hat)`` the way its architecture does
(Llama's RMSNorm: in float32, cast back before the gain; LayerNorm: ``F.layer_norm``), then
quantizes the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORM_BITS = tuple(range(2, 17))


def check_norm_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in NORM_BITS:
        raise ValueError(f"norm bits must be an integer in 2..16, got {bits!r}")
    return bits


def _ste(x: Tensor, xq: Tensor) -> Tensor:
    return xq if not (x.requires_grad and torch.is_grad_enabled()) else x + (xq - x).detach()


def fake_quantize_norm_weight(w: Tensor, bits: int) -> Tensor:
    """Symmetric uniform per-tensor fake quantization of a norm gain or bias (any shape)."""
    qmax = 2 ** (check_norm_bits(bits) - 1) - 1
    wf = w.detach().float()
    amax = wf.abs().max()
    if amax == 0:
        return w
    s = amax / qmax
    return _ste(w, (torch.round(wf / s).clamp(-qmax, qmax) * s).to(w.dtype))


def fake_quantize_norm_output(y: Tensor, bits: int) -> Tensor:
    """Asymmetric uniform per-token (last dim) dynamic fake quantization of a norm's output."""
    qmax = 2 ** check_norm_bits(bits) - 1
    yf = y.detach().float()
    lo = yf.amin(-1, keepdim=True).clamp(max=0.0)
    hi = yf.amax(-1, keepdim=True).clamp(min=0.0)
    s = (hi - lo) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    z = torch.round(-lo / s)
    yq = (torch.round(yf / s).add(z).clamp(0, qmax).sub(z)).mul(s)
    return _ste(y, yq.to(y.dtype))


def is_norm(module: nn.Module) -> bool:
    """LayerNorm (GPT-2) or an RMSNorm with a gain (Llama family)."""
    if isinstance(module, nn.LayerNorm):
        return module.weight is not None
    return type(module).__name__.endswith("RMSNorm") and isinstance(getattr(module, "weight", None), torch.Tensor) \
        and _rms_eps(module) is not None


def _rms_eps(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps"):
        v = getattr(module, name, None)
        if isinstance(v, (int, float)):
            return float(v)
    return None


class QuantNorm(nn.Module):
    """A norm module with switchable weight and output precision (``norm_bits``; None = the module itself)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        if not is_norm(base):
            raise TypeError(f"QuantNorm wraps LayerNorm or an RMSNorm with a gain, got {type(base).__name__}")
        self.base = base
        self.layer_norm = isinstance(base, nn.LayerNorm)
        self.norm_bits: int | None = None

    def forward(self, x: Tensor) -> Tensor:
        b = self.norm_bits
        if b is None:
            return self.base(x)
        base = self.base
        g = fake_quantize_norm_weight(base.weight, b)
        if self.layer_norm:
            beta = None if base.bias is None else fake_quantize_norm_weight(base.bias, b)
            y = F.layer_norm(x, base.normalized_shape, g, beta, base.eps)
        else:
            dtype = x.dtype
            h = x.float()
            h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + _rms_eps(base))
            y = g * h.to(dtype)
        return fake_quantize_norm_output(y, b)

    def extra_repr(self) -> str:
        return f"norm_bits={self.norm_bits}"
