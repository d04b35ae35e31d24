"""The llama.cpp bridge: finding node-llama-cpp, the JSON-lines protocol's errors, and (integration)
SmolLM2's GGUF run by llama.cpp against the Hugging Face model of the same weights."""

from __future__ import annotations

import json
import math
import os

import pytest

from bitswitch.errors import BitswitchError
from bitswitch.llamacpp import LlamaCpp, find_llama_cpp, install, require_llama_cpp
from bitswitch.llamacpp.protocol import NodeProcess
from tests.conftest import require_smollm2, shared_data


def needs_llama_cpp():
    found = find_llama_cpp()
    if found is None:
        pytest.skip(f"llama.cpp is unavailable here: {install._probe()[1]} (make llama-cpp installs it)")
    return found


def fake_package(root, version: str) -> None:
    package = root / "node_modules" / "node-llama-cpp"
    (package / "dist").mkdir(parents=True)
    (package / "dist" / "index.js").write_text("export {};\n")
    (package / "package.json").write_text(json.dumps({"name": "node-llama-cpp", "version": version}))


@pytest.fixture
def nowhere(tmp_path, monkeypatch):
    """No install anywhere but where a test puts one: the repository and current directory are empty."""
    monkeypatch.setattr(install, "REPO", tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(install.ENV, raising=False)
    return tmp_path


def test_missing_node_is_one_line_with_the_install_command(nowhere, monkeypatch):
    monkeypatch.setattr(install.shutil, "which", lambda name: None)
    assert find_llama_cpp() is None
    with pytest.raises(BitswitchError, match=r"node is not on PATH.*make llama-cpp") as exc:
        require_llama_cpp()
    assert "\n" not in str(exc.value)


def test_search_order_and_version_check(nowhere, monkeypatch):
    monkeypatch.setattr(install.shutil, "which", lambda name: "/usr/bin/node")
    assert find_llama_cpp() is None
    env_dir, repo_dir = nowhere / "env", nowhere / "repo" / ".llama-cpp"
    fake_package(env_dir, "3.0.0")
    monkeypatch.setenv(install.ENV, str(env_dir))
    with pytest.raises(BitswitchError, match=r"BITSWITCH_LLAMA_CPP has node-llama-cpp 3.0.0, not 3.21.1"):
        require_llama_cpp()
    fake_package(repo_dir, install.VERSION)            # a wrong env install falls through to the repo's
    assert find_llama_cpp().package_dir == (repo_dir / "node_modules" / "node-llama-cpp").resolve()
    fake_package(nowhere, install.VERSION)             # the current directory comes after the repo
    assert find_llama_cpp().package_dir == (repo_dir / "node_modules" / "node-llama-cpp").resolve()
    good_env = nowhere / "env2"
    fake_package(good_env, install.VERSION)            # and a good env install comes first
    monkeypatch.setenv(install.ENV, str(good_env))
    assert find_llama_cpp().package_dir == (good_env / "node_modules" / "node-llama-cpp").resolve()


def test_named_env_directory_without_the_package_is_named(nowhere, monkeypatch):
    monkeypatch.setattr(install.shutil, "which", lambda name: "/usr/bin/node")
    monkeypatch.setenv(install.ENV, str(nowhere / "empty"))
    with pytest.raises(BitswitchError, match=r"has no node_modules/node-llama-cpp"):
        require_llama_cpp()


def test_missing_gguf_or_lora_file_fails_before_node(tmp_path):
    with pytest.raises(BitswitchError, match=r"GGUF file .* does not exist"):
        LlamaCpp(tmp_path / "absent.gguf")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"")
    with pytest.raises(BitswitchError, match=r"LoRA file .* does not exist"):
        LlamaCpp(gguf, lora=tmp_path / "absent-lora.gguf")
    with pytest.raises(BitswitchError, match=r"threads must be an integer >= 1"):
        LlamaCpp(gguf, threads=0)
    with pytest.raises(BitswitchError, match=r"^llama\.cpp kv_cache must be one of f16, f32, got 'q8_0'$"):
        LlamaCpp(gguf, kv_cache="q8_0")
    with pytest.raises(BitswitchError, match=r"^llama\.cpp flash_attention must be True, False or None"):
        LlamaCpp(gguf, flash_attention="auto")


def test_protocol_error_path_is_one_line(tmp_path):
    """A file that is not a GGUF: node-llama-cpp's error comes back through the JSON-lines protocol as
    one line, and the node process is ended."""
    needs_llama_cpp()
    bad = tmp_path / "not-a-model.gguf"
    bad.write_text("this is not a GGUF file\n" * 10)
    with pytest.raises(BitswitchError, match=r"^llama\.cpp load failed: ") as exc:
        LlamaCpp(bad, threads=1, context=64)
    assert "\n" not in str(exc.value)


def test_unknown_op_and_closed_bridge():
    """The protocol answers an unknown op with an error naming it; a closed process refuses calls."""
    node = NodeProcess(needs_llama_cpp())      # the process without a model: only the protocol is tested
    with pytest.raises(BitswitchError, match=r'^llama\.cpp frobnicate failed: unknown op "frobnicate"$'):
        node.call("frobnicate")
    with pytest.raises(BitswitchError, match=r"^llama\.cpp tokenize failed: load the model first$"):
        node.call("tokenize", text="x", special=True)
    node.close()
    node.close()                                # idempotent
    with pytest.raises(BitswitchError, match=r"bridge is closed"):
        node.call("stats")


# -- integration: the real SmolLM2 GGUF -----------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_gguf():
    require_smollm2()
    from bitswitch.models import smollm2_path

    try:
        return os.path.join(*smollm2_path())
    except BitswitchError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def llm(smollm2_gguf):
    needs_llama_cpp()
    with LlamaCpp(smollm2_gguf, threads=2, context=512, sequences=2) as engine:
        yield engine


@pytest.fixture(scope="module")
def hf_smollm2():
    import bitswitch as bs

    require_smollm2()
    return bs.load_model("smollm2-135m", device="cpu")


@pytest.mark.integration
def test_greedy_generation_is_deterministic(llm):
    ids = llm.tokenize("The capital of France is")
    a = llm.generate(ids, max_new_tokens=16)
    b = llm.generate(ids, max_new_tokens=16)
    assert a["tokens"] == b["tokens"] and a["text"] == b["text"]
    assert a["text"] == llm.detokenize(a["tokens"])
    assert a["prompt_tokens"] == len(ids) and a["new_tokens"] == len(a["tokens"]) >= 1
    assert a["prefill_s"] > 0 and a["decode_s"] >= 0
    assert "Paris" in a["text"]                 # SmolLM2-Instruct knows this one
    drawn = [llm.generate(ids, max_new_tokens=12, greedy=False, seed=s)["tokens"] for s in (1, 1, 2)]
    assert drawn[0] == drawn[1] != drawn[2]     # sampling is seeded


@pytest.mark.integration
def test_min_new_tokens_stop_strings_and_batch(llm):
    ids = llm.tokenize("Question: What is two plus two?\nAnswer:")
    fixed = llm.generate(ids, max_new_tokens=24, min_new_tokens=24, eos=False)
    assert fixed["new_tokens"] == 24 and fixed["decode_s"] > 0
    stopped = llm.generate(ids, max_new_tokens=24, min_new_tokens=24, stop=["\n"])
    assert "\n" not in stopped["text"]
    assert stopped["tokens"] == fixed["tokens"][:len(stopped["tokens"])]
    batch = llm.generate_batch([ids, llm.tokenize("Hello")], max_new_tokens=8, min_new_tokens=8)
    assert batch["new_tokens"] == [8, 8] and batch["prompt_tokens"] == [len(ids), 1]
    with pytest.raises(BitswitchError, match=r"needs 1\.\.2 prompts"):
        llm.generate_batch([ids] * 3, max_new_tokens=4)
    with pytest.raises(BitswitchError, match=r"not a token id in 0\.\.49151"):
        llm.generate([49152], max_new_tokens=4)
    with pytest.raises(BitswitchError, match=r"exceed the llama\.cpp context of 512"):
        llm.generate(ids, max_new_tokens=512)


@pytest.mark.integration
def test_tokenization_equals_the_hf_tokenizer(llm, hf_smollm2):
    _, tok = hf_smollm2
    for text in ["The capital of France is", " Paris", "Hello,\n\nworld!  ", "x = [1, 2, 3]\t# list",
                 "naïve café — 東京", "<|im_start|>user\nHi<|im_end|>"]:
        assert llm.tokenize(text) == tok(text)["input_ids"], text


@pytest.mark.integration
def test_logprobs_and_perplexity_match_the_hf_model(llm, hf_smollm2):
    """Both engines run the same Q4_1 weights (HF dequantizes them to fp32; llama.cpp multiplies
    them with 8-bit-quantized activations), so their perplexities agree closely: measured 27.69 (HF)
    vs 28.00 (llama.cpp) on the first 512 WikiText-2 test tokens; 4% is the stated tolerance."""
    from bitswitch.data.text import load_text, tokenize_text
    from bitswitch.evaluate.perplexity import perplexity

    model, tok = hf_smollm2
    ids = tokenize_text(tok, load_text(str(shared_data("wikitext-2-raw", "wiki.test.raw"))), 160)
    tokens = ids[0].tolist()
    lp = llm.logprobs(tokens[:40])
    assert len(lp) == 39 and all(math.isfinite(x) and x <= 0 for x in lp)
    ours = llm.perplexity(tokens, window=80)
    ref = perplexity(model, ids, window=80)
    assert ours["tokens"] == ref["tokens"] == 158
    assert 5 < ours["ppl"] < 200
    assert abs(ours["ppl"] - ref["ppl"]) / ref["ppl"] < 0.04, (ours, ref)


@pytest.mark.integration
def test_kv_cache_type_and_flash_attention_are_applied(smollm2_gguf):
    """The context reports what it was opened with, and the settings reach llama.cpp: without flash
    attention, an f32 cache gives other log-probabilities than an f16 one (keys and values are not
    rounded to half precision), and the same settings give the same numbers twice."""
    needs_llama_cpp()
    seen = {}
    for kv, fa in (("f16", False), ("f32", False), ("f32", False), ("f16", True)):
        with LlamaCpp(smollm2_gguf, threads=1, context=256, kv_cache=kv, flash_attention=fa) as engine:
            assert engine.info["kv_cache"] == kv.upper() and engine.info["flash_attention"] is fa
            ids = engine.tokenize("The history of the city begins in the early middle ages, when traders from the")
            lp = engine.logprobs(ids)
        if (kv, fa) in seen:
            assert lp == seen[(kv, fa)]
        seen[(kv, fa)] = lp
    assert seen[("f16", False)] != seen[("f32", False)]
    assert seen[("f16", True)] != seen[("f16", False)]


def write_lora_gguf(path, targets: dict, rank: int, alpha: float, seed: int = 0) -> dict:
    """A GGUF LoRA adapter as llama.cpp reads one (``general.type = adapter``, ``<tensor>.lora_a/_b``):
    ``targets`` maps GGUF weight names to their (out, in) shape and B's scale; returns {name: (A, B)}."""
    import numpy as np

    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    rng, weights = np.random.default_rng(seed), {}
    for name, ((out_f, in_f), b_scale) in targets.items():
        a = (rng.standard_normal((rank, in_f)) * 0.1).astype(np.float32)
        b = (rng.standard_normal((out_f, rank)) * b_scale).astype(np.float32)
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
        weights[name] = (a, b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


@pytest.mark.integration
def test_lora_adapter_and_scale(tmp_path, smollm2_gguf, hf_smollm2):
    """A LoRA on layer 0's down projection: zero B or scale 0 leave llama.cpp's log-probs bitwise
    unchanged; a real one moves them as the same delta (scale x alpha / rank x B @ A) added to the
    HF model's weight does (mean NLL within the 4% both engines agree to without it)."""
    import torch

    needs_llama_cpp()
    model, tok = hf_smollm2
    ids = tok("The capital of France is Paris. The capital of Italy is Rome. The capital of Spain is")["input_ids"]
    target = "blk.0.ffn_down.weight"   # not attn_q/k: GGUF permutes their rows for RoPE, HF undoes it
    write_lora_gguf(tmp_path / "zero.gguf", {target: ((576, 1536), 0.0)}, rank=4, alpha=8.0)
    lora = write_lora_gguf(tmp_path / "lora.gguf", {target: ((576, 1536), 2.0)}, rank=4, alpha=8.0)
    lp = {}
    for name, kw in [("base", {}), ("zero", {"lora": tmp_path / "zero.gguf"}),
                     ("scale0", {"lora": tmp_path / "lora.gguf", "lora_scale": 0.0}),
                     ("lora", {"lora": tmp_path / "lora.gguf", "lora_scale": 0.5})]:
        with LlamaCpp(smollm2_gguf, threads=2, context=64, **kw) as engine:
            lp[name] = engine.logprobs(ids)
    assert lp["zero"] == lp["base"] and lp["scale0"] == lp["base"]

    def hf_nll() -> float:
        with torch.inference_mode():
            logits = model(torch.tensor([ids])).logits[0, :-1].float()
        return torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])).item()

    weight = model.model.layers[0].mlp.down_proj.weight
    a, b = (torch.from_numpy(x) for x in lora[target])
    saved = weight.detach().clone()
    try:
        base_nll = hf_nll()
        with torch.no_grad():
            weight += 0.5 * 8.0 / 4 * (b @ a)     # user scale x alpha / rank
        lora_nll = hf_nll()
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    nll = {k: -sum(v) / len(v) for k, v in lp.items()}
    assert abs(nll["base"] - base_nll) / base_nll < 0.04
    assert lora_nll > 1.5 * base_nll     # the adapter matters (measured: NLL 1.42 -> 5.17) ...
    assert abs(nll["lora"] - lora_nll) / lora_nll < 0.04, (nll, base_nll, lora_nll)   # ... alike
