import math

import pytest
import torch
import torch.nn.functional as F

import bitswitch as bs
from bitswitch.evaluate.perplexity import perplexity, windows


def test_windows_cover_every_token_once():
    spans = list(windows(2500, 1024, 512))
    assert spans[0] == (0, 1024, 1024)
    assert spans[1] == (512, 1536, 512)
    assert sum(n for *_, n in spans) == 2500 and spans[-1][1] == 2500
    assert list(windows(2048, 1024, 1024)) == [(0, 1024, 1024), (1024, 2048, 1024)]
    with pytest.raises(ValueError):
        list(windows(10, 4, 5))


def _manual_nll(model, ids):
    logits = model(ids).logits[:, :-1]
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()


@torch.no_grad()
def test_non_overlapping_windows_equal_a_manual_count():
    model, _ = bs.load_model("tiny-llama", device="cpu")
    ids = torch.randint(0, 257, (1, 100), generator=torch.Generator().manual_seed(0))
    res = perplexity(model, ids, window=40)
    chunks = [ids[:, 0:40], ids[:, 40:80], ids[:, 80:100]]
    nll = sum(_manual_nll(model, c) for c in chunks)
    assert res["tokens"] == 39 + 39 + 19
    assert math.isclose(res["ppl"], math.exp(nll / res["tokens"]), rel_tol=1e-6)


@torch.no_grad()
def test_one_window_equals_the_model_loss():
    model, _ = bs.load_model("tiny-gpt2", device="cpu")
    ids = torch.randint(0, 257, (1, 64), generator=torch.Generator().manual_seed(1))
    res = perplexity(model, ids, window=64)
    assert math.isclose(res["nll"], model(ids, labels=ids).loss.item(), rel_tol=1e-5)


@torch.no_grad()
def test_strided_windows_score_each_token_once_with_context():
    model, _ = bs.load_model("tiny-gpt2", device="cpu")
    ids = torch.randint(0, 257, (1, 90), generator=torch.Generator().manual_seed(2))
    res = perplexity(model, ids, window=60, stride=30)
    assert res["tokens"] == 89
