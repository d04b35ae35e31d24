"""Learned grids (quant/recon.py): the untrained grid is round to nearest bit for bit; the learned fake
quantization equals dequantizing its codes bit for bit at any parameters; codes, scales and zeros stay
on the grid; every trainable tensor gets a finite, non-zero gradient; the clip-searched start never has
more weight error than round to nearest in any group, and less at 2-3 bits."""

import pytest
import torch

from bitswitch.quant.config import WeightQuant
from bitswitch.quant.functional import dequantize_weight, fake_quantize_weight, qrange, scale_dtype
from bitswitch.quant.recon import init_grid, learned_codes, learned_fake_quantize, search_grid, supports_learned_grid

CFGS = [WeightQuant(4, 32), WeightQuant(2, 16), WeightQuant(3), WeightQuant(8), WeightQuant(3, 32, False),
        WeightQuant(2, None, False)]


def _w(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(48, 64, generator=g) * 0.05
    w[5] = 0.0            # an all-zero row
    w[7, :32] = 0.3       # a constant group
    return w


def _name(cfg):
    return f"w{cfg.bits}g{cfg.group_size}{'s' if cfg.symmetric else 'a'}"


@pytest.mark.parametrize("cfg", CFGS, ids=_name)
def test_the_untrained_grid_is_round_to_nearest_bitwise(cfg):
    w = _w()
    scale, zero = init_grid(w, cfg)
    assert torch.equal(learned_fake_quantize(w, scale, zero, cfg), fake_quantize_weight(w, cfg))


@pytest.mark.parametrize("cfg", CFGS, ids=_name)
def test_learned_fake_quantization_is_its_codes_dequantized_bitwise(cfg):
    """After moving weight, scale and zero off the initial grid (as training does), the forward value is
    exactly what set_rounding's codes give back through dequantize_weight."""
    w = _w()
    scale, zero = init_grid(w, cfg)
    g = torch.Generator().manual_seed(1)
    w2 = w + 0.01 * torch.randn(w.shape, generator=g)
    scale2 = scale * (1 + 0.3 * torch.rand(scale.shape, generator=g) - 0.15)
    zero2 = None if zero is None else zero + 2 * torch.rand(zero.shape, generator=g) - 1
    codes, s, z = learned_codes(w2, scale2, zero2, cfg)
    lo, hi = qrange(cfg.bits, cfg.symmetric)
    assert codes.dtype == torch.int32 and int(codes.min()) >= lo and int(codes.max()) <= hi
    assert torch.equal(s, s.to(scale_dtype(cfg.bits)).float()) and bool((s > 0).all())   # stored without loss
    if z is not None:
        assert torch.equal(z, z.round()) and int(z.min()) >= 0 and int(z.max()) <= hi
    assert torch.equal(learned_fake_quantize(w2, scale2, zero2, cfg), dequantize_weight(codes, s, z, cfg))


@pytest.mark.parametrize("cfg", CFGS, ids=_name)
def test_weight_scale_and_zero_get_finite_nonzero_gradients(cfg):
    """A zero point's gradient flows only through clamped codes ((q + z) - z elsewhere), so the scale
    is first shrunk below the range, as training does where clipping pays."""
    w = _w().requires_grad_(True)
    scale, zero = init_grid(w, cfg)
    scale = (scale * 0.7).requires_grad_(True)
    if zero is not None:
        zero.requires_grad_(True)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    target = x @ _w(3).T
    loss = ((x @ learned_fake_quantize(w, scale, zero, cfg).T - target) ** 2).mean()
    loss.backward()
    for t in (w, scale) + (() if zero is None else (zero,)):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_only_uniform_independent_grids_of_2_to_8_bits_learn():
    assert supports_learned_grid(WeightQuant(4, 32))
    assert not supports_learned_grid(WeightQuant(4, 32, grid="nested"))
    assert not supports_learned_grid(WeightQuant(4, 32, grid="gguf"))
    assert not supports_learned_grid(WeightQuant(4, None, True, "log"))
    assert not supports_learned_grid(None)


def _group_err(w, scale, zero, cfg):
    d = learned_fake_quantize(w, scale, zero, cfg) - w
    g = cfg.group_size or w.shape[1]
    return d.reshape(w.shape[0], -1, g).pow(2).sum(-1)


@pytest.mark.parametrize("cfg", CFGS, ids=_name)
def test_the_searched_grid_is_never_worse_than_round_to_nearest_per_group(cfg):
    w = _w(1)
    w[3, 10] = 0.6       # an outlier: clipping it helps the rest of its row / group
    rtn = _group_err(w, *init_grid(w, cfg), cfg)
    scale, zero = search_grid(w, cfg)
    found = _group_err(w, scale, zero, cfg)
    assert (found <= rtn).all()
    if cfg.bits <= 3:
        assert (found < rtn).any() and found.sum() < 0.9 * rtn.sum()
    # on the grid: fp16 scales, integer zeros in range, and the codes give the forward back bit for bit
    assert torch.equal(scale, scale.half().float())
    if zero is not None:
        assert torch.equal(zero, zero.round()) and zero.min() >= 0 and zero.max() <= 2 ** cfg.bits - 1
    codes, s, z = learned_codes(w, scale, zero, cfg)
    assert torch.equal(dequantize_weight(codes, s, z, cfg).float(), learned_fake_quantize(w, scale, zero, cfg))


def test_a_weight_on_its_own_grid_keeps_round_to_nearest():
    """Where round to nearest is exact (every weight on the min-max grid) no clipped range ties or
    beats it, so the search returns round to nearest's scale and zero unchanged."""
    cfg = WeightQuant(3, 16, False)
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 8, (8, 32), generator=g).float()
    codes[:, 0], codes[:, 16], codes[:, 1], codes[:, 17] = 0, 0, 7, 7    # both ends in every group
    w = (codes - 3) * 0.01
    scale, zero = search_grid(w, cfg)
    rtn_scale, rtn_zero = init_grid(w, cfg)
    assert torch.equal(scale, rtn_scale) and torch.equal(zero, rtn_zero)


def test_search_grid_rejects_bad_settings():
    with pytest.raises(ValueError, match="min_shrink"):
        search_grid(_w(), WeightQuant(3, 32), min_shrink=1.5)
