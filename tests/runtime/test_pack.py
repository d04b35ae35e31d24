"""Packed weights: kernel semantics, the map from bitswitch's grids, and the stated tolerances.

Tolerances (see bitswitch.runtime.pack): a kernel's output against ``x.float() @ W.T`` computed in
float32 from the same bf16 ``x`` and the weight ``W`` it multiplies by is within
``2^-8 |ref| + 3 K 2^-24 (|x| @ |W|.T)`` (one bf16 rounding of the output, float32 accumulation in
another order); dequantized weights are bitwise bitswitch's with the scale rounded to bf16.
"""

from __future__ import annotations

import pytest
import torch

from bitswitch.errors import BitswitchError
from bitswitch.quant.config import WeightQuant
from bitswitch.quant.functional import dequantize_weight, fake_quantize_weight, quantize_weight
from bitswitch.runtime.pack import (choose_kernel, int4_available, pack_int4, pack_int8, pack_weight)

U = 2.0 ** -8   # unit roundoff of bf16 (8 significant bits)


def needs_int4():
    if not int4_available():
        pytest.skip(f"torch {torch.__version__} has no aten._weight_int4pack_mm_for_cpu")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def weight(n=32, k=128, seed=0):
    return torch.randn(n, k, generator=gen(seed)) * 0.05


def x_bf16(m, k, seed=1):
    return torch.randn(m, k, generator=gen(seed)).to(torch.bfloat16)


def assert_matmul_close(y, x, w):
    """|y - x @ w.T| within the stated bound; y bf16 (M, N), x bf16 (M, K), w float32 (N, K)."""
    assert y.dtype == torch.bfloat16 and y.shape == (x.shape[0], w.shape[0])
    xf = x.float()
    ref = xf @ w.t()
    bound = U * ref.abs() + 3 * w.shape[1] * 2.0 ** -24 * (xf.abs() @ w.abs().t())
    err = (y.float() - ref).abs()
    assert bool((err <= bound).all()), f"max excess {(err - bound).max().item():.3g}"


# -- raw kernels -------------------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 5])
def test_int8_matmul_is_x_times_codes_times_scales(m):
    codes = torch.randint(-128, 128, (24, 64), generator=gen(), dtype=torch.int8)
    p = pack_int8(codes, torch.rand(24, generator=gen(2)) * 0.01)
    w = p.dequantize()
    assert torch.equal(w, codes.float() * p.scales.float()[:, None])
    assert_matmul_close(p.matmul(x_bf16(m, 64)), x_bf16(m, 64), w)


@pytest.mark.parametrize("group", [32, 64, 128, 256])
@pytest.mark.parametrize("m", [1, 5])
def test_int4_matmul_matches_its_dequantized_weight(group, m):
    needs_int4()
    n, k = 32, 256
    codes = torch.randint(0, 16, (n, k), generator=gen())
    scales = torch.rand(n, k // group, generator=gen(2)) * 0.01 + 1e-3
    zeros = torch.randn(n, k // group, generator=gen(3)) * 0.01
    p = pack_int4(codes, scales, zeros, group)
    assert p.packed.shape == (n, k // 2) and p.scales_and_zeros.shape == (k // group, n, 2)
    assert torch.equal(p.codes(), codes.to(torch.uint8))
    assert_matmul_close(p.matmul(x_bf16(m, k)), x_bf16(m, k), p.dequantize())


def test_int8_prefill_rows_multiply_the_dequantized_bf16_weight():
    """From PREFILL_ROWS rows on, an int8 weight is dequantized to bf16 (code times bf16 scale, one
    rounding: bitwise the float32 dequantization cast to bf16) and multiplied by F.linear; within the
    kernel's bound plus one bf16 rounding of the weight. Fewer rows go through the kernel."""
    import torch.nn.functional as F

    from bitswitch.runtime.pack import PREFILL_ROWS

    w = weight(32, 256)
    p = pack_weight(w, WeightQuant(8, None, True, "uniform"))
    assert p.kind == "int8"
    wd = p.dequantize()
    assert torch.equal(p.weight.to(torch.bfloat16) * p.scales[:, None], wd.to(torch.bfloat16))
    x = x_bf16(PREFILL_ROWS["int8"], 256)
    y = p.matmul(x)
    assert torch.equal(y, F.linear(x, wd.to(torch.bfloat16)))
    xf = x.float()
    ref = xf @ wd.t()
    bound = U * ref.abs() + (U + 3 * 256 * 2.0 ** -24) * (xf.abs() @ wd.abs().t())
    assert bool(((y.float() - ref).abs() <= bound).all())
    few = x[:PREFILL_ROWS["int8"] - 1]
    assert torch.equal(p.matmul(few), torch.ops.aten._weight_int8pack_mm(few, p.weight, p.scales))


def test_int4_zero_is_a_float_offset_after_scaling():
    """w = (q - 8) * scale + zero, read off one-hot rows with bf16-exact values."""
    needs_int4()
    n, k = 16, 64
    codes = torch.randint(0, 16, (n, k), generator=gen())
    scales = torch.full((n, 2), 0.25)
    zeros = torch.full((n, 2), 0.5)
    p = pack_int4(codes, scales, zeros, 32)
    y = p.matmul(torch.eye(k, dtype=torch.bfloat16))           # y[k, n] = w[n, k]
    assert torch.equal(y.float().t(), (codes.float() - 8) * 0.25 + 0.5)


# -- bitswitch grids -> packed ------------------------------------------------------------------

SYMMETRIC = [("int8", WeightQuant(8)), ("int8", WeightQuant(6)), ("int4", WeightQuant(4, 32)),
             ("int4", WeightQuant(4, 64)), ("int4", WeightQuant(4)), ("int4", WeightQuant(3, 32))]


@pytest.mark.parametrize("kind,cfg", SYMMETRIC, ids=lambda v: str(v))
def test_symmetric_dequantize_is_bitswitch_with_bf16_scales(kind, cfg):
    if kind == "int4":
        needs_int4()
    w = weight()
    p = pack_weight(w, cfg)
    assert p.kind == kind
    codes, scale, zero = quantize_weight(w, cfg)
    d = p.dequantize()
    # bitwise bitswitch's dequantization once the scale is rounded to bf16 (what the kernels take)
    assert torch.equal(d, dequantize_weight(codes, scale.to(torch.bfloat16).float(), zero, cfg))
    fq = fake_quantize_weight(w, cfg)
    assert bool(((d - fq).abs() <= U * fq.abs()).all())
    assert_matmul_close(p.matmul(x_bf16(5, 128)), x_bf16(5, 128), d)


def on_grid(n, k, group, bits, symmetric, seed=0):
    """A weight already on bitswitch's grid with power-of-two scales (bf16-exact), the extreme codes
    present in every group, so fake quantization returns it unchanged."""
    g = gen(seed)
    group = group or k
    s = 2.0 ** -torch.randint(4, 9, (n, k // group, 1), generator=g).float()
    if symmetric:
        q = 2 ** (bits - 1) - 1
        c = torch.randint(-q, q + 1, (n, k // group, group), generator=g)
        c[..., 0], c[..., 1] = q, -q
        w = c * s
    else:
        top = 2**bits - 1
        z = torch.randint(1, top, (n, k // group, 1), generator=g)
        c = torch.randint(0, top + 1, (n, k // group, group), generator=g)
        c[..., 0], c[..., 1] = 0, top
        w = (c - z) * s
    return w.reshape(n, k).float()


@pytest.mark.parametrize("kind,cfg", SYMMETRIC + [("int4", WeightQuant(4, 32, False)),
                                                  ("int4", WeightQuant(4, None, False))], ids=lambda v: str(v))
def test_dequantize_is_bitwise_fake_quant_when_scales_are_bf16_exact(kind, cfg):
    if kind == "int4":
        needs_int4()
    w = on_grid(32, 128, cfg.group_size, cfg.bits, cfg.symmetric)
    fq = fake_quantize_weight(w, cfg)
    assert torch.equal(fq, w)
    p = pack_weight(w, cfg)
    assert p.kind == kind and torch.equal(p.dequantize(), fq)


@pytest.mark.parametrize("cfg", [WeightQuant(4, 32, False), WeightQuant(4, 64, False), WeightQuant(2, 32, False)],
                         ids=str)
def test_asymmetric_int4_within_its_bound(cfg):
    """|d - w_fq| <= 2^-8 s (|code - z| + |8 - z|) (1 + 2^-8): the scale and the zero offset
    (8 - z) * s are each rounded to bf16 once."""
    needs_int4()
    w = weight() + 0.02   # off-centre ranges: zero points away from 8
    p = pack_weight(w, cfg)
    assert p.kind == "int4"
    codes, scale, zero = quantize_weight(w, cfg)
    g = cfg.group_size
    s, z = (t.repeat_interleave(g, 1) for t in (scale, zero))
    bound = U * s * ((codes - z).abs() + (8 - z).abs()) * (1 + U)
    d, fq = p.dequantize(), fake_quantize_weight(w, cfg)
    assert bool(((d - fq).abs() <= bound).all())
    # and bitwise the stated formula
    sb = scale.to(torch.bfloat16).float()
    zf = ((8 - zero) * sb).to(torch.bfloat16).float()
    sb, zf = (t.repeat_interleave(g, 1) for t in (sb, zf))
    assert torch.equal(d, (codes.float() - 8) * sb + zf)
    assert_matmul_close(p.matmul(x_bf16(3, 128)), x_bf16(3, 128), d)


@pytest.mark.parametrize("cfg", [WeightQuant(6, 32), WeightQuant(8, None, False), WeightQuant(8, 32),
                                 WeightQuant(4, None, True, "log"), WeightQuant(16), WeightQuant(5, 16)], ids=str)
def test_fallback_dequantizes_bitwise_and_multiplies_in_bf16(cfg):
    w = weight()
    p = pack_weight(w, cfg)
    assert p.kind == "dequant"
    d = p.dequantize()
    assert torch.equal(d, fake_quantize_weight(w, cfg))
    assert_matmul_close(p.matmul(x_bf16(5, 128)), x_bf16(5, 128), d.to(torch.bfloat16).float())


def test_fp_is_the_bf16_weight():
    w = weight()
    p = pack_weight(w, None)
    assert p.kind == "bf16" and torch.equal(p.dequantize(), w.to(torch.bfloat16).float())
    for m in (1, 3):   # one row takes torch.mv, more F.linear
        out = p.matmul(x_bf16(m, 128))
        assert out.shape == (m, w.shape[0]) and out.dtype == torch.bfloat16
        assert_matmul_close(out, x_bf16(m, 128), p.dequantize())


def test_choose_kernel():
    needs_int4()
    assert choose_kernel((32, 128), WeightQuant(4, 32)) == "int4"
    assert choose_kernel((32, 576), WeightQuant(4)) == "int4"        # per channel: groups of 64, scale repeated
    assert choose_kernel((24, 128), WeightQuant(4, 32)) == "dequant"  # N % 16
    assert choose_kernel((32, 128), WeightQuant(4, 16)) == "dequant"  # group the kernel lacks
    assert choose_kernel((32, 128), WeightQuant(8)) == "int8"
    assert choose_kernel((24, 40), WeightQuant(8)) == "dequant"       # K % 16: the int8 kernel would crash
    assert choose_kernel((32, 128), WeightQuant(8, 32)) == "dequant"


def one_line_error(fn, match):
    with pytest.raises(BitswitchError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)


def test_bad_group_size_or_width_is_a_one_line_error():
    w = weight()
    one_line_error(lambda: pack_weight(w, WeightQuant(4, 48)), "does not divide")
    one_line_error(lambda: pack_weight(w, WeightQuant(6), "int4"), "4 bits or fewer")
    one_line_error(lambda: pack_weight(w, WeightQuant(4, 32), "int8"), "per-channel")
    one_line_error(lambda: pack_weight(w, WeightQuant(8), "fast"), "unknown kernel")
    one_line_error(lambda: pack_int8(torch.zeros(8, 40, dtype=torch.int8), torch.ones(8)), "divisible by 16")
    one_line_error(lambda: pack_int8(torch.full((8, 32), 200), torch.ones(8)), "-128..127")
    needs_int4()
    one_line_error(lambda: pack_weight(w, WeightQuant(4, 16), "int4"), "groups of 32, 64, 128, 256")
    one_line_error(lambda: pack_int4(torch.zeros(32, 64), torch.ones(32, 1), None, 512), "groups of")
    one_line_error(lambda: pack_weight(weight(24), WeightQuant(4, 32), "int4"), "divisible by 16")
    one_line_error(lambda: pack_int4(torch.full((16, 64), 16), torch.ones(16, 2), None, 32), "0..15")
