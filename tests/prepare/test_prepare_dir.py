"""A prepared directory: a standard Hugging Face model that bitswitch's loader, the CLI and the
runtime open as any local model, with the same logits as the source (tolerance as test_rotate)."""

import json

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

import bitswitch as bs
from bitswitch.cli import main
from bitswitch.loading import load, load_switchable
from bitswitch.models import byte_tokenizer
from bitswitch.prepare.steps import Step, prepare_model
from bitswitch.prepare.writer import MARKER
from bitswitch.runtime import Runtime
from tests.prepare.test_rotate import IDS, RTOL, _close, _logits
from tests.test_cli import _one_line_error


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_saved_directory_reloads_with_the_same_logits(tmp_path, spec):
    out = tmp_path / "rot"
    record = prepare_model(spec, [Step("rotate", {"seed": 2})], out, device="cpu")
    source, _ = bs.load_model(spec, device="cpu")
    model, tok = load(str(out), device="cpu")
    assert _close(_logits(source, IDS), _logits(model, IDS))
    assert not model.config.tie_word_embeddings and len(tok) == 257
    saved = json.loads((out / MARKER).read_text())
    assert saved["source"] == spec and saved["steps"] == json.loads(json.dumps(record["steps"]))
    assert saved["steps"][0]["result"]["rotation"] == "hadamard" and saved["steps"][0]["options"]["seed"] == 2
    # an earlier prepared directory is replaced; nothing temporary is left beside it
    prepare_model(spec, [], out, device="cpu")
    assert json.loads((out / MARKER).read_text())["steps"] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rot"]


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt2"])
def test_the_runtime_runs_a_rotated_untied_model(tmp_path, spec):
    out = tmp_path / "rot"
    assert main(["prepare", "--model", spec, "--rotate", "hadamard", "--out", str(out), "--device", "cpu"]) == 0
    model, tok = load_switchable(str(out), device="cpu")
    with torch.no_grad():
        fake = model(IDS).logits
    rt = Runtime.from_model(model, tok, ["fp"], kernel="reference")
    got = rt.logits(IDS)
    assert (got - fake).abs().max().item() <= 1e-4 * fake.abs().max().item() + 1e-4


def test_cli_errors_exit_2_with_one_line(capsys, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "not empty" in _one_line_error(capsys, ["prepare", "--model", "tiny-gpt2", "--out", str(busy)])
    assert (busy / "notes.txt").read_text() == "mine"
    assert "'nope'" in _one_line_error(capsys, ["prepare", "--model", "tiny-gpt2", "--rotate", "nope",
                                                "--out", str(tmp_path / "a")])
    # an architecture the loader takes (q/k/v/o, gate/up/down) but rotations do not (Qwen3's q/k norms)
    qwen = tmp_path / "qwen3"
    cfg = Qwen3Config(vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64)
    Qwen3ForCausalLM(cfg).save_pretrained(qwen)
    byte_tokenizer().save_pretrained(qwen)
    capsys.readouterr()   # the progress bars of saving it
    assert main(["prepare", "--model", str(qwen), "--rotate", "hadamard", "--out", str(tmp_path / "b"), "--device", "cpu"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]   # after transformers' loading bar
    assert last.startswith("bitswitch: error: cannot rotate model type 'qwen3'")
    assert not (tmp_path / "b").exists()


@pytest.mark.integration
def test_smollm2_from_its_gguf_file_is_written(tmp_path):
    """SmolLM2 arrives as a GGUF file, whose quantizer makes transformers' save_pretrained refuse; the
    prepared directory holds its float weights and reloads as a plain model."""
    from bitswitch.errors import BitswitchError
    from tests.conftest import require_smollm2

    require_smollm2()
    pytest.importorskip("gguf")
    try:
        source, _ = bs.load_model("smollm2-135m", device="cpu")
    except BitswitchError as exc:
        pytest.skip(str(exc))
    prepare_model("smollm2-135m", [], tmp_path / "p", device="cpu")
    model, _ = load(str(tmp_path / "p"), device="cpu")
    assert "quantization_config" not in json.loads((tmp_path / "p" / "config.json").read_text())
    assert torch.equal(model.model.layers[3].mlp.down_proj.weight, source.model.layers[3].mlp.down_proj.weight)
