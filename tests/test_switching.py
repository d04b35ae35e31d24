import pytest
import torch

import bitswitch as bs
from bitswitch.adapters import adapter_parameters


def test_fp_is_bitwise_the_unwrapped_model(tiny, ids):
    model, _, ref = tiny
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)
        bs.set_profile(model, "w4a8")
        bs.set_profile(model, "fp")
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_quantized_profiles_change_the_logits(tiny, ids):
    model, _, ref = tiny
    with torch.no_grad(), bs.use_profile(model, "w4a8"):
        assert not torch.equal(model(ids).logits, ref(ids).logits)


def test_switch_a_b_a_is_bitwise(tiny, ids):
    model, _, _ = tiny
    bs.add_adapters(model, ["w8a8", "w4a8"])
    with torch.no_grad():
        bs.set_profile(model, "w8a8")
        a = model(ids).logits
        bs.set_profile(model, "w4a8;L0.*=w6a8")
        b = model(ids).logits
        bs.set_profile(model, "w8a8")
        assert torch.equal(model(ids).logits, a) and not torch.equal(a, b)


def test_use_profile_restores(tiny, ids):
    model, _, _ = tiny
    bs.set_profile(model, "w6a8")
    with bs.use_profile(model, "w4a8"):
        assert model.bitswitch.profile.name == "w4a8"
    assert model.bitswitch.profile.name == "w6a8"


def test_16_bit_is_close_to_fp(tiny, ids):
    model, _, ref = tiny
    with torch.no_grad(), bs.use_profile(model, "w16a16"):
        out, exp = model(ids).logits, ref(ids).logits
    assert ((out - exp).norm() / exp.norm()) < 1e-3


def _train_step(model, ids):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    opt.zero_grad()
    model(ids, labels=ids).loss.backward()
    opt.step()


def test_training_step_changes_only_the_active_adapter(tiny, ids):
    model, _, _ = tiny
    bs.add_adapters(model, ["w8a8", "w4a8"], bs.AdapterConfig(r=4))
    bs.freeze_base(model)
    # make B non-zero so both A and B get gradients
    for p in adapter_parameters(model):
        torch.nn.init.normal_(p, std=0.02)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bs.set_profile(model, "w4a8")
    _train_step(model, ids)
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p)
        assert changed == (".adapters.w4a8." in n), n
    assert all(p.grad is None for p in adapter_parameters(model, "w8a8"))


def test_disabled_adapters_give_the_base_model(tiny, ids):
    model, _, ref = tiny
    bs.add_adapters(model, ["fp"])
    for p in adapter_parameters(model):
        torch.nn.init.normal_(p)
    with torch.no_grad():
        bs.set_profile(model, "fp")
        assert not torch.equal(model(ids).logits, ref(ids).logits)
        bs.set_profile(model, "fp", adapters=False)
        assert torch.equal(model(ids).logits, ref(ids).logits)


def test_adapters_save_and_load_give_identical_logits(tiny, ids, tmp_path):
    model, _, _ = tiny
    spec = model.config.model_type
    bs.add_adapters(model, ["w8a8", "w4a8"])
    for p in adapter_parameters(model):
        torch.nn.init.normal_(p, std=0.1)
    bs.save_adapters(model, tmp_path, ["w8a8", "w4a8"])
    fresh, _ = bs.load_model("tiny-gpt2" if spec == "gpt2" else "tiny-llama", device="cpu")
    bs.make_switchable(fresh)
    meta = bs.load_adapters(fresh, tmp_path)
    assert set(meta["profiles"]) == {"w8a8", "w4a8"} and meta["profiles"]["w4a8"]["L0.mlp_in"] == "w4a8"
    with torch.no_grad():
        for prof in ("w8a8", "w4a8"):
            bs.set_profile(model, prof)
            bs.set_profile(fresh, prof)
            assert torch.equal(model(ids).logits, fresh(ids).logits)


@pytest.mark.parametrize("keying, expected", [("shared", {"shared"}), ("unit-bits", {"w8a8", "w4a8"})])
def test_shared_and_unit_bits_keying(keying, expected, ids):
    model, _ = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model, keying=keying)
    bs.add_adapters(model, ["w8a8", "w4a8;L0.*=w8a8"])
    keys = {k for _, _, m in bs.switching.unit_modules(model) for k in m.adapters}
    assert keys == expected
    bs.set_profile(model, "w4a8;L0.*=w8a8")
    active = {u: m.active_adapter for u, _, m in bs.switching.unit_modules(model) if u != "head"}
    if keying == "unit-bits":
        assert active["L0.attn_in"] == "w8a8" and active["L1.attn_in"] == "w4a8"
    else:
        assert set(active.values()) == {"shared"}


def test_static_activations_need_calibration(ids):
    model, _ = bs.load_model("tiny-gpt2", device="cpu")
    bs.make_switchable(model, bs.QuantOptions(act_mode="tensor"))
    bs.set_profile(model, "w8a8")
    with pytest.raises(RuntimeError, match="calibrate"):
        model(ids)
    assert bs.calibrate(model, [ids, ids[:1]]) == 2
    out = model(ids).logits
    assert torch.isfinite(out).all()
    # observers are keyed by profile: another profile needs its own calibration
    bs.set_profile(model, "w4a8")
    with pytest.raises(RuntimeError, match="calibrate"):
        model(ids)


def test_unsupported_model_is_refused():
    from transformers import AutoModelForCausalLM, BloomConfig

    model = AutoModelForCausalLM.from_config(BloomConfig(n_layer=1, hidden_size=32, n_head=2, vocab_size=64))
    with pytest.raises(bs.BitswitchError, match="'bloom' is not supported"):
        bs.make_switchable(model)


def test_units_share_one_quantized_input_without_changing_results(ids):
    """Llama's q/k/v (and gate/up) quantize their common input once; results are unchanged."""
    model, _ = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model)
    bs.set_profile(model, "w4a8")
    with torch.no_grad():
        shared = model(ids).logits
        for _, _, m in bs.switching.unit_modules(model):
            m.input_share = None
        assert torch.equal(model(ids).logits, shared)


def test_weight_cache_modes_give_bitwise_identical_logits(tiny, ids):
    model, _, _ = tiny
    out = {}
    for mode in ("auto", "codes", "float"):
        bs.set_weight_cache(model, mode)
        bs.set_profile(model, "w4g8a8;L0.*=w8a8")
        with torch.no_grad():
            out[mode] = model(ids).logits
    assert torch.equal(out["auto"], out["codes"]) and torch.equal(out["auto"], out["float"])
    with pytest.raises(bs.BitswitchError, match="unknown weight cache"):
        bs.set_weight_cache(model, "int4")


def test_only_switching_writes_unit_precision():
    """``switching.set_unit_profiles`` is the one writer of a QuantLinear's precision (its own
    ``__init__`` aside): no other module assigns ``.precision`` or setattr's it."""
    import ast
    from pathlib import Path

    root = Path(bs.__file__).parent
    writers = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            flat = [t for tgt in targets for t in (tgt.elts if isinstance(tgt, (ast.Tuple, ast.List)) else [tgt])]
            for t in flat:
                if isinstance(t, ast.Attribute) and t.attr == "precision":
                    own_init = rel == "quant/linear.py" and isinstance(t.value, ast.Name) and t.value.id == "self"
                    if not own_init:
                        writers.append(f"{rel}:{node.lineno}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr"
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value == "precision"):
                writers.append(f"{rel}:{node.lineno}")
    assert writers and all(w.startswith("switching.py:") for w in writers), writers


def test_set_unit_profiles_records_a_mix_and_use_profile_restores_it(ids):
    model, _ = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model)
    bs.add_adapters(model, ["w8a8", "w4a8"])
    units = list(model.bitswitch.units)
    mix = {u: ("w4a8" if u.startswith("L0.") else "w8a8") for u in units}
    prof = bs.switching.set_unit_profiles(model, mix)
    st = model.bitswitch
    assert prof is st.profile and bs.resolve(prof, units, st.options) == st.table
    assert st.table["L0.attn_in"].spec == "w4a8" and st.table["L1.attn_in"].spec == "w8a8"
    assert st.table["head"].is_fp
    active = {u: m.active_adapter for u, _, m in bs.switching.unit_modules(model)}
    assert active["L0.mlp_in"] == "w4a8" and active["L1.mlp_in"] == "w8a8"
    with torch.no_grad():
        mixed = model(ids).logits
        with bs.use_profile(model, "fp"):
            pass
        assert torch.equal(model(ids).logits, mixed)       # adapters per unit restored, not re-keyed
    with pytest.raises(bs.BitswitchError, match="every unit"):
        bs.switching.set_unit_profiles(model, {"L0.attn_in": "w8a8"})
