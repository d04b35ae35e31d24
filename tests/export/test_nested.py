"""Nested checkpoints: int8 masters that every width slices, adapters per key, exact reloads, checks, CLI."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

import bitswitch as bs
from bitswitch import loading
from bitswitch.adapters import adapter_parameters, save_adapters
from bitswitch.cli import main
from bitswitch.export import (export_nested, is_nested, is_nested_dir, load_nested_model, read_nested,
                              stable_master)
from bitswitch.io import sha256_file
from bitswitch.quant.config import WeightQuant
from bitswitch.quant.functional import quantize_weight, slice_codes
from bitswitch.switching import unit_modules
from tests.conftest import require_smollm2

SPECS = ["tiny-gpt2", "tiny-llama"]
ADAPTED = ["w8", "w4a8", "w2"]          # adapter keys (keying by profile)
WIDTHS = range(2, 9)


@pytest.fixture
def ids():
    return torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(0))


def _model(spec, group=None, adapters=True, **options):
    """A tiny switchable model on the nested grid, with seeded non-zero adapters for ADAPTED."""
    model, tok = bs.load_model(spec, device="cpu")
    bs.make_switchable(model, bs.QuantOptions(group_size=group, weight_grid="nested", **options))
    if adapters:
        bs.add_adapters(model, ADAPTED, bs.AdapterConfig(r=4))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in adapter_parameters(model):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model, tok


def _masters(model):
    return {name: mod for unit, name, mod in unit_modules(model) if unit != "head"}


def _logits(model, ids, profile):
    with torch.no_grad():
        bs.set_profile(model, profile)
        return model(ids).logits


# -- round trip -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("group", [None, 16])
@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_is_bitwise(spec, group, tmp_path):
    model, tok = _model(spec, group)
    rep = export_nested(model, tok, tmp_path / "n")
    ckpt = read_nested(tmp_path / "n")
    masters = _masters(model)
    assert set(ckpt.masters) == set(masters) and len(masters) == (8 if spec == "tiny-gpt2" else 14)
    for name, mod in masters.items():
        codes, scale, _ = quantize_weight(mod.weight_out_in(), WeightQuant(8, group, True, "uniform"))
        c, s, g = ckpt.masters[name]
        assert c.dtype == torch.int8 and s.dtype == torch.float16 and g == group
        assert torch.equal(c, codes.to(torch.int8)) and torch.equal(s, scale.half())
        if mod.base.bias is not None:
            assert torch.equal(ckpt.biases[name], mod.base.bias.detach().bfloat16())
    n_adapted = 0
    for _, name, mod in unit_modules(model):
        for key, ad in mod.adapters.items():
            a, b, scaling = ckpt.loras[name][key]
            assert a.dtype == b.dtype == torch.bfloat16 and scaling == ad.scaling
            assert torch.equal(a, ad.lora_A.detach().bfloat16()) and torch.equal(b, ad.lora_B.detach().bfloat16())
            n_adapted += 1
    assert n_adapted == sum(len(m.adapters) for _, _, m in unit_modules(model)) > 0
    emb = model.get_input_embeddings().weight
    emb_name = "transformer.wte.weight" if spec == "tiny-gpt2" else "model.embed_tokens.weight"
    assert torch.equal(ckpt.params[emb_name], emb.detach().bfloat16())
    assert ckpt.ties == ({"lm_head.weight": "transformer.wte.weight"} if spec == "tiny-gpt2" else {})
    meta = ckpt.adapter_meta
    assert meta["keying"] == "profile" and set(meta["keys"]) == set(ADAPTED) and meta["adapter"]["r"] == 4
    assert ckpt.options == bs.QuantOptions(group_size=group, weight_grid="nested")
    assert rep["matches_w8"] and rep["restabilized_groups"] == 0 and rep["masters"] == len(masters)
    assert rep["file_bytes"] == (tmp_path / "n" / "model.safetensors").stat().st_size


def test_lora_dtype_fp32_keeps_the_factors_bitwise(tmp_path):
    model, tok = _model("tiny-llama")
    export_nested(model, tok, tmp_path / "n", lora_dtype="fp32")
    ckpt = read_nested(tmp_path / "n")
    for _, name, mod in unit_modules(model):
        for key, ad in mod.adapters.items():
            a, b, _ = ckpt.loras[name][key]
            assert torch.equal(a, ad.lora_A.detach()) and torch.equal(b, ad.lora_B.detach())


def test_adapter_metadata_comes_from_the_adapter_directory(tmp_path):
    model, tok = _model("tiny-gpt2")
    save_adapters(model, tmp_path / "ad", profiles=ADAPTED)
    assert main(["export", "--nested", "--model", "tiny-gpt2", "--adapters", str(tmp_path / "ad"),
                 "--out", str(tmp_path / "n"), "--device", "cpu"]) == 0
    meta = json.loads((tmp_path / "n" / "nested.json").read_text())["adapters"]
    assert set(meta["profiles"]) == set(ADAPTED) and meta["profiles"]["w4a8"]["L0.attn_in"] == "w4a8"
    assert meta["options"]["weight_grid"] == "nested" and meta["keys"]["w2"] == {"r": 4, "scaling": 4.0, "modules": 8}


# -- the proof: the rebuilt weights re-quantize to the stored codes at every width ---------------------------

@pytest.mark.parametrize("group", [None, 16])
@pytest.mark.parametrize("spec", SPECS)
def test_requantized_rebuilt_weights_are_the_stored_master_at_every_width(spec, group, tmp_path):
    model, tok = _model(spec, group, adapters=False)
    export_nested(model, tok, tmp_path / "n")
    ckpt = read_nested(tmp_path / "n")
    loaded, _ = load_nested_model(tmp_path / "n")
    for name, mod in _masters(loaded).items():
        c8, s8, _ = ckpt.masters[name]
        for bits in WIDTHS:
            cfg = WeightQuant(bits, group, grid="nested")
            codes, scale, zero = quantize_weight(mod.weight_out_in(), cfg)
            assert zero is None
            assert torch.equal(codes, slice_codes(c8, bits)), (name, bits)
            assert torch.equal(scale, s8.float() * 2.0 ** (8 - bits)), (name, bits)
            cached, cached_scale, _ = mod._quantize(cfg, "codes")      # what fake quantization caches
            assert torch.equal(cached.int(), slice_codes(c8, bits)) and torch.equal(cached_scale, scale)


def test_stable_master_restabilizes_groups_with_subnormal_scales():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(64, 32, generator=g) * torch.logspace(-7, -1, 64).unsqueeze(1)   # rows down to ~1e-7
    cfg = WeightQuant(8, 8, True, "uniform")
    plain, plain_scale, _ = quantize_weight(w, cfg)
    codes, scales, moved = stable_master(w, 8)
    assert moved > 0                                        # the plain master is not a fixed point here
    normal = (plain_scale >= 2.0 ** -14).repeat_interleave(8, dim=1)
    assert torch.equal(codes.int()[normal], plain[normal])  # groups with normal scales keep the plain master
    rebuilt = codes.float() * scales.float().repeat_interleave(8, dim=1)
    for bits in WIDTHS:
        c, s, _ = quantize_weight(rebuilt, WeightQuant(bits, 8, grid="nested"))
        assert torch.equal(c, slice_codes(codes, bits)) and torch.equal(s, scales.float() * 2.0 ** (8 - bits))
    ordinary = torch.randn(16, 32, generator=g) * 0.05
    c, s, moved = stable_master(ordinary, None)
    assert moved == 0 and torch.equal(c.int(), quantize_weight(ordinary, WeightQuant(8))[0])


# -- the loaded model fake-quantizes exactly as the original under the nested grid ------------------------------

@pytest.mark.parametrize("group", [None, 16])
@pytest.mark.parametrize("spec", SPECS)
def test_loaded_logits_equal_the_original_under_the_nested_grid(spec, group, ids, tmp_path):
    """Bitwise at w8/w4/w2 (and w4a8) with adapters, when embeddings, norms, head and LoRA are kept in fp32;
    at fp the loaded model runs the int8 master, so it differs from the float original."""
    model, tok = _model(spec, group)
    export_nested(model, tok, tmp_path / "n", unquantized_dtype="fp32", lora_dtype="fp32")
    loaded, _ = load_nested_model(tmp_path / "n")
    for profile in ("w8", "w4", "w2", "w4a8"):
        ref, got = _logits(model, ids, profile), _logits(loaded, ids, profile)
        assert loaded.bitswitch.table["L0.attn_in"].weight.grid == "nested"
        assert torch.equal(got, ref), profile
    assert not torch.equal(_logits(loaded, ids, "fp"), _logits(model, ids, "fp"))


def test_bf16_checkpoint_equals_the_original_with_bf16_parameters(ids, tmp_path):
    """The default checkpoint rounds embeddings, norms, biases and LoRA to bf16: bitwise the original
    model whose parameters were rounded the same way first."""
    model, tok = _model("tiny-gpt2")
    masters = {id(m.base.weight) for m in _masters(model).values()}
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in masters:
                p.copy_(p.bfloat16().float())
    export_nested(model, tok, tmp_path / "n")
    loaded, _ = load_nested_model(tmp_path / "n")
    for profile in ("w8", "w4", "w2"):
        assert torch.equal(_logits(loaded, ids, profile), _logits(model, ids, profile)), profile


def test_static_activation_ranges_round_trip(ids, tmp_path):
    model, tok = _model("tiny-llama", act_mode="tensor")
    bs.calibrate(model, [ids], "w4a8")
    export_nested(model, tok, tmp_path / "n", unquantized_dtype="fp32", lora_dtype="fp32")
    assert json.loads((tmp_path / "n" / "nested.json").read_text())["adapters"]["observers"] == ["w4a8"]
    loaded, _ = load_nested_model(tmp_path / "n")
    assert loaded.bitswitch.options.act_mode == "tensor"
    assert torch.equal(_logits(loaded, ids, "w4a8"), _logits(model, ids, "w4a8"))


def test_rewriting_a_loaded_checkpoint_gives_the_same_tensors(tmp_path):
    model, tok = _model("tiny-llama", 16)
    export_nested(model, tok, tmp_path / "a")
    again, tok2 = load_nested_model(tmp_path / "a")
    export_nested(again, tok2, tmp_path / "b")
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the loaders ---------------------------------------------------------------------------------------------

def test_loaders_recognise_a_nested_directory(tmp_path):
    model, tok = _model("tiny-gpt2", 16)
    export_nested(model, tok, tmp_path / "n")
    assert is_nested_dir(tmp_path / "n") and not is_nested_dir(tmp_path) and not loading.is_export_dir(tmp_path / "n")
    plain, _ = loading.load(str(tmp_path / "n"), device="cpu")
    assert is_nested(plain) and not hasattr(plain, "bitswitch") and plain.bitswitch_nested["exact"]
    ckpt = read_nested(tmp_path / "n")
    codes, scales, _ = ckpt.masters["transformer.h.0.attn.c_attn"]
    rebuilt = codes.float() * scales.float().repeat_interleave(16, dim=1)
    assert torch.equal(plain.transformer.h[0].attn.c_attn.weight, rebuilt.t())        # Conv1D stores (in, out)
    assert plain.lm_head.weight is plain.transformer.wte.weight                        # the tie survives
    sw, _ = loading.load_switchable(str(tmp_path / "n"), options=bs.QuantOptions(act_mode="tensor"), device="cpu")
    assert sw.bitswitch.options == bs.QuantOptions(group_size=16, weight_grid="nested", act_mode="tensor")
    assert set(sw.transformer.h[0].attn.c_attn.adapters) == set(ADAPTED)
    with pytest.raises(bs.BitswitchError, match="group_size 16; group_size 32 cannot apply"):
        loading.load_switchable(str(tmp_path / "n"), options=bs.QuantOptions(group_size=32), device="cpu")
    with pytest.raises(bs.BitswitchError, match="drop --adapters"):
        loading.load_switchable(str(tmp_path / "n"), adapters=str(tmp_path), device="cpu")


def test_target_must_be_new_empty_or_a_previous_checkpoint(tmp_path):
    model, tok = _model("tiny-llama", adapters=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(bs.BitswitchError, match="not empty"):
        export_nested(model, tok, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"
    export_nested(model, tok, tmp_path / "n")
    export_nested(model, tok, tmp_path / "n", unquantized_dtype="fp32")          # replaces the previous one
    assert json.loads((tmp_path / "n" / "nested.json").read_text())["unquantized_dtype"] == "fp32"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temporaries left
    with pytest.raises(bs.BitswitchError, match="does not divide the 64 input columns"):
        export_nested(_model("tiny-llama", 24, adapters=False)[0], tok, tmp_path / "g")


# -- corrupt and incomplete checkpoints -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("nested") / "n"
    model, tok = _model("tiny-llama")
    export_nested(model, tok, out)
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _rewrite(d, change):
    """Apply ``change`` to the tensors (and the tensor table), then make size and sha256 agree again, so that
    only the structural check can catch it."""
    info = json.loads((d / "nested.json").read_text())
    tensors = load_file(d / "model.safetensors")
    change(tensors, info["tensors"])
    save_file(tensors, str(d / "model.safetensors"))
    info["weights_file_bytes"] = (d / "model.safetensors").stat().st_size
    info["sha256"]["model.safetensors"] = sha256_file(d / "model.safetensors")
    (d / "nested.json").write_text(json.dumps(info))


CODES = "model.layers.0.self_attn.q_proj.codes"
SCALES = "model.layers.0.self_attn.q_proj.scales"


def _flip_byte(d):
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def _truncate(d):
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])


def _missing_tensor(d):
    _rewrite(d, lambda t, table: t.pop(CODES))


def _missing_everywhere(d):
    _rewrite(d, lambda t, table: (t.pop(SCALES), table.pop(SCALES)))


def _extra_tensor(d):
    _rewrite(d, lambda t, table: t.update(stray=torch.zeros(3)))


def _wrong_dtype(d):
    def change(t, table):
        t[CODES] = t[CODES].to(torch.int16)
        table[CODES]["dtype"] = "int16"
    _rewrite(d, change)


def _wrong_shape(d):
    def change(t, table):
        t[SCALES] = t[SCALES][:, :0]
        table[SCALES]["shape"] = [64, 0]
    _rewrite(d, change)


CORRUPTIONS = {
    "flipped byte": (_flip_byte, re.escape("model.safetensors is corrupt (sha256 mismatch)")),
    "truncated file": (_truncate, re.escape("(truncated or replaced)")),
    "bad json": (lambda d: (d / "nested.json").write_text('{"format": "bitswitch-nested",'), "not valid JSON"),
    "missing weights file": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
    "missing tokenizer file": (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json cannot be read"),
    "missing tensor": (_missing_tensor, f"'{CODES}' is in nested.json but not in model.safetensors"),
    "tensor missing from both": (_missing_everywhere, f"lacks tensor '{SCALES}'"),
    "extra tensor": (_extra_tensor, "'stray' is in model.safetensors but not in nested.json"),
    "wrong dtype": (_wrong_dtype, f"'{CODES}' in .* is int16 \\[64, 64\\] but nested.json calls for int8"),
    "wrong shape": (_wrong_shape, f"'{SCALES}' in .* is float16 \\[64, 0\\] but nested.json calls for "
                                  "float16 \\[64, 1\\]"),
    "wrong version": (lambda d: (d / "nested.json").write_text(
        (d / "nested.json").read_text().replace('"format_version": 1', '"format_version": 7')), "format_version 7"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_checkpoints_are_one_line_errors(case, written, tmp_path):
    damage, message = CORRUPTIONS[case]
    d = _copy(written, tmp_path / "n")
    damage(d)
    with pytest.raises(bs.BitswitchError, match=message) as err:
        load_nested_model(d)
    assert "\n" not in str(err.value)


# -- CLI ----------------------------------------------------------------------------------------------------

def test_cli_export_nested_then_eval_it(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("Every width is the top bits of one master.\n" * 30)
    out = tmp_path / "n"
    assert main(["export", "--nested", "--model", "tiny-gpt2", "--group-size", "16", "--unquantized-dtype", "fp32",
                 "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "| codes | 98,304 |" in printed and "8-bit model (w8g16)" in printed
    assert "weights equal the 8-bit model's bytes: True" in printed
    common = ["--task", "wikitext", "--data", str(text), "--window", "64", "--profiles", "w4", "w2", "--device", "cpu"]
    assert main(["eval", "--model", str(out), *common, "--engine", "fake", "--out", str(tmp_path / "a")]) == 0
    assert main(["eval", "--model", "tiny-gpt2", "--weight-grid", "nested", "--group-size", "16", *common,
                 "--out", str(tmp_path / "b")]) == 0
    assert main(["eval", "--model", str(out), *common, "--out", str(tmp_path / "c")]) == 0   # auto: the runtime
    a, b, c = (json.loads((tmp_path / d / "results.json").read_text())["records"] for d in "abc")
    assert [r["ppl"] for r in a] == [r["ppl"] for r in b]        # the same model, bitwise
    assert a[0]["ppl"] != a[1]["ppl"]
    # the runtime's bf16 matmuls: the same perplexity within 2% on this tiny model
    assert all(abs(x["ppl"] / y["ppl"] - 1) < 0.02 for x, y in zip(a, c))
    assert json.loads((tmp_path / "c" / "results.json").read_text())["engine"] == "runtime"


@pytest.mark.parametrize("argv, needle", [
    (["export", "--model", "tiny-gpt2"], "needs --profile"),
    (["export", "--nested", "--profile", "w4", "--model", "tiny-gpt2"], "drop --profile"),
    (["export", "--nested", "--weight-asym", "--model", "tiny-gpt2"], "nested weight grid"),
    (["export", "--nested", "--group-size", "24", "--model", "tiny-gpt2"], "does not divide"),
    (["export", "--profile", "w4", "--unquantized-dtype", "bf16", "--model", "tiny-gpt2"], "bf16 is for --nested"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, needle, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "n"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "n" / "nested.json").exists()


def test_cli_eval_of_a_nested_checkpoint_refuses_adapters_and_other_group_sizes(written, tmp_path, capsys):
    common = ["eval", "--model", str(written), "--task", "wikitext", "--device", "cpu", "--out", str(tmp_path / "e")]
    assert main([*common, "--adapters", str(tmp_path)]) == 2
    assert main([*common, "--group-size", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "drop --adapters" in err[0] and "group_size 32 cannot apply" in err[1]


# -- the real model ------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_smollm2_nested_checkpoint_is_the_8_bit_size_and_exact(tmp_path):
    require_smollm2()
    torch.set_num_threads(2)
    model, tok = bs.load_model("smollm2-135m", device="cpu")
    bs.make_switchable(model, bs.QuantOptions(group_size=32))
    rep = export_nested(model, tok, tmp_path / "n")
    assert rep["matches_w8"] and rep["restabilized_groups"] == 0 and rep["masters"] == 30 * 7
    assert 1.0 < rep["vs_w8"] < 1.001 and rep["vs_fp16"] < 0.64
    ckpt = read_nested(tmp_path / "n")
    loaded, _ = load_nested_model(tmp_path / "n")
    assert loaded.lm_head.base.weight is loaded.model.embed_tokens.weight        # tied, stored once
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.29.mlp.down_proj"):
        c8, s8, _ = ckpt.masters[name]
        w = loaded.get_submodule(name).weight_out_in()
        for bits in WIDTHS:
            codes, scale, _ = quantize_weight(w, WeightQuant(bits, 32, grid="nested"))
            assert torch.equal(codes, slice_codes(c8, bits)) and torch.equal(scale, s8.float() * 2.0 ** (8 - bits))
