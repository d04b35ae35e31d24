"""``bitswitch verify-gguf``: one-line errors for bad input, and (where node-llama-cpp is installed) a whole
run on a tiny seeded model: both engines on the same questions and windows, sizes, goals, files."""

import json
import re

import pytest

from bitswitch.adapters import save_adapters
from bitswitch.cli import main
from bitswitch.llamacpp import install
from tests.test_llamacpp import needs_llama_cpp

pytest.importorskip("gguf")
PROFILE = "w4a8;L1.mlp_*=w8a8"
CONTEXTS = [("Alps", "The Alps are mountains in Europe. Mont Blanc is the highest peak.",
             [("What is the highest peak?", "Mont Blanc"), ("Where are the Alps?", "Europe")]),
            ("Nile", "The Nile flows north into the Mediterranean Sea.", [("Where does the Nile flow?", "north")]),
            ("Moon", "The Moon orbits the Earth every 27 days.", [("What does the Moon orbit?", "the Earth")])]


def squad_file(path):
    data = [{"title": t, "paragraphs": [{"context": c, "qas": [
        {"id": f"{t}-{i}", "question": q, "answers": [{"text": a, "answer_start": c.find(a)}]}
        for i, (q, a) in enumerate(qas)]}]} for t, c, qas in CONTEXTS]
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return str(path)


def tiny_llama_dir(path):
    """A seeded tiny Llama saved as a local model directory, with a byte-level BPE tokenizer that has one
    merge (llama.cpp refuses a BPE vocabulary without merges, and gguf-py cannot write an empty list)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["\u0120t"] = len(vocab)                                   # " t"
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("\u0120", "t")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2, max_position_embeddings=256,
                      bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A tiny Llama directory, its adapters (keyed by PROFILE, B non-zero) and its export at PROFILE through
    the CLI: (model directory, adapters, export)."""
    import torch

    import bitswitch as bs
    from bitswitch.adapters import AdapterConfig
    from bitswitch.profiles import QuantOptions
    from bitswitch.switching import unit_modules

    root = tmp_path_factory.mktemp("verify")
    spec = tiny_llama_dir(root / "model")
    model, _ = bs.load_model(spec, device="cpu")
    bs.make_switchable(model, QuantOptions(weight_grid="gguf"))
    bs.add_adapters(model, [PROFILE], AdapterConfig(r=4, alpha=8))
    g = torch.Generator().manual_seed(3)
    for _, _, mod in unit_modules(model):
        for ad in mod.adapters.values():
            ad.lora_B.data.copy_(0.1 * torch.randn(ad.lora_B.shape, generator=g))
    save_adapters(model, root / "adapters")
    out = root / "export"
    assert main(["export", "--format", "gguf", "--model", spec, "--adapters", str(root / "adapters"),
                 "--profile", PROFILE, "--device", "cpu", "--out", str(out)]) == 0
    return spec, str(root / "adapters"), str(out)


def verify(spec, export, adapters, out, *extra):
    return main(["verify-gguf", "--model", spec, "--adapters", adapters, "--profile", PROFILE,
                 "--export", export, "--device", "cpu", "--out", str(out), "--no-progress", *extra])


def test_bad_input_is_one_line(export, tmp_path, capsys, monkeypatch):
    spec, adapters, out = export
    cases = [(["--export", str(tmp_path / "absent")], "is not a directory"),
             (["--squad", str(tmp_path / "absent.json")], "--squad .* is not a file"),
             (["--windows", "0"], "--windows must be at least 1"),
             (["--weight-grid", "nested"], "drop --weight-grid nested"),
             (["--noise-floor=-1e-6"], "--noise-floor must be >= 0"),
             (["--kv-cache", "q8_0"], "invalid choice: 'q8_0'")]
    for extra, message in cases:
        args = ["--export", out, *extra] if extra[0] != "--export" else extra
        assert main(["verify-gguf", "--model", spec, "--profile", PROFILE, "--device", "cpu",
                     "--out", str(tmp_path / "v"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err
        assert re.search(message, err), (message, err)
    monkeypatch.setattr(install.shutil, "which", lambda name: None)   # no node
    assert verify(spec, out, adapters, tmp_path / "v", "--squad", squad_file(tmp_path / "s.json")) == 2
    err = capsys.readouterr().err.strip()
    assert "llama.cpp is unavailable (node is not on PATH)" in err and "\n" not in err


def test_profile_or_option_mismatch_is_one_line(export, tmp_path, capsys):
    needs_llama_cpp()
    spec, adapters, out = export
    squad = squad_file(tmp_path / "s.json")
    assert main(["verify-gguf", "--model", spec, "--adapters", adapters, "--profile", "w4a8", "--export",
                 out, "--squad", squad, "--device", "cpu", "--out", str(tmp_path / "v")]) == 2
    assert "was made at profile 'w4a8;L1.mlp_*=w8a8', not 'w4a8'" in capsys.readouterr().err
    assert main(["verify-gguf", "--model", spec, "--profile", PROFILE, "--export", out, "--squad", squad,
                 "--device", "cpu", "--out", str(tmp_path / "v")]) == 2
    assert "has adapter.gguf but bitswitch runs" in capsys.readouterr().err


def test_whole_run_on_tiny_llama(export, tmp_path, capsys):
    needs_llama_cpp()
    spec, adapters, out = export
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"line {i} of some text about mountains and rivers." for i in range(60)))
    res = tmp_path / "v"
    assert verify(spec, out, adapters, res, "--squad", squad_file(tmp_path / "s.json"), "--wikitext", str(text),
                  "--windows", "2", "--window", "64", "--max-new-tokens", "8", "--speed-tokens", "8",
                  "--speed-repeats", "1", "--noise-floor", "1e-6", "--kv-cache", "f32", "--flash-attention", "off") == 0
    rec = json.loads((res / "verify.json").read_text())
    assert rec["llama_context"] == {"kv_cache": "f32", "flash_attention": "off"}
    floor = rec["squad"]["noise_floor"]
    assert floor["rel"] == 1e-6 and 0 <= floor["self_agreement"] <= 1 and 0 <= floor["llama_vs_perturbed"] <= 1
    assert rec["profile"] == PROFILE and rec["adapter"] is True
    sq = rec["squad"]
    assert sq["n"] == 4 and sq["selection"]["order"] == "stratified" and 0 <= sq["agreement"] <= 1
    assert sq["d_f1"]["n"] == 4 and sum(sq["llama_stops"].values()) == 4
    answers = [json.loads(line) for line in (res / "answers.jsonl").read_text().splitlines()]
    assert [a["same"] for a in answers].count(False) == len(sq["differing"])
    assert sq["agreement"] == sum(a["same"] for a in answers) / 4
    wt = rec["wikitext"]
    assert wt["windows"] == 2 and wt["tokens"] == 2 * 63
    assert abs(wt["rel_diff"]) < 0.05, wt                        # same weights and activation grid
    sizes = rec["sizes"]["model.gguf"]
    assert sizes["by_type"]["Q8_0"]["weights"] == 2 * 64 * 128 + 128 * 64   # L1's mlp_in (gate, up), mlp_out
    assert sizes["overhead_bytes"] == sizes["file_bytes"] - sizes["theoretical_bytes"] > 0
    assert rec["sizes"]["adapter.gguf"]["by_type"].keys() == {"F32"}
    assert rec["speed"]["export"]["new_tokens"] == 8 and rec["speed"]["export_no_adapter"]["decode_tok_s"] > 0
    assert "reference" not in rec["speed"]                        # no reference GGUF for a local model
    assert [g["met"] in ("yes", "NO") for g in rec["goals"]] == [True] * 3
    assert "| profile |" in (res / "verify.md").read_text()
    assert "identical answers >= 95%" in capsys.readouterr().out
