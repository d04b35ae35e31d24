"""Rotated models compute what the originals did.

Tolerance: logits within 1e-4 of the largest logit (float32 models, rotations fused in float64 and
rounded once to float32; measured ~2e-6 on these tiny models of weight std 0.2)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from bitswitch.errors import BitswitchError
from bitswitch.models import tiny_model
from bitswitch.prepare.linear_ops import weight
from bitswitch.prepare.rotate import rotate_model
from bitswitch.switching import make_switchable

RTOL = 1e-4


def _model(spec, tied=None):
    model, _ = tiny_model(spec)
    if tied is not None and tied != model.config.tie_word_embeddings:
        cfg = model.config
        cfg.tie_word_embeddings = tied
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():   # norms away from their init (1, 0), so folding them is tested
        for name, p in model.named_parameters():
            if p.ndim == 1 and ("norm" in name or ".ln_" in name):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    return model.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _close(a, b):
    return (a - b).abs().max().item() <= RTOL * a.abs().max().item()


IDS = torch.randint(0, 257, (2, 24), generator=torch.Generator().manual_seed(0))
CASES = [("tiny-llama", False), ("tiny-llama", True), ("tiny-gpt2", True)]


@pytest.mark.parametrize("kind", ["hadamard", "orthogonal"])
@pytest.mark.parametrize("spec, tied", CASES)
def test_rotated_logits_equal_the_original(spec, tied, kind):
    model = _model(spec, tied)
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tied
    before = _logits(model, IDS)
    old = weight(model.get_submodule("model.layers.0.mlp.up_proj" if spec == "tiny-llama"
                                     else "transformer.h.0.mlp.c_fc")).clone()
    record = rotate_model(model, seed=1, kind=kind)
    after = _logits(model, IDS)
    assert _close(before, after)
    assert record["untied_head"] == tied and not model.config.tie_word_embeddings
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    assert all(p.dtype == torch.float32 for p in model.parameters())
    new = weight(model.get_submodule("model.layers.0.mlp.up_proj" if spec == "tiny-llama"
                                     else "transformer.h.0.mlp.c_fc"))
    assert (new - old).abs().max() > 0.1   # the weights did turn


def test_without_per_head_rotation_and_seeds_differ():
    a, b, c = _model("tiny-llama"), _model("tiny-llama"), _model("tiny-llama")
    before = _logits(a, IDS)
    rotate_model(a, seed=0, heads=False)
    rotate_model(b, seed=0)
    rotate_model(c, seed=1)
    assert _close(before, _logits(a, IDS)) and _close(before, _logits(c, IDS))
    v = "model.layers.0.self_attn.v_proj.weight"
    assert not torch.equal(a.get_parameter(v), b.get_parameter(v))   # the per-head Hadamard turned the values
    assert not torch.equal(b.get_parameter(v), c.get_parameter(v))


def test_gpt2_norms_are_folded_and_writers_centered():
    model = _model("tiny-gpt2")
    rotate_model(model)
    tr = model.transformer
    assert torch.allclose(tr.h[0].ln_1.weight, torch.ones(64)) and torch.allclose(tr.h[0].ln_1.bias, torch.zeros(64))
    assert torch.allclose(tr.ln_f.bias, torch.ones(64))   # the final shift lives in the head through 1
    for w in (tr.wte.weight, tr.wpe.weight, tr.h[1].mlp.c_proj.weight):    # rows (..., d) written to the stream
        assert w.mean(dim=1).abs().max() < 1e-5


def test_refusals():
    model = _model("tiny-llama")
    with pytest.raises(BitswitchError, match="unknown rotation"):
        rotate_model(model, kind="nope")
    model.config.model_type = "gemma"
    with pytest.raises(BitswitchError, match="'gemma'"):
        rotate_model(model)
    model = make_switchable(_model("tiny-gpt2"))
    with pytest.raises(BitswitchError, match="before make_switchable"):
        rotate_model(model)


def test_sizes_without_hadamard_need_the_orthogonal_rotation():
    model, _ = tiny_model("tiny-llama", hidden=120)   # hidden 120 = 60 * 2 has one, its heads of 30 none
    before = _logits(model.eval(), IDS)
    with pytest.raises(BitswitchError, match="orthogonal"):
        rotate_model(model)
    rotate_model(model, kind="orthogonal")
    assert _close(before, _logits(model, IDS))
