"""Self-speculative decoding equals greedy decoding at the high profile token for token (batch 1,
every draft length k = 1..8, both engines), and the engines' rollback is exact."""

import pytest
import torch

from bitswitch.dynamic import greedy_generate, speculative_generate
from bitswitch.errors import BitswitchError

from .conftest import PROMPTS

NEW = 24


def ids(engine, text):
    return engine.tokenizer(text).input_ids


@pytest.mark.parametrize("low,high", [("w4g32", "w8"), ("w3g32", "fp")])
def test_speculative_equals_greedy_fake(fake, low, high):
    drafted = accepted = 0
    for text in PROMPTS:
        prompt = ids(fake, text)
        want = greedy_generate(fake, prompt, high, NEW, eos=False).tokens
        assert len(want) == NEW
        for k in range(1, 9):
            got = speculative_generate(fake, prompt, low, high, k, NEW, eos=False)
            assert got.tokens == want, (text, k)
            drafted, accepted = drafted + got.drafted, accepted + got.accepted
    assert 0 < accepted < drafted   # both branches ran: drafts kept and drafts rejected


def near_tie(engine, prompt, want, got, profile="w8") -> bool:
    """Where ``got`` first leaves ``want``, the two tokens' logits at ``profile`` (given the shared
    prefix) lie within bf16 rounding: 2% of the largest logit."""
    i = next(j for j, (a, b) in enumerate(zip(want, got)) if a != b)
    engine.set_profile(profile)
    row = engine.prefill(prompt + want[:i])[-1]
    return bool((row[want[i]] - row[got[i]]).abs() <= 0.02 * row.abs().max())


def test_speculative_equals_greedy_runtime(runtime):
    """The float32 reference kernel: token for token. The bf16 kernels round a (k+1)-row matmul
    otherwise than a 1-row one, so a near tie may break the other way: any divergence must be one."""
    drafted = accepted = diverged = 0
    exact = runtime.model.head.dtype == torch.float32
    for text in PROMPTS:
        prompt = ids(runtime, text)
        want = greedy_generate(runtime, prompt, "w8", NEW, eos=False).tokens
        for k in range(1, 9):
            got = speculative_generate(runtime, prompt, "w4g32", "w8", k, NEW, eos=False)
            if got.tokens != want:
                assert not exact and near_tie(runtime, prompt, want, got.tokens), (text, k)
                diverged += 1
            drafted, accepted = drafted + got.drafted, accepted + got.accepted
    assert 0 < accepted < drafted
    assert diverged <= len(PROMPTS) * 8 // 4


def test_speculative_stops_at_eos_as_greedy(fake):
    for text in PROMPTS:
        prompt = ids(fake, text)
        full = greedy_generate(fake, prompt, "w8", NEW, eos=False).tokens
        eos = full[7]   # a token greedy decoding emits: taken as EOS, generation ends before it
        want = greedy_generate(fake, prompt, "w8", NEW, eos=eos).tokens
        assert want == full[:full.index(eos)]
        for k in (1, 3, 8):
            assert speculative_generate(fake, prompt, "w4g32", "w8", k, NEW, eos=eos).tokens == want


def test_greedy_engine_equals_runtime_generate(runtime):
    rt = runtime.runtime
    rt.set_profile("w4g32")
    for text in PROMPTS:
        prompt = ids(runtime, text)
        want = rt.generate([prompt], max_new_tokens=NEW, stop=None, eos=False).tokens[0]
        assert greedy_generate(runtime, prompt, "w4g32", NEW, eos=False).tokens == want


def test_rollback_then_step_equals_fresh(fake, runtime):
    for engine in (fake, runtime):
        engine.set_profile("w8")
        prompt = ids(engine, PROMPTS[0])
        engine.prefill(prompt, len(prompt) + 8)
        engine.step([5, 6, 7])
        engine.rollback(len(prompt) + 1)
        assert engine.position == len(prompt) + 1
        got = engine.step([9, 10])
        engine.prefill(prompt + [5], len(prompt) + 8)
        want = engine.step([9, 10])
        tol = 1e-5 if engine is fake else 0.05 * want.abs().max()   # bf16 kernels: rounding differs by shape
        assert (got - want).abs().max() <= tol
        with pytest.raises(BitswitchError):
            engine.rollback(engine.position + 1)


def test_bad_arguments(fake):
    with pytest.raises(BitswitchError):
        speculative_generate(fake, [1, 2], "w4g32", "w8", 0, 4)
    with pytest.raises(BitswitchError):
        greedy_generate(fake, [], "w8", 4)
    with pytest.raises(BitswitchError):
        greedy_generate(fake, [1], "w8", 0)
