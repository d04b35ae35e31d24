"""Runtime: the decoder against fake quantization, switching without repacking, decoding rules.

Tolerances: with the float32 ``reference`` kernel the runtime's logits equal the fake-quantized
model's within 1e-4 absolute (the same weights and activations, a different summation order), so
the decoder itself (fused units, rotary / learned positions, padding, KV cache, LoRA) is exact; with
activation quantization an input within float rounding of a level boundary may take the
neighbouring level, so there the argmax is equal and the error under 5% of the largest logit. With
the bf16 kernels each unit's input and output is rounded to bf16 (relative 2^-8): on these tiny
random models (weights of std 0.2, which amplify every rounding) the largest logit error stays under
8% of the largest logit, and under 1% on SmolLM2 (integration test).
"""

import copy

import pytest
import torch

from bitswitch.adapters import AdapterConfig, add_adapters
from bitswitch.errors import BitswitchError
from bitswitch.models import tiny_model
from bitswitch.runtime import Runtime
from bitswitch.switching import make_switchable, set_profile

PROFILES = ["fp", "w8", "w4g32", "w4g32a8", "w3g32"]
PROMPTS = ["hello world, this is", "xx the runtime packs", "a"]


def switchable(spec, keying="shared"):
    model, tok = tiny_model(spec)
    model.eval()
    make_switchable(model, keying=keying)
    add_adapters(model, ["w4g32", "w8"], AdapterConfig(r=4))
    gen = torch.Generator().manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1, generator=gen)   # nonzero: the adapters change the output
    return model, tok


def padded(tok, texts):
    seqs = [tok(t).input_ids for t in texts]
    n = max(map(len, seqs))
    ids = torch.tensor([[tok.pad_token_id] * (n - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask


def fake_logits(model, ids, mask):
    with torch.no_grad():
        return model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2"])
def built(request):
    model, tok = switchable(request.param)
    return model, tok, Runtime.from_model(model, tok, PROFILES, kernel="reference"), Runtime.from_model(model, tok, PROFILES)


@pytest.mark.parametrize("profile", PROFILES)
def test_logits_equal_fake_quantization(built, profile):
    model, tok, ref, rt = built
    ids, mask = padded(tok, PROMPTS)
    set_profile(model, profile)
    want = fake_logits(model, ids, mask)
    keep = mask.bool()
    ref.set_profile(profile)
    got = ref.logits(ids, mask)
    if "a" not in profile:
        assert (got - want)[keep].abs().max() < 1e-4
    else:   # an input within float rounding of a level boundary may take the neighbouring level
        assert torch.equal(got.argmax(-1)[keep], want.argmax(-1)[keep])
        assert (got - want)[keep].abs().max() < 0.05 * want[keep].abs().max()
    rt.set_profile(profile)
    got = rt.logits(ids, mask)
    assert got.dtype == torch.float32
    assert (got - want)[keep].abs().max() < 0.08 * want[keep].abs().max()


@pytest.mark.parametrize("profile", ["w8", "w4g32a8"])
def test_greedy_tokens_equal_fake_quantization(built, profile):
    model, tok, ref, rt = built
    set_profile(model, profile)
    for r in (ref, rt):
        r.set_profile(profile)
    agree = []
    for text in PROMPTS:
        ids = torch.tensor([tok(text).input_ids])
        with torch.no_grad():
            want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                                  pad_token_id=tok.eos_token_id, eos_token_id=None)[0, ids.shape[1]:].tolist()
        assert ref.generate([text], max_new_tokens=12, stop=None, eos=False).tokens[0] == want
        got = rt.generate([text], max_new_tokens=12, stop=None, eos=False).tokens[0]
        agree.append(next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), 12))
    # bf16: a near-tie of two logits may flip, and a flipped token changes the rest of the row
    assert min(agree) >= 1 and sum(agree) >= len(agree) * 12 // 2, agree


def test_a_batch_with_padding_gives_each_prompt_its_own_tokens(built):
    _, _, ref, _ = built
    ref.set_profile("w4g32")
    batch = ref.generate(PROMPTS, max_new_tokens=8, stop=None, eos=False).tokens
    assert batch == [ref.generate([p], max_new_tokens=8, stop=None, eos=False).tokens[0] for p in PROMPTS]


def test_per_token_switching_equals_each_step_at_its_own_profile(built):
    _, tok, _, rt = built
    schedule = ["w4g32", "w8", "w8", "fp"]
    ids = tok(PROMPTS[0]).input_ids
    out = rt.generate([ids], max_new_tokens=9, stop=None, eos=False, schedule=schedule)
    assert out.profiles_used == [schedule[i % 4] for i in range(9)]
    # by hand: one forward per step, the profile set before it
    model = rt.model
    cache = model.new_cache(1, len(ids) + 9)
    cache.valid[0, :len(ids)] = True
    step, pos, toks = torch.tensor([ids]), 0, []
    with torch.inference_mode():
        for i in range(9):
            rt.set_profile(schedule[i % 4])
            nxt = model(step, cache, pos, last_only=True)[:, -1].argmax(-1)
            pos += step.shape[1]
            cache.valid[:, pos] = True
            toks.append(int(nxt))
            step = nxt[:, None]
    assert out.tokens[0] == toks


def test_switching_never_repacks(built):
    model, tok, _, rt = built
    packed = rt.pack_count
    n_units = len(rt.units)
    # fp, w8, w4g32 (shared by w4g32a8), w3g32 per block unit; the head runs fp under every built-in profile
    assert packed == (n_units - 1) * 4 + 1
    before = rt.resident_bytes()
    for p in PROFILES * 3:
        rt.set_profile(p)
        rt.generate([PROMPTS[0]], max_new_tokens=2, stop=None)
    rt.set_unit_profiles({"L0.attn_in": "w8", "L1.mlp_out": "w3g32"})
    rt.generate([PROMPTS[0]], max_new_tokens=2, schedule=["w8", "w4g32"])
    assert rt.pack_count == packed and rt.resident_bytes() == before
    assert set(before["by_width"]) == {"fp", "w8", "w4g32", "w3g32"}


def test_one_unit_switch_and_the_derived_profile_name(built):
    _, tok, _, rt = built
    rt.set_profile("w8")
    assert rt.profile == "w8"
    rt.set_unit_profile("L0.attn_in", "w4g32")
    assert rt.profile == "mixed" and rt._units["L0.attn_in"].active == "w4g32"
    # the same logits as set_unit_profiles gives, and a uniform profile again once every unit agrees
    ids, mask = padded(tok, PROMPTS)
    one = rt.logits(ids, mask)
    rt.set_profile("w8")
    rt.set_unit_profiles({"L0.attn_in": "w4g32"})
    assert torch.equal(one, rt.logits(ids, mask))
    for unit in rt.units:
        rt.set_unit_profile(unit, "w4g32")
    assert rt.profile == "w4g32"
    for unit, prof in [("L9.attn_in", "w8"), ("L0.attn_in", "w2"), ("L0.attn_in", " w8")]:
        with pytest.raises(BitswitchError, match="cannot switch unit") as e:
            rt.set_unit_profile(unit, prof)
        assert "\n" not in str(e.value)
    rt.set_profile("w8")


def test_switching_back_gives_identical_logits(built):
    _, tok, _, rt = built
    ids, mask = padded(tok, PROMPTS)
    rt.set_profile("w4g32a8")
    first = rt.logits(ids, mask)
    rt.set_profile("w8")
    rt.logits(ids, mask)
    rt.set_profile("w4g32a8")
    assert torch.equal(rt.logits(ids, mask), first)


def test_adapters_follow_the_profile_keying():
    model, tok = switchable("tiny-llama", keying="profile")   # adapters named w4g32 and w8 only
    rt = Runtime.from_model(model, tok, ["w4g32", "w3g32"], kernel="reference")
    ids, mask = padded(tok, PROMPTS)
    for p in ("w4g32", "w3g32"):                                 # w3g32 has no adapter: runs without one
        set_profile(model, p)
        rt.set_profile(p)
        assert (rt.logits(ids, mask) - fake_logits(model, ids, mask))[mask.bool()].abs().max() < 1e-4
    assert rt.resident_bytes()["adapters"] > 0


def test_stops_eos_and_min_new_tokens():
    model, tok = switchable("tiny-llama")
    rt = Runtime.from_model(model, tok, ["w8"], kernel="reference")
    free = rt.generate([PROMPTS[0]], max_new_tokens=16, stop=None, eos=False)
    text, toks = free.texts[0], free.tokens[0]
    stop = text[3:5]
    cut = rt.generate([PROMPTS[0]], max_new_tokens=16, stop=[stop], eos=False)
    assert cut.texts[0] == text[:text.find(stop)]
    assert rt.generate([PROMPTS[0]], max_new_tokens=16, stop=[lambda t: 2 if len(t) >= 4 else -1],
                       eos=False).texts[0] == text[:2]
    # EOS: call the third free token the end of text; the row then ends before it (not before 4 with min_new_tokens)
    rt.tokenizer = copy.deepcopy(tok)
    rt.tokenizer.eos_token = tok.convert_ids_to_tokens(toks[2])
    assert toks[2] not in toks[:2]
    assert rt.generate([PROMPTS[0]], max_new_tokens=16, stop=None, eos=True).tokens[0] == toks[:2]
    assert len(rt.generate([PROMPTS[0]], max_new_tokens=16, min_new_tokens=4, stop=None, eos=True).tokens[0]) >= 4


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    model, tok = switchable("tiny-gpt2")
    rt = Runtime.from_model(model, tok, ["w4g32"])
    kw = dict(max_new_tokens=10, stop=None, eos=False, do_sample=True, temperature=1.5)
    a = rt.generate(PROMPTS, seed=3, **kw).tokens
    assert a == rt.generate(PROMPTS, seed=3, **kw).tokens and a != rt.generate(PROMPTS, seed=4, **kw).tokens
    greedy = rt.generate(PROMPTS, max_new_tokens=10, stop=None, eos=False).tokens
    assert rt.generate(PROMPTS, seed=5, top_k=1, **kw).tokens == greedy
    assert rt.generate(PROMPTS, seed=5, top_p=1e-6, **kw).tokens == greedy


def test_bad_requests_are_one_line_errors():
    model, tok = switchable("tiny-llama")
    rt = Runtime.from_model(model, tok, ["w8"])
    for call, needle in [(lambda: rt.set_profile("w4g32"), "not packed"),
                         (lambda: rt.generate(["x"], schedule=["w8", "w2"]), "not packed"),
                         (lambda: rt.set_unit_profiles({"L9.attn_in": "w8"}), "not a unit"),
                         (lambda: rt.generate([""]), "at least one token"),
                         (lambda: rt.generate(["x"], max_new_tokens=300), "context"),
                         (lambda: Runtime.from_model(model, tok, ["w8"], compile="x"), "compile")]:
        with pytest.raises(BitswitchError) as e:
            call()
        assert needle in str(e.value) and "\n" not in str(e.value)
