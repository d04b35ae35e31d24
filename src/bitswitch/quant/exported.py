"""ExportedLinear: a unit module loaded from an export, holding real packed low-bit weights.

It computes what :class:`~bitswitch.quant.QuantLinear` computes at the exported profile, from the
stored tensors instead of a float weight:

    y = linear(A(x), W, bias) + lora(x)

with ``A`` the unit's activation fake quantization (it applies at run time, so it is kept),
``W`` the weight dequantized from packed codes + scales (+ zero points) -- bitwise the weight that
fake quantization uses, since export stores exactly the codes and fp16-exact scales it computes --
and ``lora`` the adapter kept apart (merge ``after``; absent when merged ``before``).

Memory: by default the packed codes stay packed and the float weight is rebuilt on every forward
and dropped after it, so only one unit's float weight exists at a time (``cache_weight=True`` keeps
it after the first forward: faster, but as large as the float model). Symmetric 8-bit per-channel
weights with no activation quantization can instead run torch's int8 weight-only kernel
(``aten._weight_int8pack_mm``) on the int8 codes directly; it scales after the matmul, so it agrees
with the dequantized path to float rounding, not bitwise. In torch 2.13 its CPU version is fast
for bf16/fp16 inputs only (at fp32 it is many times slower than MKL's fp32 matmul); the loader
decides when to ask for it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ActQuant, WeightQuant
from .functional import dequantize_weight, fake_quantize_act
from .pack import code_offset, unpack

INT8_WEIGHT = WeightQuant(8, None, True, "uniform")


@functools.lru_cache(maxsize=None)
def int8_kernel_works(device_type: str) -> bool:
    """Whether ``aten._weight_int8pack_mm(x (M, K) float, w (N, K) int8, scales (N,) in x's dtype)``
    exists on ``device_type`` and agrees with ``x @ (w * scales).T`` on a small probe."""
    op = getattr(torch.ops.aten, "_weight_int8pack_mm", None)
    if op is None:
        return False
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3, 64, generator=g).to(device_type)
        w = torch.randint(-127, 128, (24, 64), generator=g, dtype=torch.int8).to(device_type)
        s = (torch.rand(24, generator=g) * 0.01).to(device_type)
        return bool(torch.allclose(op(x, w, s), x @ (w.float() * s[:, None]).t(), rtol=1e-4, atol=1e-5))
    except (RuntimeError, NotImplementedError):
        return False


class ExportedLinear(nn.Module):
    """A linear unit module (out_features, in_features) built from exported tensors.

    Exactly one of ``qweight`` (packed codes, 1-D uint8, with ``scales`` (out, groups) and, when
    asymmetric, ``zeros`` (out, groups)) or ``weight`` (float (out, in), for units whose weights
    stay in floating point) is given; ``weight`` may also be assigned after construction (a weight
    tied to the embedding). ``lora_A`` (r, in) / ``lora_B`` (out, r) are an unmerged adapter,
    ``act_range`` (2,) the calibrated (min, max) of a static activation quantizer. The module takes
    the tensors as they are (no copy; with ``int8_kernel`` the codes are rewritten in place).
    """

    def __init__(self, in_features: int, out_features: int, weight_quant: WeightQuant | None = None,
                 act_quant: ActQuant | None = None, *, qweight: Tensor | None = None,
                 scales: Tensor | None = None, zeros: Tensor | None = None, weight: Tensor | None = None,
                 bias: Tensor | None = None, lora_A: Tensor | None = None, lora_B: Tensor | None = None,
                 lora_scaling: float = 1.0, act_range: Tensor | None = None, cache_weight: bool = False,
                 int8_kernel: bool = False):
        super().__init__()
        if (weight_quant is None) != (qweight is None):
            raise ValueError("a packed weight (qweight) comes with its weight quantizer, and only then")
        if act_quant is not None and act_quant.mode == "tensor" and act_range is None:
            raise ValueError("a static activation quantizer needs its calibrated act_range")
        self.in_features, self.out_features = in_features, out_features
        self.weight_quant, self.act_quant = weight_quant, act_quant
        self.cache_weight = cache_weight
        # the int8 kernel reads the codes as int8 (out, in): shift the stored bytes back in place
        # (uint8 arithmetic wraps, so code + 127 - 127 viewed as int8 is the signed code)
        self.int8 = bool(int8_kernel and weight_quant == INT8_WEIGHT and act_quant is None)
        if self.int8:
            qweight = qweight.sub_(code_offset(8, True)).view(torch.int8).view(out_features, in_features)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)
        self.register_buffer("act_range", act_range)
        # LoRA runs in float32, as LoraAdapter does, whatever it was stored in
        for name, t in (("weight", weight), ("bias", bias), ("lora_A", lora_A), ("lora_B", lora_B)):
            if t is not None and name.startswith("lora"):
                t = t.float()
            self.register_parameter(name, None if t is None else nn.Parameter(t, requires_grad=False))
        self.lora_scaling = lora_scaling
        self._cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}  # never saved

    def dequantized_weight(self, dtype: torch.dtype) -> Tensor:
        """The weight (out, in) in ``dtype``: the float weight, or the codes dequantized."""
        if self.weight is not None:
            return self.weight.to(dtype)
        key = (dtype, self.qweight.device)
        if key in self._cache:
            return self._cache[key]
        cfg = self.weight_quant
        if self.int8:
            codes = self.qweight.to(torch.int32)
        else:
            codes = unpack(self.qweight, cfg.bits, (self.out_features, self.in_features),
                           code_offset(cfg.bits, cfg.symmetric))
        zeros = None if self.zeros is None else self.zeros.to(torch.float32)
        w = dequantize_weight(codes, self.scales.float(), zeros, cfg, dtype)
        if self.cache_weight:
            self._cache[key] = w
        return w

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out)."""
        xq = x
        if self.act_quant is not None:
            rng = None if self.act_range is None else (self.act_range[0], self.act_range[1])
            xq = fake_quantize_act(x, self.act_quant, rng)
        if self.int8:
            y = torch.ops.aten._weight_int8pack_mm(xq.reshape(-1, self.in_features), self.qweight,
                                                   self.scales.reshape(-1).to(xq.dtype))
            y = y.reshape(*xq.shape[:-1], self.out_features)
            if self.bias is not None:
                y = y + self.bias
        else:
            y = F.linear(xq, self.dequantized_weight(xq.dtype), self.bias)
        if self.lora_A is not None:  # the same operations, in the same order, as LoraAdapter
            y = y + ((x.to(self.lora_A.dtype) @ self.lora_A.t()) @ self.lora_B.t() * self.lora_scaling).to(y.dtype)
        return y

    def extra_repr(self) -> str:
        w = self.weight_quant
        wspec = "wfp" if w is None else f"w{w.bits}" + (f"g{w.group_size}" if w.group_size else "")
        aspec = "" if self.act_quant is None else f"a{self.act_quant.bits}"
        lora = "" if self.lora_A is None else f", lora r={self.lora_A.shape[0]}"
        kernel = ", int8 kernel" if self.int8 else ""
        return f"{self.in_features}->{self.out_features}, {wspec}{aspec}{lora}{kernel}"
