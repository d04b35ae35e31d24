"""The loader above models.py and export/: one entry for every spec, one predicate for exports."""

import pytest
import torch

import bitswitch as bs
from bitswitch import loading, models
from bitswitch.export import export_model
from bitswitch.export.prepare import prepare_for_export


def test_plain_specs_load_as_models_load_them():
    a, tok = loading.load("tiny-llama", device="cpu")
    b, _ = models.load_model("tiny-llama", device="cpu")
    assert not loading.is_exported(a) and not hasattr(a, "bitswitch")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert bs.load_model is loading.load


def test_export_directory_opens_through_the_loader_only(tmp_path):
    model, tok = bs.load_model("tiny-gpt2", device="cpu")
    bs.make_switchable(model)
    export_model(model, tok, "w4a8", tmp_path / "exp")
    assert loading.is_export_dir(tmp_path / "exp") and not loading.is_export_dir(tmp_path)
    exported, _ = loading.load(str(tmp_path / "exp"), device="cpu")
    assert loading.is_exported(exported) and exported.bitswitch_export["profile"] == "w4a8"
    again, _ = loading.load_switchable(str(tmp_path / "exp"), device="cpu")   # returned as loaded
    assert loading.is_exported(again) and not hasattr(again, "bitswitch")
    with pytest.raises(bs.BitswitchError, match="already an export"):
        prepare_for_export(str(tmp_path / "exp"), None, "w4a8", bs.QuantOptions())


def test_load_switchable_wraps_and_keys():
    model, _ = loading.load_switchable("tiny-llama", options=bs.QuantOptions(group_size=16), device="cpu",
                                       keying="shared")
    assert model.bitswitch.keying == "shared" and model.bitswitch.options.group_size == 16
    assert not loading.is_exported(model)
