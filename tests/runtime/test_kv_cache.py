"""The KV cache's dtype: float32 by default (logit parity with fake quantization), bfloat16 on request.

A bf16 cache stores each key and value rounded once: layer 0's keys come from the same inputs in
either cache, so they equal the float32 cache's keys rounded to bf16 bit for bit; later layers see
attention over rounded keys, so only a tolerance holds there (stated below).
"""

import pytest
import torch

from bitswitch.errors import BitswitchError
from bitswitch.models import tiny_model
from bitswitch.runtime import Runtime
from bitswitch.switching import make_switchable


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def rt(request):
    model, tok = tiny_model(request.param)
    model.eval()
    make_switchable(model)
    return Runtime.from_model(model, tok, ["w8", "w4g32"], kernel="reference", compile="off")


def prefill(rt, ids):
    cache = rt.model.new_cache(1, ids.shape[1] + 2)
    cache.valid[0, :ids.shape[1]] = True
    with torch.inference_mode():
        logits = rt.model(ids, cache, 0)
    return logits, cache


IDS = torch.tensor([[5, 17, 3, 99, 42, 7, 8, 61]])


def prefill_bf16(rt, ids):
    """prefill on a bf16 cache, the runtime left at float32 afterwards."""
    rt.set_kv_dtype("bfloat16")
    try:
        return prefill(rt, ids)
    finally:
        rt.set_kv_dtype("float32")


def test_default_is_float32_and_bf16_halves_the_cache(rt):
    assert rt.kv_dtype == "float32"
    _, c32 = prefill(rt, IDS)
    _, c16 = prefill_bf16(rt, IDS)
    assert c32.k[0].dtype == torch.float32 and c16.k[0].dtype == torch.bfloat16
    assert c16.nbytes() * 2 == c32.nbytes()


def test_bf16_cache_holds_the_float32_keys_rounded(rt):
    _, c32 = prefill(rt, IDS)
    logits16, c16 = prefill_bf16(rt, IDS)
    assert torch.equal(c16.k[0], c32.k[0].to(torch.bfloat16))
    assert torch.equal(c16.v[0], c32.v[0].to(torch.bfloat16))
    logits32, _ = prefill(rt, IDS)
    # rounding keys and values (relative 2^-8) moves these random-weight logits by under 5% of the largest
    assert (logits16 - logits32).abs().max() <= 0.05 * logits32.abs().max()


def test_switching_back_to_float32_gives_identical_logits(rt):
    before, _ = prefill(rt, IDS)
    rt.set_kv_dtype("bfloat16")
    prefill(rt, IDS)
    rt.set_kv_dtype("float32")
    after, _ = prefill(rt, IDS)
    assert torch.equal(before, after)


def test_generate_runs_on_a_bf16_cache(rt):
    rt.set_kv_dtype("bfloat16")
    try:
        out = rt.generate([IDS[0].tolist()], max_new_tokens=4, min_new_tokens=4, stop=None, eos=False)
    finally:
        rt.set_kv_dtype("float32")
    assert len(out.tokens[0]) == 4


def test_a_bad_dtype_is_a_one_line_error(rt):
    with pytest.raises(BitswitchError, match="float32 or bfloat16"):
        rt.set_kv_dtype("int8")
    assert rt.kv_dtype == "float32"
    model, tok = tiny_model("tiny-llama")
    with pytest.raises(BitswitchError, match="float32 or bfloat16"):
        Runtime.from_model(model, tok, ["w8"], kernel="reference", compile="off", kv_dtype="float16")
