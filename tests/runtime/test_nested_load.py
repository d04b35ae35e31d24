"""Runtime.load of a nested checkpoint packs straight from the masters (a hollow model): the same
runtime, bit for bit, as packing the fully loaded switchable model, and every master is consumed."""

import pytest
import torch

import bitswitch as bs
from bitswitch.adapters import adapter_parameters
from bitswitch.export import export_nested, load_nested_model, read_nested
from bitswitch.errors import BitswitchError
from bitswitch.export.nested_format import StoredTensor, stored_tensors
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


def test_lazy_masters_read_the_stored_tensors_exactly(tmp_path):
    path = _checkpoint("tiny-llama", tmp_path)
    lazy, eager = read_nested(path, lazy_masters=True), read_nested(path)
    assert lazy.masters.keys() == eager.masters.keys()
    for m, (codes, scales, g) in lazy.masters.items():
        assert isinstance(codes, StoredTensor) and isinstance(scales, StoredTensor)
        for got, want in ((codes.load(), eager.masters[m][0]), (scales.load(), eager.masters[m][1])):
            assert got.dtype == want.dtype and torch.equal(got, want)
        assert g == eager.masters[m][2]


@pytest.mark.parametrize("header", [
    {"a": {"dtype": "I8", "shape": [2, 3], "data_offsets": [0, 5]}},       # 5 bytes for 6 int8
    {"a": {"dtype": "I8", "shape": [2, 3], "data_offsets": [0, 600]}},     # past the end of the file
    {"a": {"dtype": "Q4", "shape": [2, 3], "data_offsets": [0, 6]}},       # no such dtype
    {"b": {"dtype": "I8", "shape": [2, 3], "data_offsets": [0, 6]}},       # no tensor "a"
])
def test_a_bad_safetensors_header_is_one_error_line(tmp_path, header):
    import json

    raw = json.dumps(header).encode()
    file = tmp_path / "model.safetensors"
    file.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(6))
    with pytest.raises(BitswitchError, match="corrupt or truncated") as err:
        stored_tensors(file, ["a"])
    assert "\n" not in str(err.value)


def test_stored_tensor_equals_safetensors(tmp_path):
    from safetensors.torch import save_file

    tensors = {"a": torch.arange(-6, 6, dtype=torch.int8).reshape(3, 4), "b": torch.randn(5, dtype=torch.bfloat16),
               "c": torch.randn(2, 3).half(), "e": torch.zeros(0, 4)}
    save_file(tensors, tmp_path / "t.safetensors")
    got = stored_tensors(tmp_path / "t.safetensors", tensors)
    for name, t in tensors.items():
        assert got[name].load().dtype == t.dtype and torch.equal(got[name].load(), t)


def test_loading_a_nested_checkpoint_imports_no_modeling_stack(tmp_path):
    """The runtime packs a nested checkpoint from a skeleton: transformers' model classes (and the
    torch._dynamo they import, about 70-130 MiB resident) stay out of an eager runtime's process."""
    import subprocess
    import sys

    path = _checkpoint("tiny-llama", tmp_path)
    code = ("import sys\nfrom bitswitch.runtime import Runtime\n"
            f"rt = Runtime.load({str(path)!r}, profiles=['w4g32'], compile='off')\n"
            "rt.generate(['ab'], max_new_tokens=2)\n"
            "print(sorted(m for m in ('torch._dynamo', 'transformers.modeling_utils') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_plain_tokenizer_path_is_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    from bitswitch.export.nested_reader import _tokenizer

    path = _checkpoint("tiny-llama", tmp_path)
    ours, auto = _tokenizer(read_nested(path, lazy_masters=True)), AutoTokenizer.from_pretrained(path)
    assert type(ours).__name__ == type(auto).__name__
    for text in ["The capital of France is", "  spaces\tand\nlines <|endoftext|> é ü 日本"]:
        assert ours(text).input_ids == auto(text).input_ids
    assert (ours.eos_token_id, ours.pad_token_id, ours.bos_token_id) == (auto.eos_token_id, auto.pad_token_id,
                                                                        auto.bos_token_id)
