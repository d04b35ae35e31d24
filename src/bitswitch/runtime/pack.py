"""Packed low-bit weights that torch's CPU kernels multiply directly, and the exact map from
bitswitch's fake-quantization grids onto them.

Shapes: a weight is (N, K) = (out_features, in_features); ``matmul`` takes x (M, K) bfloat16
(contiguous) and returns (M, N) bfloat16; ``dequantize`` returns the float32 (N, K) weight the
kernel multiplies by, bit for bit.

Kernels (torch 2.13 CPU, semantics established by experiment on this build):

* ``aten._weight_int8pack_mm(x (M, K) bf16, w (N, K) int8, scales (N,) bf16) -> (M, N) bf16``:
  ``y = (x @ w.T) * scales``, accumulated in float32, rounded once to bf16. Scales must be in x's
  dtype. K must be a multiple of 16: other K crash the process (segfault), so :func:`pack_int8`
  refuses them.
* ``aten._convert_weight_to_int4pack_for_cpu(q (N, K) int32 in 0..15, inner_k_tiles) -> (N, K/2)
  uint8`` in a blocked nibble layout (not plain row-major pairs; ``inner_k_tiles`` is ignored on
  CPU). N must be a multiple of 16.
* ``aten._weight_int4pack_mm_for_cpu(x (M, K) bf16, packed, group, scales_and_zeros (K/group, N, 2)
  bf16) -> (M, N) bf16`` with ``w[n, k] = (q[n, k] - 8) * scale[k/group, n] + zero[k/group, n]``:
  the zero is a float offset added after scaling (gpt-fast / torchao's convention), not an
  integer zero point. The dequantization runs in float32 (a probe that cancels two weights whose
  products need 12 bits sees the float32 value at M = 1..2048, never a bf16-rounded weight), the
  accumulation in float32, one bf16 rounding at the end. group in {32, 64, 128, 256}, K % group == 0.

The map from bitswitch's grids (``quant.functional``: codes + fp16-rounded scales, held in float32):

* symmetric b <= 4 bits (codes in -(2^(b-1)-1)..2^(b-1)-1, so -7..7 at 4 bits; level -8 unused):
  ``q = code + 8`` (1..15 at 4 bits), ``scale = bf16(s)``, ``zero = 0``, so ``w = code * bf16(s)``.
  Per-channel weights use the kernel's groups with the channel's scale repeated in every group.
* asymmetric b <= 4 bits (codes 0..2^b-1, integer zero point z): ``q = code``, ``scale = bf16(s)``,
  ``zero = bf16((8 - z) * bf16(s))``, so ``w = (code - 8) * bf16(s) + bf16((8 - z) * bf16(s))``.
* symmetric per-channel b <= 8 bits: int8 codes as they are, ``scales = bf16(s)``.
* everything else (per-group 5-8 bits, asymmetric 5-8 bits, 16 bits, the log quantizer, shapes the
  kernels refuse): :class:`PackedDequant`, bitswitch's own codes and float32 scales, dequantized
  bitwise at every call and rounded to bf16 for a bf16 matmul.

Exactness (``dequantize()`` against bitswitch's ``fake_quantize_weight``, float32):

* int8 / symmetric int4: ``dequantize() == dequantize_weight(codes, bf16(s), None, cfg)`` bitwise
  (``code * bf16(s)`` has at most 8 + 8 significant bits, exact in float32); so it equals the
  fake-quantized weight bitwise whenever the fp16 scale is bf16-representable (its 3 low mantissa
  bits are zero, e.g. a power of two), and otherwise ``|dequantize() - w_fq| <= 2^-8 |w_fq|``
  elementwise (round to nearest bf16 moves a scale by at most 2^-8 of itself; the kernels take
  scales in the activations' dtype only, and fp16 activations run 17-150x slower here).
* asymmetric int4: ``|dequantize() - w_fq| <= 2^-8 * s * (|code - z| + |8 - z|) * (1 + 2^-8)``;
  the second term is the bf16 rounding of the zero offset, so the level that is 0.0 in bitswitch
  may land up to ``2^-8 * 8 * s`` off zero. Bitwise when ``s`` is a power of two.
* :class:`PackedDequant`: bitwise (it reuses bitswitch's ``dequantize_weight``); its matmul rounds
  the weight to bf16 (relative 2^-8 per weight).

``matmul`` against ``x.float() @ dequantize().T`` (float32 from the same bf16 x): within
``2^-8 |ref| + 3 K 2^-24 (|x| @ |W|.T)``: one bf16 rounding of the output plus float32
accumulation in a different order (with the rounded weight in place of ``dequantize()`` for the
dequant path).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import BitswitchError
from ..quant.config import WeightQuant
from ..quant.functional import dequantize_weight, fake_quantize_weight, qrange, quantize_weight

INT4_GROUPS = (32, 64, 128, 256)   # what _weight_int4pack_mm_for_cpu accepts
INT4_N_MULTIPLE = 16               # _convert_weight_to_int4pack_for_cpu: N % 16 == 0
INT8_K_MULTIPLE = 16               # _weight_int8pack_mm segfaults for other K on this build
KERNELS = ("auto", "int4", "int8", "dequant", "reference")


def int4_available() -> bool:
    """Whether this torch build has the CPU int4 weight-only ops."""
    return all(hasattr(torch.ops.aten, n) for n in
               ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu"))


def int8_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int8pack_mm")


def _check_x(x: Tensor, k: int) -> None:
    # a wrong K reaches the kernels' raw pointer loops (a segfault, not an error): check it here
    if x.dtype != torch.bfloat16 or x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"matmul takes x (M, {k}) bfloat16, got {tuple(x.shape)} {x.dtype}")


class PackedBF16:
    """The floating-point width: a bf16 weight (N, K) and a bf16 F.linear."""

    kind = "bf16"

    def __init__(self, weight: Tensor):
        self.weight = weight.detach().to(torch.bfloat16).contiguous()
        self.shape = tuple(self.weight.shape)

    def matmul(self, x: Tensor) -> Tensor:
        _check_x(x, self.shape[1])
        if x.shape[0] == 1:   # one decode row: bf16 mv is 1.5x F.linear's GEMM (the tied LM head: 1.3 vs 2.1 ms)
            return torch.mv(self.weight, x[0]).unsqueeze(0)
        return F.linear(x, self.weight)

    def dequantize(self) -> Tensor:
        return self.weight.float()

    def nbytes(self) -> int:
        return self.weight.numel() * 2


# Rows (tokens) from which an int8 weight is dequantized to bf16 for one F.linear instead of going
# through ``_weight_int8pack_mm``: the kernel is fast for decode's few rows and about 2-3x slower than
# a bf16 GEMM for a prefill's hundreds (2-core AVX-512 CPU, 2 threads, 1536 x 576: 119 rows 1.58 ms
# vs 0.73 ms dequantized, 952 rows 12.4 vs 4.4). The int4 kernel stays: unpacking its layout costs
# more than it saves in a whole model's prefill. The weight is the same either way (the int8 code
# times the bf16 scale is rounded to bf16 once); only the accumulation order differs.
PREFILL_ROWS = {"int8": 32}


class PackedInt8:
    """int8 codes (N, K) and bf16 per-output-channel scales (N,) for ``_weight_int8pack_mm``."""

    kind = "int8"

    def __init__(self, weight: Tensor, scales: Tensor):
        self.weight, self.scales = weight, scales
        self.shape = tuple(weight.shape)

    def matmul(self, x: Tensor) -> Tensor:
        _check_x(x, self.shape[1])
        if x.shape[0] >= PREFILL_ROWS["int8"]:   # prefill: the kernel is tuned for a few rows
            return F.linear(x, self.weight.to(torch.bfloat16) * self.scales[:, None])
        return torch.ops.aten._weight_int8pack_mm(x, self.weight, self.scales)

    def dequantize(self) -> Tensor:
        return self.weight.float() * self.scales.float()[:, None]

    def nbytes(self) -> int:
        return self.weight.numel() + self.scales.numel() * 2


class PackedInt4:
    """4-bit codes in the kernel's packed layout (N, K/2) uint8 and bf16 ``scales_and_zeros``
    (K/group, N, 2) for ``_weight_int4pack_mm_for_cpu``; ``w = (q - 8) * scale + zero``."""

    kind = "int4"

    def __init__(self, packed: Tensor, scales_and_zeros: Tensor, group: int, shape: tuple[int, int]):
        self.packed, self.scales_and_zeros, self.group = packed, scales_and_zeros, group
        self.shape = tuple(shape)

    def matmul(self, x: Tensor) -> Tensor:
        _check_x(x, self.shape[1])
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.group, self.scales_and_zeros)

    def codes(self) -> Tensor:
        """The unsigned codes q (N, K) uint8 in 0..15, read back from the packed layout."""
        n, k = self.shape
        src = _int4_layout(n, k)
        nibbles = torch.stack([self.packed & 15, self.packed >> 4], -1).reshape(-1)
        out = torch.empty(n * k, dtype=torch.uint8)
        out[src] = nibbles
        return out.reshape(n, k)

    def dequantize(self) -> Tensor:
        # the kernel's float32 arithmetic: (q - 8) * scale is exact (4-bit integer times an 8-bit
        # significand), so one rounding at the add, with or without an FMA
        n, k = self.shape
        g = self.group
        s = self.scales_and_zeros[..., 0].float().t()[..., None]   # (N, K/g, 1)
        z = self.scales_and_zeros[..., 1].float().t()[..., None]
        q = self.codes().view(n, k // g, g).float()
        return ((q - 8) * s + z).reshape(n, k)

    def nbytes(self) -> int:
        return self.packed.numel() + self.scales_and_zeros.numel() * 2


class PackedDequant:
    """Fallback for grids no kernel runs: bitswitch's codes (N, K) (int8 when symmetric, uint8 when
    asymmetric, wider at 16 bits), float32 scales / zero points (N, groups) and the quantizer;
    dequantized at every call (bitwise ``dequantize_weight``) and multiplied in bf16."""

    kind = "dequant"

    def __init__(self, codes: Tensor, scale: Tensor, zero: Tensor | None, cfg: WeightQuant):
        self.codes, self.scale, self.zero, self.cfg = codes, scale, zero, cfg
        self.shape = tuple(codes.shape)

    def matmul(self, x: Tensor) -> Tensor:
        _check_x(x, self.shape[1])
        return F.linear(x, self.dequantize().to(torch.bfloat16))

    def dequantize(self) -> Tensor:
        return dequantize_weight(self.codes, self.scale, self.zero, self.cfg)

    def nbytes(self) -> int:
        zero = 0 if self.zero is None else self.zero.numel() * 4
        return self.codes.numel() * self.codes.element_size() + self.scale.numel() * 4 + zero


class PackedFloat:
    """The reference kernel: bitswitch's fake-quantized weight (N, K) in float32, bitwise, and a
    float32 matmul. No speed; it checks the runtime's decoder against fake quantization exactly."""

    kind = "float32"

    def __init__(self, weight: Tensor):
        self.weight = weight.detach().float().contiguous()
        self.shape = tuple(self.weight.shape)

    def matmul(self, x: Tensor) -> Tensor:
        return F.linear(x.float(), self.weight)

    def dequantize(self) -> Tensor:
        return self.weight

    def nbytes(self) -> int:
        return self.weight.numel() * 4


Packed = PackedBF16 | PackedInt8 | PackedInt4 | PackedDequant | PackedFloat


@functools.lru_cache(maxsize=8)
def _int4_layout(n: int, k: int) -> Tensor:
    """For each nibble of the packed tensor (byte order, low nibble first), the row-major index
    n * K + k of the code it holds, read off the packing op itself with index probes (4 bits of the
    index per probe), so nothing here depends on the op's blocking. Cached for a few shapes."""
    idx = torch.arange(n * k, dtype=torch.int64)
    src = torch.zeros(n * k, dtype=torch.int64)
    for d in range(max(1, math.ceil(math.log2(max(n * k, 2)) / 4))):
        probe = ((idx >> (4 * d)) & 15).to(torch.int32).reshape(n, k)
        p = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1).reshape(-1)
        src |= torch.stack([p & 15, p >> 4], -1).reshape(-1).long() << (4 * d)
    if not torch.equal(src.sort().values, idx):
        raise RuntimeError("the int4 packing op is not a permutation of nibbles in this torch build")
    return src


# -- packing from integer codes ------------------------------------------------------------------

def pack_int8(codes: Tensor, scales: Tensor) -> PackedInt8:
    """codes (N, K) integers in -128..127, scales (N,) (rounded to bf16) -> :class:`PackedInt8`."""
    if not int8_available():
        raise BitswitchError(f"this torch build ({torch.__version__}) has no aten._weight_int8pack_mm: "
                             "use kernel='dequant'")
    if codes.dim() != 2 or scales.reshape(-1).numel() != codes.shape[0]:
        raise BitswitchError(f"int8 packing takes codes (N, K) and scales (N,), got {tuple(codes.shape)} "
                             f"and {tuple(scales.shape)}")
    n, k = codes.shape
    if k % INT8_K_MULTIPLE:
        raise BitswitchError(f"the int8 kernel needs in_features divisible by {INT8_K_MULTIPLE}, got {k}: "
                             "use kernel='dequant'")
    if codes.numel() and (int(codes.min()) < -128 or int(codes.max()) > 127):
        raise BitswitchError("int8 codes must lie in -128..127: use 8 bits or fewer")
    return PackedInt8(codes.to(torch.int8).contiguous(), scales.reshape(n).to(torch.bfloat16).contiguous())


def _int4_group(k: int, group: int | None) -> int:
    """The kernel group for ``group`` (None = per channel: the largest kernel group dividing K)."""
    if group is None:
        fits = [g for g in INT4_GROUPS if k % g == 0]
        if not fits:
            raise BitswitchError(f"the int4 kernel needs in_features divisible by 32, got {k}: "
                                 "use kernel='dequant'")
        return fits[-1]
    if group not in INT4_GROUPS:
        raise BitswitchError(f"the int4 kernel takes groups of {', '.join(map(str, INT4_GROUPS))} input "
                             f"columns, got {group}: use one of those or kernel='dequant'")
    if k % group:
        raise BitswitchError(f"group size {group} does not divide in_features {k}")
    return group


def pack_int4(codes: Tensor, scales: Tensor, zeros: Tensor | None, group: int) -> PackedInt4:
    """codes (N, K) integers in 0..15, scales / zeros (N, K/group) floats (rounded to bf16; zeros
    None = 0), ``w = (q - 8) * scale + zero`` -> :class:`PackedInt4`."""
    if not int4_available():
        raise BitswitchError(f"this torch build ({torch.__version__}) has no CPU int4 weight-only kernel: "
                             "use kernel='dequant'")
    if codes.dim() != 2:
        raise BitswitchError(f"int4 packing takes codes (N, K), got {tuple(codes.shape)}")
    n, k = codes.shape
    group = _int4_group(k, group)
    if n % INT4_N_MULTIPLE:
        raise BitswitchError(f"the int4 kernel needs out_features divisible by {INT4_N_MULTIPLE}, got {n}: "
                             "use kernel='dequant'")
    if tuple(scales.shape) != (n, k // group) or (zeros is not None and zeros.shape != scales.shape):
        raise BitswitchError(f"int4 scales / zeros must be (N, K/group) = {(n, k // group)}, "
                             f"got {tuple(scales.shape)}")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise BitswitchError("int4 codes must lie in 0..15: use 4 bits or fewer")
    if zeros is None:
        zeros = torch.zeros_like(scales)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
    sz = torch.stack([scales.float(), zeros.float()], -1).transpose(0, 1)    # (K/g, N, 2)
    return PackedInt4(packed, sz.to(torch.bfloat16).contiguous(), group, (n, k))


# -- from bitswitch's grids ----------------------------------------------------------------------

def _repeat_groups(t: Tensor, k: int, group: int) -> Tensor:
    """(N, 1) per-channel values -> (N, K/group), the same value in every kernel group."""
    return t.expand(t.shape[0], k // group) if t.shape[1] == 1 else t


def int4_from_quant(codes: Tensor, scale: Tensor, zero: Tensor | None, cfg: WeightQuant) -> PackedInt4:
    """bitswitch's ``quantize_weight`` output at <= 4 bits (uniform) -> :class:`PackedInt4` (see the
    module docstring for the map and its exactness)."""
    if cfg.bits > 4 or cfg.method != "uniform":
        raise BitswitchError(f"the int4 kernel runs uniform grids of 4 bits or fewer, got w{cfg.bits} "
                             f"{cfg.method}: use kernel='dequant'")
    if zero is not None and cfg.grid == "gguf":   # its "zero" is a block minimum (d * q + m), not a zero point
        raise BitswitchError("the int4 kernel has no map for the gguf grid's asymmetric blocks: use kernel='dequant'")
    k = codes.shape[1]
    group = _int4_group(k, cfg.group_size)
    s = scale.to(torch.bfloat16).float()
    if zero is None:            # symmetric: w = code * s = ((code + 8) - 8) * s + 0
        q, z = codes + 8, None
    else:                       # asymmetric: w = (code - z) * s = (code - 8) * s + (8 - z) * s
        q, z = codes, ((8 - zero) * s).to(torch.bfloat16).float()
        z = _repeat_groups(z, k, group)
    return pack_int4(q, _repeat_groups(s, k, group), z, group)


def int8_from_quant(codes: Tensor, scale: Tensor, zero: Tensor | None, cfg: WeightQuant) -> PackedInt8:
    """bitswitch's symmetric per-channel codes at <= 8 bits -> :class:`PackedInt8`."""
    if zero is not None or cfg.group_size is not None or cfg.bits > 8 or cfg.method != "uniform":
        raise BitswitchError(f"the int8 kernel runs symmetric per-channel uniform grids of 8 bits or fewer, "
                             f"got w{cfg.bits}{'' if cfg.group_size is None else f'g{cfg.group_size}'} "
                             f"{'symmetric' if zero is None else 'asymmetric'} {cfg.method}: "
                             "use kernel='dequant'")
    return pack_int8(codes, scale.reshape(-1))


def dequant_from_quant(codes: Tensor, scale: Tensor, zero: Tensor | None, cfg: WeightQuant) -> PackedDequant:
    """bitswitch's codes kept as they are, in the smallest integer dtype that holds them."""
    lo, hi = qrange(cfg.bits, zero is None)   # symmetric and log codes are signed, asymmetric not
    for dt in (torch.int8, torch.uint8, torch.int16, torch.int32):
        if torch.iinfo(dt).min <= lo and hi <= torch.iinfo(dt).max:
            break
    return PackedDequant(codes.to(dt).contiguous(), scale.float(), None if zero is None else zero.float(), cfg)


def choose_kernel(shape: tuple[int, int], cfg: WeightQuant) -> str:
    """The fastest kernel that runs ``cfg`` on a weight of ``shape`` (N, K) exactly as described
    in the module docstring: int4 for uniform grids of <= 4 bits, int8 for symmetric per-channel
    grids of 5-8 bits, else dequant."""
    n, k = shape
    if (cfg.method == "uniform" and cfg.bits <= 4 and int4_available() and n % INT4_N_MULTIPLE == 0
            and (cfg.symmetric or cfg.grid != "gguf")):
        g = cfg.group_size
        if (g in INT4_GROUPS and k % g == 0) or (g is None and any(k % x == 0 for x in INT4_GROUPS)):
            return "int4"
    if (cfg.method == "uniform" and cfg.symmetric and cfg.group_size is None and cfg.bits <= 8
            and int8_available() and k % INT8_K_MULTIPLE == 0):
        return "int8"
    return "dequant"


_FROM_QUANT = {"int4": int4_from_quant, "int8": int8_from_quant, "dequant": dequant_from_quant}


def pack_weight(weight: Tensor, cfg: WeightQuant | None, kernel: str = "auto", codes=None) -> Packed:
    """Quantize a float weight (N, K) with bitswitch's quantizer ``cfg`` and pack it for ``kernel``
    (``auto``: :func:`choose_kernel`; ``int4`` / ``int8`` / ``dequant``: that one, or a one-line
    BitswitchError saying why it cannot). ``cfg`` None: the bf16 weight. ``codes``: ``(codes, scale,
    zero)`` already chosen for ``cfg`` (a unit's own rounding) instead of quantizing ``weight``."""
    if kernel not in KERNELS:
        raise BitswitchError(f"unknown kernel {kernel!r}: use one of {', '.join(KERNELS)}")
    if weight.dim() != 2:
        raise BitswitchError(f"a weight is (out_features, in_features), got {tuple(weight.shape)}")
    if kernel == "reference":
        if cfg is not None and codes is not None:
            return PackedFloat(dequantize_weight(*codes, cfg))
        return PackedFloat(weight if cfg is None else fake_quantize_weight(weight.detach().float(), cfg))
    if cfg is None:
        return PackedBF16(weight)
    if cfg.group_size is not None and weight.shape[1] % cfg.group_size:
        raise BitswitchError(f"group size {cfg.group_size} does not divide in_features {weight.shape[1]}")
    if kernel == "auto":
        kernel = choose_kernel(tuple(weight.shape), cfg)
    if codes is None:
        with torch.no_grad():
            codes = quantize_weight(weight.detach(), cfg)
    return _FROM_QUANT[kernel](*codes, cfg)
