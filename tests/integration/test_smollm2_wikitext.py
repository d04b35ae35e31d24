"""The real model on real text: SmolLM2-135M (GGUF, 4-bit-grid weights) on WikiText-2 test."""

import pytest
import torch

import bitswitch as bs
from bitswitch.data.text import load_text, tokenize_text
from bitswitch.evaluate.perplexity import perplexity
from tests.conftest import shared_data

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    pytest.importorskip("gguf")
    try:
        model, tok = bs.load_model("smollm2-135m", device="cpu")
    except bs.BitswitchError as exc:
        pytest.skip(str(exc))
    return bs.make_switchable(model), tok


def test_fp_and_w8a8_perplexity_on_wikitext(smollm2):
    model, tok = smollm2
    ids = tokenize_text(tok, load_text(str(shared_data("wikitext-2-raw", "wiki.test.raw"))), 8192)
    assert ids.shape == (1, 8192)
    bs.set_profile(model, "fp")
    fp = perplexity(model, ids, window=1024)
    bs.set_profile(model, "w8a8")
    q8 = perplexity(model, ids, window=1024)
    assert 20 < fp["ppl"] < 40
    assert abs(q8["ppl"] - fp["ppl"]) / fp["ppl"] < 0.05
    bs.set_profile(model, "w4a8")
    q4 = perplexity(model, ids[:, :2048], window=1024)
    assert torch.isfinite(torch.tensor(q4["ppl"]))
