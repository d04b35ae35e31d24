"""Export to packed low-bit weights: parity with fake quantization, bytes, atomicity, validation."""

import json

import pytest
import torch
from safetensors.torch import load_file

import bitswitch as bs
from bitswitch.adapters import adapter_parameters
from bitswitch.export import exported_profile, export_model, load_exported
from bitswitch.io import sha256_file
from bitswitch.quant.exported import ExportedLinear, int8_kernel_works

SPECS = ["tiny-gpt2", "tiny-llama"]
CASES = [  # (profile, options)
    ("w4a8", bs.QuantOptions()),
    ("w8a8;L0.*=w4g16a8", bs.QuantOptions()),
    ("w6;L1.*=fp", bs.QuantOptions()),
    ("w4g16a8;L1.mlp_out=w3a8", bs.QuantOptions(weight_symmetric=False)),
    ("w16a16;L0.attn_in=w2g32", bs.QuantOptions(weight_symmetric=False)),
    ("w5a8;L1.*=w7", bs.QuantOptions(method="log")),
    ("w8a8;head=w4g16", bs.QuantOptions()),          # GPT-2's head is tied to the embedding
    ("wfpa8;head=wfpa8", bs.QuantOptions()),         # activations only, a float (tied) head weight
]


@pytest.fixture
def ids():
    return torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(0))


def _switchable(spec, options=bs.QuantOptions(), fp16_params=False):
    model, tok = bs.load_model(spec, device="cpu")
    if fp16_params:  # values fp16 can hold exactly, so a default (fp16) export loses nothing
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    bs.make_switchable(model, options)
    return model, tok


def _logits(model, ids, profile=None, adapters=True):
    with torch.no_grad():
        if profile is not None:
            bs.set_profile(model, profile, adapters)
        return model(ids).logits


def _assert_close(out, ref, rel=1e-5):
    assert (out - ref).abs().max() <= rel * ref.abs().max(), (out - ref).abs().max()


def _random_adapters(model, profiles, seed=1):
    bs.add_adapters(model, profiles, bs.AdapterConfig(r=4))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("profile,options", CASES)
def test_exported_logits_equal_fake_quantized(spec, profile, options, ids, tmp_path):
    model, tok = _switchable(spec, options)
    rep = export_model(model, tok, profile, tmp_path / "exp", unquantized_dtype="fp32")
    ref = _logits(model, ids, profile)
    loaded, _ = load_exported(tmp_path / "exp", int8_kernel=False)
    _assert_close(_logits(loaded, ids), ref)
    assert any(isinstance(m, ExportedLinear) for m in loaded.modules())
    assert rep["matches_accounting"]
    assert rep["weight_bytes"] == bs.profile_report(model, profile, unquantized_bytes=4)["weight_bytes"]


@pytest.mark.parametrize("spec", SPECS)
def test_fp16_export_bytes_on_disk_equal_the_accounting(spec, ids, tmp_path):
    profile = "w4g16a8;L0.*=w8a8;L1.mlp_out=fp"
    model, tok = _switchable(spec, bs.QuantOptions(weight_symmetric=False), fp16_params=True)
    rep = export_model(model, tok, profile, tmp_path / "exp")
    tensors = load_file(tmp_path / "exp" / "model.safetensors")
    qmap = json.loads((tmp_path / "exp" / "quant_map.json").read_text())
    kinds = {n: e["kind"] for n, e in qmap["tensors"].items()}
    on_disk = {k: sum(t.numel() * t.element_size() for n, t in tensors.items() if kinds[n] == k)
               for k in ("codes", "scales", "zeros", "unquantized")}
    assert on_disk == {k: rep["bytes"][k] for k in on_disk}
    assert sum(on_disk.values()) == bs.profile_report(model, profile)["weight_bytes"] == rep["weight_bytes"]
    assert rep["quantized_vs_theory"] == pytest.approx(1.0, abs=1e-3)
    assert rep["vs_fp32"] < rep["vs_fp16"] < 1
    loaded, _ = load_exported(tmp_path / "exp")
    _assert_close(_logits(loaded, ids), _logits(model, ids, profile))


@pytest.mark.parametrize("spec", SPECS)
def test_merge_after_keeps_lora_apart_and_equals_the_adapted_model(spec, ids, tmp_path):
    profile = "w4g16a8;L1.*=fp"                          # L1 is fp but still has an adapter
    model, tok = _switchable(spec)
    _random_adapters(model, [profile])
    rep = export_model(model, tok, profile, tmp_path / "exp", merge="after", unquantized_dtype="fp32")
    ref = _logits(model, ids, profile)
    assert not torch.allclose(ref, _logits(model, ids, profile, adapters=False))   # the adapter matters
    loaded, _ = load_exported(tmp_path / "exp")
    _assert_close(_logits(loaded, ids), ref)
    assert rep["bytes"]["lora"] == sum(p.numel() * 4 for p in adapter_parameters(model))
    assert rep["matches_accounting"] and rep["total_bytes"] == rep["weight_bytes"] + rep["bytes"]["lora"]
    half = export_model(model, tok, profile, tmp_path / "half", lora_dtype="fp16", unquantized_dtype="fp32")
    assert half["bytes"]["lora"] * 2 == rep["bytes"]["lora"]
    with torch.no_grad():  # fp16 factors are loaded back to float32 exactly
        for p in adapter_parameters(model):
            p.copy_(p.half().float())
    loaded, _ = load_exported(tmp_path / "half")
    _assert_close(_logits(loaded, ids), _logits(model, ids, profile))


@pytest.mark.parametrize("spec", SPECS)
def test_merge_before_equals_fake_quantization_of_merged_weights(spec, ids, tmp_path):
    profile = "w4g16a8;L1.*=fp"
    model, tok = _switchable(spec)
    _random_adapters(model, [profile])
    rep = export_model(model, tok, profile, tmp_path / "exp", merge="before", unquantized_dtype="fp32")
    bs.set_profile(model, profile)
    deltas = {name: mod.adapters[mod.active_adapter].delta_weight().detach()
              for _, name, mod in bs.switching.unit_modules(model) if mod.active_adapter}
    ref_model, _ = _switchable(spec)
    with torch.no_grad():
        for _, name, mod in bs.switching.unit_modules(ref_model):
            if name in deltas:
                mod.weight_out_in().add_(deltas[name])   # a view: edits the base weight (Conv1D too)
    loaded, _ = load_exported(tmp_path / "exp")
    _assert_close(_logits(loaded, ids), _logits(ref_model, ids, profile))
    assert rep["bytes"]["lora"] == 0 and rep["matches_accounting"]


def test_static_activation_ranges_are_exported(ids, tmp_path):
    model, tok = _switchable("tiny-llama", bs.QuantOptions(act_mode="tensor"))
    with pytest.raises(bs.BitswitchError, match="calibrate"):
        export_model(model, tok, "w4a8", tmp_path / "exp")
    assert not (tmp_path / "exp").exists()
    bs.calibrate(model, [ids], "w4a8")
    rep = export_model(model, tok, "w4a8", tmp_path / "exp", unquantized_dtype="fp32")
    assert rep["bytes"]["act_range"] == 8 * 7 * 2          # (min, max) fp32 per module, 7 modules x 2 layers
    loaded, _ = load_exported(tmp_path / "exp")
    _assert_close(_logits(loaded, ids), _logits(model, ids, "w4a8"))


@pytest.mark.parametrize("spec", SPECS)
def test_int8_kernel_matches_dequantized_float(spec, ids, tmp_path):
    if not int8_kernel_works("cpu"):
        pytest.skip("torch's int8 weight-only kernel is not usable here")
    model, tok = _switchable(spec)
    export_model(model, tok, "w8", tmp_path / "exp", unquantized_dtype="fp32")
    fast, _ = load_exported(tmp_path / "exp", int8_kernel=True)
    slow, _ = load_exported(tmp_path / "exp", int8_kernel=False)
    assert all(m.int8 for m in fast.modules() if isinstance(m, ExportedLinear))
    assert not any(m.int8 for m in slow.modules() if isinstance(m, ExportedLinear))
    ref = _logits(model, ids, "w8")
    _assert_close(_logits(slow, ids), ref)
    _assert_close(_logits(fast, ids), ref, rel=1e-4)
    # by default the kernel runs at bf16 only (where this torch's CPU kernel is fast); there it is
    # at least as close to the fp32 logits as bf16 dequantized weights are (it scales in fp32)
    assert not any(m.int8 for m in load_exported(tmp_path / "exp")[0].modules() if isinstance(m, ExportedLinear))
    half, _ = load_exported(tmp_path / "exp", dtype="bf16")
    half_slow, _ = load_exported(tmp_path / "exp", dtype="bf16", int8_kernel=False)
    assert all(m.int8 for m in half.modules() if isinstance(m, ExportedLinear))
    err, err_slow = ((_logits(m, ids).float() - ref).abs().max() for m in (half, half_slow))
    assert err <= 1.5 * err_slow and err <= 0.05 * ref.abs().max()


def test_cached_weights_and_load_model_hook(ids, tmp_path):
    model, tok = _switchable("tiny-gpt2")
    rep = export_model(model, tok, "w4a8", tmp_path / "exp", meta={"note": "test"})
    assert exported_profile(tmp_path / "exp") == "w4a8"
    plain, tok2 = bs.load_model(str(tmp_path / "exp"), device="cpu")
    cached, _ = load_exported(tmp_path / "exp", cache_weights=True)
    info = plain.bitswitch_export
    assert info["profile"] == "w4a8" and info["weight_bytes"] == rep["weight_bytes"]
    assert info["avg_w_bits"] == bs.profile_report(model, "w4a8")["avg_w_bits"]
    assert tok2("hello").input_ids == tok("hello").input_ids
    assert torch.equal(_logits(plain, ids), _logits(cached, ids))
    assert torch.equal(_logits(cached, ids), _logits(cached, ids))     # second forward from the cache
    assert json.loads((tmp_path / "exp" / "quant_map.json").read_text())["meta"]["note"] == "test"


# -- the directory: atomic, never clobbering ------------------------------------------------------

def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    model, tok = _switchable("tiny-gpt2")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tok, "save_pretrained", boom)   # after the tensors are written
    with pytest.raises(RuntimeError, match="disk full"):
        export_model(model, tok, "w4a8", tmp_path / "exp")
    assert list(tmp_path.iterdir()) == []


def test_previous_export_is_replaced_or_kept_on_failure(tmp_path, monkeypatch):
    model, tok = _switchable("tiny-gpt2")
    export_model(model, tok, "w4a8", tmp_path / "exp")
    monkeypatch.setattr(bs.export.writer, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError):
        export_model(model, tok, "w8a8", tmp_path / "exp")
    assert exported_profile(tmp_path / "exp") == "w4a8" and [p.name for p in tmp_path.iterdir()] == ["exp"]
    monkeypatch.undo()
    export_model(model, tok, "w8a8", tmp_path / "exp")
    assert exported_profile(tmp_path / "exp") == "w8a8" and [p.name for p in tmp_path.iterdir()] == ["exp"]


def test_refuses_a_non_empty_directory_that_is_not_an_export(tmp_path):
    model, tok = _switchable("tiny-gpt2")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "notes.txt").write_text("mine")
    with pytest.raises(bs.BitswitchError, match="not empty and not a bitswitch export"):
        export_model(model, tok, "w4a8", tmp_path / "exp")
    assert (tmp_path / "exp" / "notes.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    export_model(model, tok, "w4a8", tmp_path / "empty")
    assert exported_profile(tmp_path / "empty") == "w4a8"
    with pytest.raises(bs.BitswitchError, match="merge"):
        export_model(model, tok, "w4a8", tmp_path / "x", merge="sideways")


# -- validation on load -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, tok = _switchable("tiny-llama", bs.QuantOptions(weight_symmetric=False))
    path = tmp_path_factory.mktemp("export") / "exp"
    export_model(model, tok, "w4g16a8", path)
    return path


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _edit_map(path, fn):
    qmap = json.loads((path / "quant_map.json").read_text())
    fn(qmap)
    (path / "quant_map.json").write_text(json.dumps(qmap))


def _one_line_error(path, match):
    with pytest.raises(bs.BitswitchError, match=match) as err:
        load_exported(path)
    assert "\n" not in str(err.value) and "re-export" in str(err.value)
    return str(err.value)


def test_truncated_file(exported, tmp_path):
    path = _copy(exported, tmp_path / "e")
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    assert "model.safetensors" in _one_line_error(path, "truncated")
    _edit_map(path, lambda q: q.update(weights_file_bytes=f.stat().st_size))   # size check bypassed
    assert "model.safetensors" in _one_line_error(path, r"corrupt \(sha256 mismatch\)")
    _edit_map(path, lambda q: q.pop("sha256"))    # an export written before checksums existed
    assert "model.safetensors" in _one_line_error(path, "corrupt or truncated")


def test_corrupt_header(exported, tmp_path):
    path = _copy(exported, tmp_path / "e")
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[:8] = b"\xff" * 8
    f.write_bytes(bytes(data))
    _one_line_error(path, r"model.safetensors is corrupt \(sha256 mismatch\)")
    _edit_map(path, lambda q: q.pop("sha256"))
    _one_line_error(path, "corrupt or truncated")


def test_checksums_of_every_file_and_exports_without_them(exported, tmp_path):
    qmap = json.loads((exported / "quant_map.json").read_text())
    assert set(qmap["sha256"]) == {p.name for p in exported.iterdir()} - {"quant_map.json"}
    assert qmap["sha256"]["model.safetensors"] == sha256_file(exported / "model.safetensors")
    path = _copy(exported, tmp_path / "flip")
    f = path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01                       # one bit of one weight: the header still parses
    f.write_bytes(bytes(data))
    _one_line_error(path, r"model.safetensors is corrupt \(sha256 mismatch\): re-export")
    path = _copy(exported, tmp_path / "config")
    (path / "config.json").write_text((path / "config.json").read_text().replace("{", "{ ", 1))
    _one_line_error(path, r"config.json is corrupt \(sha256 mismatch\)")
    path = _copy(exported, tmp_path / "malformed")
    _edit_map(path, lambda q: q["sha256"].update({"model.safetensors": "abc"}))
    _one_line_error(path, "malformed sha256")
    path = _copy(exported, tmp_path / "old")
    _edit_map(path, lambda q: q.pop("sha256"))
    model, _ = load_exported(path)
    assert model.bitswitch_export["profile"] == "w4g16a8"


def test_quant_map_that_does_not_match_the_tensors(exported, tmp_path):
    name = "model.layers.0.mlp.up_proj.qweight"
    path = _copy(exported, tmp_path / "missing")
    _edit_map(path, lambda q: q["tensors"].pop(name))
    _one_line_error(path, f"{name}.*not in quant_map.json")
    path = _copy(exported, tmp_path / "shape")
    _edit_map(path, lambda q: q["tensors"][name].update(shape=[3]))
    _one_line_error(path, f"{name}.*quant_map.json says")
    path = _copy(exported, tmp_path / "bits")
    _edit_map(path, lambda q: q["modules"]["model.layers.0.mlp.up_proj"]["weight"].update(bits=8))
    _one_line_error(path, "quant_map.json says uint8")
    path = _copy(exported, tmp_path / "module")
    _edit_map(path, lambda q: q["modules"].update({"model.layers.9.mlp.up_proj": q["modules"].pop(
        "model.layers.0.mlp.up_proj")}))
    _one_line_error(path, "lacks its tensor")
    path = _copy(exported, tmp_path / "malformed")
    _edit_map(path, lambda q: q["modules"]["model.layers.0.mlp.up_proj"]["weight"].update(bits=9, method="cubic"))
    _one_line_error(path, "malformed")


def test_config_that_does_not_match_the_tensors(exported, tmp_path):
    path = _copy(exported, tmp_path / "e")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "vocab_size": cfg["vocab_size"] + 3}))
    _edit_map(path, lambda q: q["sha256"].pop("config.json"))   # past the checksum, to the shape check
    _one_line_error(path, "do not fit the model of its config.json")


def test_unknown_version_and_not_an_export(exported, tmp_path):
    path = _copy(exported, tmp_path / "e")
    _edit_map(path, lambda q: q.update(format_version=99))
    assert "99" in _one_line_error(path, "format_version")
    with pytest.raises(bs.BitswitchError, match="not a bitswitch export"):
        exported_profile(tmp_path)
