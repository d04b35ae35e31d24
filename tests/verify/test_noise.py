"""The noise-floor perturbation: exact at zero, small, seeded, and gone afterwards."""

import pytest
import torch

import bitswitch as bs
from bitswitch.verify.noise import perturbed_inputs


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_perturbation_is_small_seeded_and_removed(tiny, ids):
    model, _, _ = tiny
    bs.set_profile(model, "fp")
    base = logits(model, ids)
    with perturbed_inputs(model, 0.0):
        assert torch.equal(logits(model, ids), base)
    with perturbed_inputs(model, 1e-6, seed=1):
        a = logits(model, ids)
    with perturbed_inputs(model, 1e-6, seed=1):
        b = logits(model, ids)
    with perturbed_inputs(model, 1e-6, seed=2):
        c = logits(model, ids)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, base)
    assert (a - base).abs().max() <= 1e-4 * base.abs().max()
    assert torch.equal(logits(model, ids), base)                  # the hook is gone


def test_a_negative_or_nan_perturbation_is_refused(tiny):
    model, _, _ = tiny
    for rel in (-1e-6, float("nan")):
        with pytest.raises(ValueError, match="relative perturbation must be >= 0"):
            with perturbed_inputs(model, rel):
                pass
