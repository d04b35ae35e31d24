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


def test_speculative_equals_greedy_runtime(runtime):
    """Token for token on every kernel, the bf16 ones included: a verification attends row by row
    as one-column steps do, and the units' matmuls give a row the same bits whatever the row count."""
    drafted = accepted = 0
    for text in PROMPTS:
        prompt = ids(runtime, text)
        want = greedy_generate(runtime, prompt, "w8", NEW, eos=False).tokens
        for k in range(1, 9):
            got = speculative_generate(runtime, prompt, "w4g32", "w8", k, NEW, eos=False)
            assert got.tokens == want, (text, k)
            drafted, accepted = drafted + got.drafted, accepted + got.accepted
    assert 0 < accepted < drafted


def test_adaptive_drafts_equal_greedy_and_shorten_with_the_floor(runtime):
    """A draft cut before its first unsure token: the output stays greedy at w8 for every floor; a
    floor of 0 is the fixed-length draft exactly, and a floor never drafts more than it."""
    for text in PROMPTS:
        prompt = ids(runtime, text)
        want = greedy_generate(runtime, prompt, "w8", NEW, eos=False).tokens
        fixed = speculative_generate(runtime, prompt, "w4g32", "w8", 8, NEW, eos=False)
        zero = speculative_generate(runtime, prompt, "w4g32", "w8", 8, NEW, eos=False, min_prob=0.0)
        assert (zero.tokens, zero.drafted, zero.accepted, zero.rounds) == \
               (fixed.tokens, fixed.drafted, fixed.accepted, fixed.rounds)
        for floor in (0.3, 0.6, 0.9, 1.0):
            got = speculative_generate(runtime, prompt, "w4g32", "w8", 8, NEW, eos=False, min_prob=floor)
            assert got.tokens == want, (text, floor)
            assert got.drafted <= fixed.drafted


@pytest.mark.parametrize("floor", [-0.1, 1.5])
def test_a_floor_outside_0_1_is_an_error(runtime, floor):
    with pytest.raises(BitswitchError, match="0..1"):
        speculative_generate(runtime, ids(runtime, "x"), "w4g32", "w8", 2, 4, min_prob=floor)


def test_a_verification_equals_the_steps_it_replaces_bitwise(runtime):
    """k+1 columns in one forward give the logits of k+1 one-column steps bit for bit (the property
    that makes speculative decoding on the bf16 kernels lossless). Also under ATEN_CPU_CAPABILITY=avx2
    and =default with ONEDNN_MAX_CPU_ISA=AVX2 / SSE41 (checked by hand)."""
    if runtime.model.head.dtype == torch.float32:
        pytest.skip("the float32 reference kernel is a float32 GEMM, which blocks differently by row count")
    runtime.set_profile("w8")
    prompt = ids(runtime, PROMPTS[0])
    runtime.prefill(prompt, len(prompt) + 12)
    base = runtime.position
    block = runtime.step([5, 6, 7, 8, 9, 10, 11, 12, 13])
    runtime.rollback(base)
    steps = torch.cat([runtime.step([t]) for t in (5, 6, 7, 8, 9, 10, 11, 12, 13)])
    assert torch.equal(block, steps)


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
