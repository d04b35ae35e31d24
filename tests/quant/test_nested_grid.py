"""The nested grid: every width is the top bits of one symmetric int8 master (slice_codes)."""

import pytest
import torch

from bitswitch.errors import BitswitchError
from bitswitch.profiles import QuantOptions
from bitswitch.quant.config import WeightQuant
from bitswitch.quant.functional import (dequantize_weight, fake_quantize_weight, nested_master, quantize_weight,
                                        slice_codes)


def reference_slice(c: int, bits: int) -> int:
    """The stated rule in plain integers: round half away from zero, then clip."""
    shift = 8 - bits
    q = 2 ** (bits - 1) - 1
    mag = (abs(c) + (1 << (shift - 1))) // (1 << shift) if shift else abs(c)
    return max(-q, min(q, mag if c >= 0 else -mag))


@pytest.mark.parametrize("bits", range(2, 9))
def test_slice_matches_the_stated_rule_for_every_code(bits):
    codes = torch.arange(-127, 128)
    got = slice_codes(codes, bits).tolist()
    assert got == [reference_slice(c, bits) for c in range(-127, 128)]
    assert got == [-g for g in reversed(got)]          # symmetric: slice(-c) == -slice(c)
    q = 2 ** (bits - 1) - 1
    assert set(got) == set(range(-q, q + 1))            # every level of the width is used


@pytest.mark.parametrize("group", [None, 16])
@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_nested_weight_is_the_sliced_master(bits, group):
    torch.manual_seed(0)
    w = torch.randn(24, 64)
    cfg = WeightQuant(bits, group, grid="nested")
    c8, s8, _ = quantize_weight(w, nested_master(cfg))
    codes, scale, zero = quantize_weight(w, cfg)
    assert zero is None
    assert torch.equal(codes, slice_codes(c8, bits))
    assert torch.equal(scale, s8 * 2 ** (8 - bits))
    wq = fake_quantize_weight(w, cfg)
    assert torch.equal(wq, dequantize_weight(codes, scale, None, cfg))
    assert len(torch.unique(codes)) <= 2 ** bits - 1


def test_nested_8_bits_is_the_independent_grid():
    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fake_quantize_weight(w, WeightQuant(8, grid="nested")), fake_quantize_weight(w, WeightQuant(8)))


def test_nested_grid_refuses_asymmetric_and_log():
    with pytest.raises(ValueError, match="nested"):
        WeightQuant(4, symmetric=False, grid="nested")
    with pytest.raises(BitswitchError, match="nested"):
        QuantOptions(weight_symmetric=False, weight_grid="nested")
    with pytest.raises(BitswitchError, match="grid"):
        QuantOptions(weight_grid="matryoshka")


def test_options_resolve_nested_widths_and_leave_16_bits_alone():
    o = QuantOptions(weight_grid="nested")
    assert o.precision(4, 32, 8).weight == WeightQuant(4, 32, grid="nested")
    assert o.precision(16, None, None).weight.grid == "independent"
