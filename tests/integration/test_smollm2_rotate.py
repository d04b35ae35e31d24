"""SmolLM2-135M rotated (random Hadamard, fused): the same function in fp on real text, and what
it does to per-channel w4 round-to-nearest.

fp tolerance: logits within 1e-4 of the largest logit (measured ~5e-6: 1.6e-4 absolute on logits
up to ~35). w4: on this checkpoint rotation does *not* lower the PPL (measured on 512 tokens: 38.5
unrotated, 75.4 rotated). Its weights were shipped on a 4-bit grid (Q4_1), and its residual stream
has one massive channel (507, up to ~2e4) that the RMSNorm weights damp; folding those weights into
q/k/v and gate/up (which every residual rotation needs) exposes the readers' quantization error to
the full normalized stream, which rotation cannot shrink. Rotation does help the writers (down_proj
alone at w4). The improvement test is kept as a strict xfail: it fails loudly once a recipe (e.g.
rotation + GPTQ) makes it pass.
"""

import copy

import pytest
import torch

import bitswitch as bs
from bitswitch.data.text import load_text, tokenize_text
from bitswitch.evaluate.perplexity import perplexity
from bitswitch.prepare.rotate import rotate_model
from tests.conftest import require_smollm2, shared_data

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair():
    require_smollm2()
    torch.set_num_threads(2)
    model, tok = bs.load_model("smollm2-135m", device="cpu")
    rotated = copy.deepcopy(model)
    rotate_model(rotated, seed=0)
    ids = tokenize_text(tok, load_text(str(shared_data("wikitext-2-raw", "wiki.test.raw"))), 512)
    return model, rotated, ids


def test_rotated_fp_logits_match_on_real_text(pair):
    model, rotated, ids = pair
    with torch.no_grad():
        a, b = model(ids[:, :128]).logits, rotated(ids[:, :128]).logits
    assert (a - b).abs().max().item() <= 1e-4 * a.abs().max().item()
    assert rotated.lm_head.weight is not rotated.get_input_embeddings().weight


def _w4_ppl(model, ids):
    model = bs.make_switchable(copy.deepcopy(model))
    bs.set_profile(model, "w4")
    return perplexity(model, ids, window=512)["ppl"]


@pytest.mark.xfail(strict=True, reason="rotation alone raises w4 RTN PPL on this Q4_1-gridded checkpoint "
                                       "(folded norms expose its massive channel); see the module docstring")
def test_rotation_lowers_w4_per_channel_ppl(pair):
    model, rotated, ids = pair
    assert _w4_ppl(rotated, ids) < _w4_ppl(model, ids)
