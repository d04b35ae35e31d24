"""``export --format gguf``: gguf-py reads back every tensor as bitswitch's fake-quantized weight, bit
for bit; the adapter round-trips; transformers' GGUF loader rebuilds the same model."""

import json

import numpy as np
import pytest
import torch

import bitswitch as bs
from bitswitch.adapters import AdapterConfig
from bitswitch.cli import main
from bitswitch.errors import BitswitchError
from bitswitch.export.gguf_arch import permute_rows, rotary_heads
from bitswitch.export.gguf_export import ADAPTER_FILE, MANIFEST, MODEL_FILE, export_gguf
from bitswitch.io import sha256_file
from bitswitch.models import byte_tokenizer
from bitswitch.profiles import QuantOptions
from bitswitch.quant.functional import fake_quantize_weight
from bitswitch.switching import unit_modules

gguf = pytest.importorskip("gguf")

# every type in one file: Q4_x for most units, Q5_x for layer 1's attention, Q8_0 for an MLP and the head
MIXED = "w4a8;L1.attn_*=w5;L0.mlp_in=w8;head=w8"
TYPES = {True: {"Q4_0", "Q5_0", "Q8_0"}, False: {"Q4_1", "Q5_1", "Q8_0"}}


def tiny(spec: str, symmetric: bool = True, adapters: str | None = None):
    """A tiny seeded model (all widths multiples of 32) on the gguf grid; a non-zero LoRA when ``adapters``."""
    if spec == "tiny-gpt2-1024":   # transformers' GGUF loader reads GPT-2's context as n_ctx: keep the default 1024
        from transformers import AutoModelForCausalLM, GPT2Config

        tok = byte_tokenizer()
        cfg = GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=64, n_layer=2, n_head=4,
                         initializer_range=0.2, bos_token_id=256, eos_token_id=256)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(cfg).eval()
    else:
        model, tok = bs.load_model(spec, device="cpu")
    model.requires_grad_(False)
    bs.make_switchable(model, QuantOptions(weight_symmetric=symmetric, weight_grid="gguf"))
    if adapters:
        bs.add_adapters(model, [adapters], AdapterConfig(r=4, alpha=8))
        g = torch.Generator().manual_seed(3)
        for _, _, mod in unit_modules(model):
            for ad in mod.adapters.values():
                ad.lora_B.data.copy_(torch.randn(ad.lora_B.shape, generator=g))   # B = 0 would hide a swapped A/B
    return model, tok


def tensors(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_every_tensor_reads_back_as_the_fake_quantized_weight(spec, symmetric, tmp_path):
    model, tok = tiny(spec, symmetric)
    rep = export_gguf(model, tok, MIXED, tmp_path / "out")
    got = tensors(tmp_path / "out" / MODEL_FILE)
    assert set(rep["tensor_types"]) >= TYPES[symmetric] and rep["matches_accounting"]
    bs.set_profile(model, MIXED)
    checked = set()
    for unit, name, mod in unit_modules(model):
        gname = {"head": "output.weight"}.get(unit) or _gguf_name(got, model, name)
        t = got[gname]
        w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        heads = rotary_heads("llama" if "llama" in spec else "gpt2", gname, model.config)
        if heads:   # undo llama.cpp's rotary row order (the inverse permutation, as transformers does)
            w = torch.from_numpy(_unpermute(w.numpy(), heads))
        want = fake_quantize_weight(mod.weight_out_in(), mod.precision.weight)
        assert t.tensor_type.name == rep["units"][unit]
        assert torch.equal(bits(w), bits(want)), gname
        checked.add(gname)
    assert len(checked) == len(list(unit_modules(model)))
    norms = [n for n in got if "norm" in n]
    assert norms and all(got[n].tensor_type == gguf.GGMLQuantizationType.F32 for n in norms)
    emb = got["token_embd.weight"]
    assert emb.tensor_type == gguf.GGMLQuantizationType.F16
    assert torch.equal(torch.from_numpy(np.array(emb.data)), model.get_input_embeddings().weight.half())


def _gguf_name(got, model, hf_module: str) -> str:
    from bitswitch.export.gguf_arch import gguf_arch, name_map, tensor_name

    cfg = model.config
    arch = gguf_arch(cfg)
    name = tensor_name(name_map(arch, cfg.num_hidden_layers if arch == "llama" else cfg.n_layer), hf_module + ".weight")
    assert name in got
    return name


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' ``_reverse_permute_weights``."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


def test_permutation_is_llama_cpps_and_transformers_undoes_it():
    w = np.arange(4 * 8 * 3, dtype=np.float32).reshape(32, 3)     # 4 heads of 8 rows
    p = permute_rows(w, 4)
    # head 0: rows 0..3 (first half) and 4..7 (second half) interleave: 0, 4, 1, 5, 2, 6, 3, 7
    assert p[:8, 0].tolist() == [0, 12, 3, 15, 6, 18, 9, 21]
    assert np.array_equal(_unpermute(p, 4), w)


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_adapter_round_trips(spec, tmp_path):
    model, tok = tiny(spec, adapters=MIXED)
    rep = export_gguf(model, tok, MIXED, tmp_path / "out", lora_dtype="fp32")
    reader = gguf.GGUFReader(str(tmp_path / "out" / ADAPTER_FILE))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 8.0 == rep["adapter"]["alpha"]
    assert fields["general.architecture"] == ("llama" if spec == "tiny-llama" else "gpt2")
    got = tensors(tmp_path / "out" / ADAPTER_FILE)
    model_tensors = tensors(tmp_path / "out" / MODEL_FILE)
    bs.set_profile(model, MIXED)
    n = 0
    for unit, name, mod in unit_modules(model):
        if mod.active_adapter is None:
            continue
        ad = mod.adapters[mod.active_adapter]
        base = "output.weight" if unit == "head" else _gguf_name(model_tensors, model, name)
        assert base in model_tensors                     # llama.cpp refuses a LoRA for a missing tensor
        a, b = np.array(got[base + ".lora_a"].data), np.array(got[base + ".lora_b"].data)
        assert a.shape == tuple(ad.lora_A.shape) and b.shape == tuple(ad.lora_B.shape)   # (r, in), (out, r)
        heads = rotary_heads("llama" if spec == "tiny-llama" else "gpt2", base, model.config)
        assert torch.equal(torch.from_numpy(a), ad.lora_A)
        assert torch.equal(torch.from_numpy(_unpermute(b, heads) if heads else b), ad.lora_B)
        if heads:
            assert not np.array_equal(b, ad.lora_B.detach().numpy())   # the permutation did something
        n += 1
    assert n == len(got) // 2 == rep["adapter"]["tensors"] // 2 and n > 0


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2-1024"])
def test_transformers_gguf_loader_rebuilds_the_quantized_model(spec, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = tiny(spec)
    profile = "w4;L1.*=w5;L0.mlp_in=w8"
    export_gguf(model, tok, profile, tmp_path / "out", unquantized_dtype="fp32")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), gguf_file=MODEL_FILE).eval()
    sd = hf.state_dict()
    bs.set_profile(model, profile)
    with torch.no_grad():
        for _, name, mod in unit_modules(model):
            if mod.precision is None or mod.precision.weight is None:
                continue
            w = sd[name + ".weight"]
            assert torch.equal(bits(w.t() if mod.conv1d else w), bits(mod.quantized_weight(mod.precision.weight)))
        ids = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
        assert torch.equal(hf(ids).logits, model(ids).logits)     # same weights, same ops


def test_a_unit_without_a_gguf_type_is_a_one_line_error(tmp_path):
    model, tok = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model)                                # the independent grid: per-channel scales
    with pytest.raises(BitswitchError, match=r"no GGUF type for L0\.attn_in, .*--weight-grid gguf") as err:
        export_gguf(model, tok, "w4a8;L1.*=fp", tmp_path / "out")
    assert "\n" not in str(err.value) and "(4 units)" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_writes_gguf_and_refuses_what_gguf_cannot_hold(tmp_path, capsys):
    out = tmp_path / "w4"
    assert main(["export", "--format", "gguf", "--model", "tiny-llama", "--profile", "w4;L1.mlp_*=w8",
                 "--device", "cpu", "--out", str(out)]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["units"]["L0.attn_in"] == "Q4_0" and manifest["units"]["L1.mlp_out"] == "Q8_0"
    assert manifest["sha256"][MODEL_FILE] == sha256_file(out / MODEL_FILE)
    assert not (out / ADAPTER_FILE).exists()
    assert "Q4_0" in capsys.readouterr().out
    for extra, message in ((["--weight-grid", "nested"], "not nested"), (["--merge", "before"], "merge before"),
                           (["--group-size", "64"], "blocks of 32")):
        assert main(["export", "--format", "gguf", "--model", "tiny-llama", "--profile", "w4", "--device", "cpu",
                     "--out", str(tmp_path / "x"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["export", "--model", "tiny-llama", "--profile", "w4", "--device", "cpu", "--weight-grid", "gguf",
                 "--out", str(tmp_path / "y")]) == 2            # the bitswitch format cannot hold the gguf grid
    assert "--format gguf" in capsys.readouterr().err
