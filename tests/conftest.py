"""Shared fixtures: tiny seeded models (seconds) and the real data beside the repo (CI has it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bitswitch as bs

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data; skips the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives in ../shared beside the repo)")
    return path


@pytest.fixture(params=["tiny-gpt2", "tiny-llama"])
def tiny(request):
    """(switchable model, tokenizer, plain reference model) for both architectures."""
    ref, tok = bs.load_model(request.param, device="cpu")
    model, _ = bs.load_model(request.param, device="cpu")
    bs.make_switchable(model)
    return model, tok, ref


@pytest.fixture
def ids():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 257, (2, 24), generator=g)
