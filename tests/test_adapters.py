"""Quantizer options saved with adapters are read back: the defaults take them, others must match."""

import json

import pytest
import torch

import bitswitch as bs
from bitswitch.adapters import adapter_parameters
from bitswitch.loading import load_switchable

SAVED = bs.QuantOptions(weight_symmetric=False, group_size=16, act_mode="token", method="uniform")


@pytest.fixture
def saved_dir(tmp_path):
    model, _ = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model, SAVED)
    bs.add_adapters(model, ["w4a8"])
    for p in adapter_parameters(model):
        torch.nn.init.normal_(p, std=0.1)
    bs.save_adapters(model, tmp_path, ["w4a8"])
    bs.set_profile(model, "w4a8")
    with torch.no_grad():
        ref = model(torch.arange(12)[None]).logits
    return tmp_path, ref


@pytest.mark.parametrize("options", [None, bs.QuantOptions(), SAVED])
def test_default_or_equal_options_run_at_the_saved_ones(saved_dir, options):
    directory, ref = saved_dir
    assert json.loads((directory / "adapter_config.json").read_text())["options"]["group_size"] == 16
    model, _ = load_switchable("tiny-llama", str(directory), options, device="cpu")
    assert model.bitswitch.options == SAVED
    bs.set_profile(model, "w4a8")
    assert model.bitswitch.table["L0.mlp_in"].weight.group_size == 16
    with torch.no_grad():
        assert torch.equal(model(torch.arange(12)[None]).logits, ref)


def test_a_switched_model_with_default_options_is_re_resolved(saved_dir):
    directory, ref = saved_dir
    model, _ = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model)
    bs.set_profile(model, "w4a8")                      # resolved with the defaults: per channel, symmetric
    bs.load_adapters(model, directory)
    assert model.bitswitch.table["L0.mlp_in"].weight == SAVED.precision(4, None, 8).weight
    with torch.no_grad():
        assert torch.equal(model(torch.arange(12)[None]).logits, ref)


def test_other_explicit_options_are_refused_naming_the_difference(saved_dir):
    directory, _ = saved_dir
    with pytest.raises(bs.BitswitchError, match=r"group_size 16 \(saved\) vs 32 \(model\)") as err:
        load_switchable("tiny-llama", str(directory), bs.QuantOptions(weight_symmetric=False, group_size=32),
                        device="cpu")
    assert "weight_symmetric" not in str(err.value) and "\n" not in str(err.value)
