"""benchmarks/bench_gguf_noise.py: windowed teacher-forced log-probabilities and their distances."""

from __future__ import annotations

import torch

import bitswitch as bs


def test_logprobs_score_every_position_but_each_windows_first(bench):
    model, _ = bs.load_model("tiny-llama", device="cpu")
    ids = torch.randint(0, 257, (70,), generator=torch.Generator().manual_seed(0))
    lp = bench.logprobs(model, ids, window=32)
    assert lp.shape == (31 + 31 + 5,) and lp.dtype == torch.float64 and bool((lp <= 0).all())
    with torch.no_grad():
        ref = torch.log_softmax(model(ids[32:64][None]).logits.double(), -1)[0, :-1]
    assert torch.equal(lp[31:62], ref.gather(-1, ids[33:64, None])[:, 0])
    assert bench.mean_abs(lp, lp) == 0.0 and bench.mean_abs(lp, lp - 0.5) == 0.5
    assert [c for c in bench.COLUMNS if c.startswith("llama_")] == [f"llama_{kv}_{fa}" for kv, fa in bench.SETTINGS]
