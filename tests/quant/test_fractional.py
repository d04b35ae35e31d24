import random

import pytest
import torch

from bitswitch.quant import fractional as fr
from bitswitch.quant.config import WeightQuant
from bitswitch.quant.functional import fake_quantize_weight


def _w(seed=0, shape=(6, 16)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8, 16])
@pytest.mark.parametrize("base", [WeightQuant(8), WeightQuant(8, group_size=8), WeightQuant(8, symmetric=False)])
def test_integer_width_is_the_integer_grid_bit_for_bit(bits, base):
    w = _w(bits)
    import dataclasses
    want = fake_quantize_weight(w, dataclasses.replace(base, bits=bits))
    for u in (0.0, 0.3, 0.999999):   # no draw at an integer width: every u gives the same grid
        got = fr.fake_quantize_fractional(w, float(bits), u, base)
        assert torch.equal(got, want)
        assert fr.draw_bits(bits, u) == bits


def test_fractional_width_is_floor_or_ceil_by_its_definition():
    w = _w(1)
    b = 4.7   # frac 0.7: ceil when u < 0.7
    assert fr.split_bits(b)[:2] == (4, 5) and fr.split_bits(b)[2] == pytest.approx(0.7)
    assert torch.equal(fr.fake_quantize_fractional(w, b, 0.69), fake_quantize_weight(w, WeightQuant(5)))
    assert torch.equal(fr.fake_quantize_fractional(w, b, 0.71), fake_quantize_weight(w, WeightQuant(4)))
    # on small tensors (one scale per row): 4 bits has at most 15 symmetric levels a row, 5 bits 31
    w = _w(2, (3, 200))
    assert max(r.unique().numel() for r in fr.fake_quantize_fractional(w, b, 0.9)) <= 15
    assert max(r.unique().numel() for r in fr.fake_quantize_fractional(w, b, 0.1)) > 15


def test_expected_width_is_b():
    rng = random.Random(0)
    for b in (2.25, 4.5, 5.3, 7.9):
        draws = [fr.draw_bits(b, rng.random()) for _ in range(20000)]
        assert set(draws) <= {int(b), int(b) + 1}
        assert sum(draws) / len(draws) == pytest.approx(b, abs=0.02)
        assert fr.expected_bits(b) == pytest.approx(b)


def test_per_unit_draws_are_seeded():
    units = [f"L{i}.mlp_in" for i in range(50)]
    a = fr.fractional_unit_bits(4.5, units, random.Random(3))
    assert a == fr.fractional_unit_bits(4.5, units, random.Random(3))
    assert set(a.values()) == {4, 5}


@pytest.mark.parametrize("bad", [1.5, 8.5, 12, float("nan"), "4.5", True])
def test_bad_widths_are_one_line_errors(bad):
    with pytest.raises(ValueError) as e:
        fr.split_bits(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError):
        fr.draw_bits(4.5, 1.0)
