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


# -- checksums and malformed directories -------------------------------------------------------------

def _load_error(directory, match):
    model, _ = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model)
    with pytest.raises(bs.BitswitchError, match=match) as err:
        bs.load_adapters(model, directory)
    assert "\n" not in str(err.value)
    return str(err.value), model


def _edit_config(directory, fn):
    meta = json.loads((directory / "adapter_config.json").read_text())
    fn(meta)
    (directory / "adapter_config.json").write_text(json.dumps(meta))


def test_the_config_records_the_tensor_file_checksum(saved_dir):
    from bitswitch.io import sha256_file

    directory, _ = saved_dir
    meta = json.loads((directory / "adapter_config.json").read_text())
    assert meta["sha256"] == {"adapters.safetensors": sha256_file(directory / "adapters.safetensors")}


def test_a_flipped_byte_is_refused_and_old_directories_load_unchecked(saved_dir):
    directory, ref = saved_dir
    f = directory / "adapters.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x40                      # the exponent of one LoRA weight: the header still parses
    f.write_bytes(bytes(data))
    message, model = _load_error(directory, r"adapters.safetensors is corrupt \(sha256 mismatch\)")
    assert "re-train" in message
    assert model.bitswitch.options == bs.QuantOptions() and model.bitswitch.adapter_config is None   # untouched
    _edit_config(directory, lambda m: m.pop("sha256"))        # saved before checksums existed: loads as is
    model, _ = load_switchable("tiny-llama", str(directory), device="cpu")
    bs.set_profile(model, "w4a8")
    with torch.no_grad():
        assert not torch.equal(model(torch.arange(12)[None]).logits, ref)


@pytest.mark.parametrize("edit, match", [
    (lambda d: (d / "adapter_config.json").write_text("{"), "not valid JSON"),
    (lambda d: (d / "adapter_config.json").write_bytes(b"\xff\xfe"), "not valid JSON"),
    (lambda d: (d / "adapter_config.json").write_text("[1]"), "not an adapter config"),
    (lambda d: _edit_config(d, lambda m: m.pop("keying")), "keying"),
    (lambda d: _edit_config(d, lambda m: m["adapter"].update(rank=3)), "malformed adapter entry"),
    (lambda d: _edit_config(d, lambda m: m["adapter"].update(r=4)), "r=4"),
    (lambda d: _edit_config(d, lambda m: m["options"].update(act_mode="tokn")), "quantizer options"),
    (lambda d: _edit_config(d, lambda m: m["options"].update(group_size=24)), "does not divide"),
    (lambda d: _edit_config(d, lambda m: m["sha256"].update({"adapters.safetensors": 7})), "malformed sha256"),
    (lambda d: (d / "adapters.safetensors").write_bytes(b""), "sha256 mismatch"),
])
def test_malformed_directories_are_one_line_errors(saved_dir, edit, match):
    directory, _ = saved_dir
    edit(directory)
    _load_error(directory, match)


def test_a_corrupt_file_without_checksum_is_a_one_line_error(saved_dir):
    directory, _ = saved_dir
    _edit_config(directory, lambda m: m.pop("sha256"))
    f = directory / "adapters.safetensors"
    f.write_bytes(f.read_bytes()[:-50])
    _load_error(directory, "corrupt or truncated")
