import pytest

import bitswitch as bs
from bitswitch.search import metrics as M
from bitswitch.search.prefix import PrefixRecorder, replay_from
from bitswitch.search.sensitivity import layer_role, measure_sensitivity, probe_groups
from bitswitch.switching import set_profile


def _setup(spec, data, metric="answer_ppl", limit=6):
    model, tok = bs.load_model(spec, device="cpu")
    bs.make_switchable(model)
    return model, tok, M.prepare(model, tok, metric, data, limit=limit, batch_size=4)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_prefix_replay_equals_the_full_forward(spec, tiny_squad):
    model, tok, md = _setup(spec, tiny_squad)
    set_profile(model, "w8a8")
    rec = PrefixRecorder(model)
    with rec.record():
        base = M.measure(model, tok, md)
    assert rec.usable and rec.calls == 2        # 6 questions in batches of 4
    for layer in (0, 1):
        set_profile(model, f"w8a8;L{layer}.mlp_out=w3a8")
        full = M.measure(model, tok, md)
        with replay_from(model, rec, layer):
            replayed = M.measure(model, tok, md)
        assert replayed["answer_ppl"] == full["answer_ppl"] != base["answer_ppl"]
    # blocks are whole again afterwards
    assert all("forward" not in vars(b) for b in model.model.layers) if spec == "tiny-llama" else True


def test_unit_and_layer_records(tiny_squad):
    model, tok, md = _setup("tiny-llama", tiny_squad)
    base, records = measure_sensitivity(model, tok, md, "w8a8", "w3a8", "unit", progress=False)
    assert [r["name"] for r in records] == [f"L{i}.{r}" for i in (0, 1)
                                           for r in ("attn_in", "attn_out", "mlp_in", "mlp_out")] + ["head"]
    for r in records:
        assert r["delta"] == pytest.approx(r["value"] - base["value"])
        assert r["damage"] == pytest.approx(M.damage("answer_ppl", r["value"], base["value"]))
        assert r["probe_bits"] == 3 and r["profile"] == f"w8a8;{r['name']}=w3a8"
    # without replay: the same numbers
    _, plain = measure_sensitivity(model, tok, md, "w8a8", "w3a8", "unit", prefix=False, progress=False)
    assert [r["value"] for r in plain] == [r["value"] for r in records]
    _, layers = measure_sensitivity(model, tok, md, "w8a8", "w3a8", "layer", progress=False)
    assert [(r["name"], r["layer"], r["role"]) for r in layers] == [("L0", 0, None), ("L1", 1, None)]
    assert list(probe_groups(model, "layer").values()) == ["L0.*", "L1.*"]
    assert layer_role("head") == (None, "head")


def test_done_records_are_reused(tiny_squad):
    model, tok, md = _setup("tiny-llama", tiny_squad)
    fake = {"name": "L0.attn_in", "damage": 123.0}
    seen = []
    _, records = measure_sensitivity(model, tok, md, "w8a8", "w4a8", "unit", done={"L0.attn_in": fake},
                                     on_record=lambda b, r: seen.append(r["name"]), progress=False)
    assert records[0] is fake and "L0.attn_in" not in seen and len(seen) == 8


def test_damage_and_drop_orientation():
    assert M.damage("f1", 70.0, 72.5) == 2.5 and M.drop("f1", 70.0, 72.5) == 2.5
    assert M.damage("answer_ppl", 2.0, 2.0) == 0.0
    assert M.drop("ppl", 21.0, 20.0) == pytest.approx(0.05)
    assert M.canonical_metric("squad-f1") == "f1" and M.canonical_metric("answer-ppl", "squad") == "answer_ppl"
    with pytest.raises(bs.BitswitchError):
        M.canonical_metric("ppl", "squad")


def test_text_offset_is_a_held_out_token_slice(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(" ".join(f"word{i % 37} and more" for i in range(400)))
    model, tok = bs.load_model("tiny-llama", device="cpu")
    whole = M.prepare(model, tok, "ppl", str(text), max_tokens=300)
    held = M.prepare(model, tok, "ppl", str(text), max_tokens=100, offset=200)
    assert held.offset == 200 and held.ids.shape == (1, 100)
    assert held.ids.equal(whole.ids[:, 200:300])
    with pytest.raises(bs.BitswitchError, match="--offset"):
        M.prepare(model, tok, "ppl", str(text), max_tokens=10, offset=10**6)
