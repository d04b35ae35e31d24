"""Tiny seeded switchable models and engines over them (fake quantization and the runtime)."""

import pytest

from bitswitch.dynamic import FakeQuantEngine, RuntimeEngine
from bitswitch.models import tiny_model
from bitswitch.runtime import Runtime
from bitswitch.switching import make_switchable

PROMPTS = ["hello world, this is", "xx the runtime packs", "a", "The quick brown fox jumps over"]


def switchable(spec: str, seed: int = 0):
    model, tok = tiny_model(spec, seed=seed)
    model.eval()
    return make_switchable(model), tok


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def fake(request):
    model, tok = switchable(request.param)
    return FakeQuantEngine(model, tok)


@pytest.fixture(scope="module", params=[("tiny-llama", "reference"), ("tiny-llama", "auto"), ("tiny-gpt2", "auto")],
                ids=["llama-ref", "llama-bf16", "gpt2-bf16"])
def runtime(request):
    spec, kernel = request.param
    model, tok = switchable(spec)
    return RuntimeEngine(Runtime.from_model(model, tok, ["w3g32", "w4g32", "w8", "fp"], kernel=kernel))
