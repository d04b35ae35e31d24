"""The compiled decode step against the eager one: the same greedy tokens, logits within float32
accumulation order, each profile compiled once and reused when precision switches per token."""

import pytest
import torch

from bitswitch.errors import BitswitchError
from bitswitch.runtime import Runtime
from bitswitch.runtime import compiled as compiled_mod

from .test_runtime import switchable

pytestmark = pytest.mark.skipif(not compiled_mod.compiler_available(), reason="torch.compile needs a C++ compiler")


def test_compiled_step_decodes_what_eager_does():
    torch._dynamo.reset()
    model, tok = switchable("tiny-llama")
    eager = Runtime.from_model(model, tok, ["w4g32", "w8"], compile="off")
    comp = Runtime.from_model(model, tok, ["w4g32", "w8"], compile="on")
    assert comp.compiled and not eager.compiled
    prompts = ["hello world, this is", "a"]
    sched = ["w4g32", "w8", "w8", "w4g32"]
    outs = [rt.generate(prompts, max_new_tokens=12, stop=(), eos=False, schedule=sched) for rt in (eager, comp)]
    assert outs[0].tokens == outs[1].tokens and outs[0].profiles_used == outs[1].profiles_used
    # one decode step's logits: both profiles through the compiled graph, again after switching back
    ids = torch.tensor([tok("hello world").input_ids])
    for p in ["w4g32", "w8", "w4g32"]:
        got = []
        for rt in (eager, comp):
            rt.set_profile(p)
            cache = rt.model.new_cache(1, ids.shape[1] + 1)
            cache.valid[:, :ids.shape[1] + 1] = True
            with torch.inference_mode():
                rt.model(ids, cache, 0)
                got.append(rt.step(ids[:, -1:], cache, ids.shape[1]))
        assert got[0].shape == got[1].shape == (1, 1, model.config.vocab_size)
        torch.testing.assert_close(got[1], got[0], rtol=1e-3, atol=1e-3 * got[0].abs().max().item())
    # a per-unit mix set at run time runs eager (no recompiling for every combination)
    comp.set_unit_profiles({"L0.attn_in": "w8"})
    assert comp.profile == "mixed"
    comp._compiled = lambda *a: pytest.fail("a per-unit mix went through the compiled step")
    assert len(comp.generate(prompts, max_new_tokens=3, stop=(), eos=False).tokens[0]) == 3


def test_compile_modes(monkeypatch):
    monkeypatch.setenv("BITSWITCH_COMPILE", "off")
    assert compiled_mod.resolve("auto") is False and compiled_mod.resolve("on") is True
    monkeypatch.setenv("BITSWITCH_COMPILE", "auto")
    assert compiled_mod.resolve("auto") is True          # a compiler is here (the module is skipped otherwise)
    monkeypatch.setenv("PATH", "")
    monkeypatch.delenv("CXX", raising=False)
    assert compiled_mod.resolve("auto") is False
    with pytest.raises(BitswitchError, match="C\\+\\+ compiler"):
        compiled_mod.resolve("on")
    monkeypatch.setenv("BITSWITCH_COMPILE", "sometimes")
    with pytest.raises(BitswitchError, match="BITSWITCH_COMPILE"):
        compiled_mod.resolve("auto")
