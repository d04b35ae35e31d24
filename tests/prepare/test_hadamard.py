"""Hadamard constructions: orthogonal, entries +-1/sqrt(n), first column constant; the random and
mean-fixing variants orthogonal (float64, tolerance 1e-12)."""

import pytest
import torch

from bitswitch.prepare.hadamard import (has_hadamard, hadamard, mean_fixing, random_hadamard,
                                        random_orthogonal)

SIZES = [1, 2, 4, 8, 12, 20, 24, 40, 48, 64, 96, 576, 768, 1536, 3072]


def _orthogonal(m):
    return torch.allclose(m @ m.T, torch.eye(m.shape[0], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("n", SIZES)
def test_hadamard_is_orthogonal_with_entries_plus_minus_one_over_sqrt_n(n):
    h = hadamard(n)
    assert h.shape == (n, n) and h.dtype == torch.float64 and _orthogonal(h)
    assert torch.allclose(h.abs(), torch.full_like(h, n ** -0.5), atol=1e-15)
    assert torch.all(h[:, 0] > 0)


@pytest.mark.parametrize("n", [3, 6, 10, 28, 100])
def test_sizes_without_a_construction_raise_a_clear_error(n):
    assert not has_hadamard(n)
    with pytest.raises(ValueError, match=f"size {n}"):
        hadamard(n)


def test_random_variants_are_orthogonal_and_seeded():
    r = random_hadamard(576, torch.Generator().manual_seed(0))
    assert _orthogonal(r) and torch.allclose(r.abs(), torch.full_like(r, 576 ** -0.5))
    assert torch.equal(r, random_hadamard(576, torch.Generator().manual_seed(0)))
    assert not torch.equal(r, random_hadamard(576, torch.Generator().manual_seed(1)))
    assert _orthogonal(random_orthogonal(30, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("kind, n", [("hadamard", 64), ("hadamard", 768), ("orthogonal", 64), ("orthogonal", 30)])
def test_the_gpt2_rotation_fixes_the_ones_vector(kind, n):
    q = mean_fixing(n, torch.Generator().manual_seed(0), kind)
    ones = torch.ones(n, dtype=torch.float64)
    assert _orthogonal(q)
    assert torch.allclose(q @ ones, ones, atol=1e-12) and torch.allclose(ones @ q, ones, atol=1e-12)
    assert (q - torch.eye(n, dtype=torch.float64)).abs().max() > 0.1   # it does rotate
