"""GPTQ on bitswitch's grids: lower layer-output error than round-to-nearest on held-out inputs,
the same scales, codes in range, and exactly round-to-nearest where there is nothing to compensate."""

import pytest
import torch

from bitswitch.quant.config import WeightQuant
from bitswitch.quant.functional import dequantize_weight, qrange, quantize_weight
from bitswitch.quant.gptq import HessianAccumulator, gptq_codes, layer_error


def _correlated_inputs(n: int, d: int, gen: torch.Generator, mix: torch.Tensor) -> torch.Tensor:
    """(n, d) inputs with strongly correlated features and a few large channels, like a layer's."""
    z = torch.randn(n, d, generator=gen)
    return z @ mix


def _layer(d_in=128, d_out=48, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d_out, d_in, generator=gen) * 0.05
    mix = torch.randn(d_in, d_in, generator=gen) / d_in ** 0.5 + torch.eye(d_in)
    mix[:, :4] *= 8.0                                                   # outlier channels
    calib = _correlated_inputs(2048, d_in, gen, mix)
    held_out = _correlated_inputs(2048, d_in, gen, mix)                 # same distribution, other draws
    acc = HessianAccumulator(d_in)
    for chunk in calib.split(500):
        acc.add(chunk)
    return w, acc.hessian(), held_out


CFGS = [WeightQuant(b, g, sym) for b in (4, 3) for g in (None, 32) for sym in (True, False)]


@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: f"w{c.bits}g{c.group_size}{'s' if c.symmetric else 'a'}")
def test_gptq_beats_round_to_nearest_on_held_out_inputs(cfg):
    w, h, held_out = _layer()
    codes, scale, zero = gptq_codes(w, h, cfg)
    rtn = quantize_weight(w, cfg)
    err_gptq = layer_error(w, dequantize_weight(codes, scale, zero, cfg), held_out)
    err_rtn = layer_error(w, dequantize_weight(*rtn, cfg), held_out)
    assert err_gptq < err_rtn
    # the grid is round-to-nearest's, bit for bit; only codes move, and stay in range
    assert torch.equal(scale, rtn[1])
    assert (zero is None and rtn[2] is None) or torch.equal(zero, rtn[2])
    lo, hi = qrange(cfg.bits, cfg.symmetric)
    assert codes.dtype == torch.int32 and int(codes.min()) >= lo and int(codes.max()) <= hi
    assert not torch.equal(codes, rtn[0])


def test_act_order_also_beats_round_to_nearest():
    w, h, held_out = _layer(seed=1)
    cfg = WeightQuant(3, 32)
    codes, scale, zero = gptq_codes(w, h, cfg, act_order=True)
    assert torch.equal(scale, quantize_weight(w, cfg)[1])
    assert layer_error(w, dequantize_weight(codes, scale, zero, cfg), held_out) < \
        layer_error(w, dequantize_weight(*quantize_weight(w, cfg), cfg), held_out)


@pytest.mark.parametrize("cfg", [WeightQuant(4), WeightQuant(3, 32, False), WeightQuant(2, 16)])
@pytest.mark.parametrize("act_order", [False, True])
def test_diagonal_hessian_gives_round_to_nearest_exactly(cfg, act_order):
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(24, 64, generator=gen)
    h = torch.diag(torch.rand(64, generator=gen, dtype=torch.float64) + 0.1)
    got = gptq_codes(w, h, cfg, block=16, act_order=act_order)
    want = quantize_weight(w, cfg)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_dead_inputs_are_rounded_to_nearest_and_move_nothing():
    w, h, held_out = _layer(d_in=64, d_out=16)
    dead = torch.tensor([3, 10, 40])
    h[dead, :] = 0
    h[:, dead] = 0
    cfg = WeightQuant(4)
    codes, _, _ = gptq_codes(w, h, cfg)
    assert torch.equal(codes[:, dead], quantize_weight(w, cfg)[0][:, dead])
    alive = torch.ones(64, dtype=torch.bool)
    alive[dead] = False
    h2 = h[alive][:, alive]
    # the live columns see exactly the problem without the dead ones (up to float rounding of the
    # factorization, so compare errors rather than codes)
    ref = gptq_codes(w[:, alive], h2, WeightQuant(4))
    x = held_out[:, :64][:, alive]
    e1 = layer_error(w[:, alive], dequantize_weight(codes[:, alive], *quantize_weight(w, cfg)[1:], cfg), x)
    e2 = layer_error(w[:, alive], dequantize_weight(*ref, cfg), x)
    assert e1 == pytest.approx(e2, rel=0.05)


def test_zero_hessian_gives_round_to_nearest():
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(3))
    codes, _, _ = gptq_codes(w, torch.zeros(32, 32, dtype=torch.float64), WeightQuant(3))
    assert torch.equal(codes, quantize_weight(w, WeightQuant(3))[0])


@pytest.mark.parametrize("cfg,word", [(WeightQuant(4, grid="nested"), "nested"),
                                      (WeightQuant(4, 32, grid="gguf"), "gguf"),
                                      (WeightQuant(4, method="log"), "log")])
def test_other_grids_are_refused_with_the_reason(cfg, word):
    with pytest.raises(ValueError, match=word):
        gptq_codes(torch.randn(4, 32), torch.eye(32), cfg)


def test_hessian_accumulator_is_two_over_n_x_xt():
    x = torch.randn(10, 7, 5)
    acc = HessianAccumulator(5)
    acc.add(x[:4])
    acc.add(x[4:])
    flat = x.reshape(-1, 5).double()
    assert torch.allclose(acc.hessian(), 2 / 70 * flat.T @ flat)
    assert acc.n == 70


@pytest.mark.parametrize("cfg", [c for c in CFGS if c.group_size], ids=lambda c: f"w{c.bits}g32{'s' if c.symmetric else 'a'}")
def test_refit_groups_fits_each_group_to_the_moved_weights(cfg):
    w, h, held_out = _layer()
    codes, scale, zero = gptq_codes(w, h, cfg, refit_groups=True)
    rtn = quantize_weight(w, cfg)
    # the first group is fitted before anything moved: round-to-nearest's grid; later ones are not
    assert torch.equal(scale[:, 0], rtn[1][:, 0]) and not torch.equal(scale[:, 1:], rtn[1][:, 1:])
    lo, hi = qrange(cfg.bits, cfg.symmetric)
    assert int(codes.min()) >= lo and int(codes.max()) <= hi
    assert layer_error(w, dequantize_weight(codes, scale, zero, cfg), held_out) < \
        layer_error(w, dequantize_weight(*rtn, cfg), held_out)


def test_refit_groups_with_a_diagonal_hessian_is_round_to_nearest():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(24, 64, generator=gen)
    h = torch.diag(torch.rand(64, generator=gen, dtype=torch.float64) + 0.1)
    cfg = WeightQuant(3, 16, False)
    got, want = gptq_codes(w, h, cfg, block=16, refit_groups=True), quantize_weight(w, cfg)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("cfg, kw", [(WeightQuant(4), {}), (WeightQuant(4, 32), {"act_order": True}),
                                     (WeightQuant(4, 32), {"block": 48})])
def test_refit_groups_needs_groups_in_order(cfg, kw):
    w, h, _ = _layer()
    with pytest.raises(ValueError, match="refit_groups needs a grouped grid"):
        gptq_codes(w, h, cfg, refit_groups=True, **kw)
