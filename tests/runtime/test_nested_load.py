"""Runtime.load of a nested checkpoint packs straight from the masters (a hollow model): the same
runtime, bit for bit, as packing the fully loaded switchable model, and every master is consumed."""

import pytest
import torch

import bitswitch as bs
from bitswitch.adapters import adapter_parameters
from bitswitch.export import export_nested, load_nested_model, read_nested
from bitswitch.export.nested_reader import master_weight
from bitswitch.loading import load_switchable
from bitswitch.runtime import Runtime

ADAPTED = ["w8", "w4g32a8"]
PROFILES = ["w4g32", "w8", "w4g32a8", "fp", "w3g32"]


def _checkpoint(spec, tmp_path):
    model, tok = bs.load_model(spec, device="cpu")
    bs.make_switchable(model, bs.QuantOptions(group_size=32, weight_grid="nested"))
    bs.add_adapters(model, ADAPTED, bs.AdapterConfig(r=4))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    export_nested(model, tok, tmp_path / "n")
    return tmp_path / "n"


def _logits(rt, profile):
    ids = torch.randint(0, 257, (2, 20), generator=torch.Generator().manual_seed(0))
    rt.set_profile(profile)
    return rt.logits(ids)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
@pytest.mark.parametrize("kernel", ["auto", "reference"])
def test_hollow_load_is_the_full_load_bit_for_bit(spec, kernel, tmp_path):
    path = _checkpoint(spec, tmp_path)
    hollow = Runtime.load(str(path), profiles=PROFILES, kernel=kernel, device="cpu")
    model, tok = load_switchable(str(path), device="cpu")
    full = Runtime.from_model(model, tok, PROFILES, kernel=kernel)
    assert hollow.pack_count == full.pack_count
    for p in PROFILES:
        assert torch.equal(_logits(hollow, p), _logits(full, p)), p


def test_the_hollow_model_holds_no_unit_weights_and_masters_are_read_once(tmp_path):
    path = _checkpoint("tiny-llama", tmp_path)
    model, _ = load_nested_model(path, hollow=True)
    ckpt = model.bitswitch_nested["checkpoint"]
    q = model.get_submodule("model.layers.0.self_attn.q_proj").base.weight
    assert q.stride() == (0, 0) and q.shape == ckpt.masters["model.layers.0.self_attn.q_proj"][0].shape
    ref = read_nested(path)
    w = master_weight(ckpt, "model.layers.0.self_attn.q_proj", release=True)
    assert torch.equal(w, master_weight(ref, "model.layers.0.self_attn.q_proj"))
    assert "model.layers.0.self_attn.q_proj" not in ckpt.masters and len(ref.masters) == len(ckpt.masters) + 1
