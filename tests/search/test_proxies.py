import pytest

import bitswitch as bs
from bitswitch.search import metrics as M
from bitswitch.search.proxies import proxy_scores


@pytest.mark.parametrize("method", ["fisher", "fisher-grad", "taylor", "hutchinson"])
def test_proxy_scores_grow_as_bits_fall(method, tiny_squad):
    model, tok = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model)
    bs.add_adapters(model, ["w8a8"])
    md = M.prepare(model, tok, "answer_ppl", tiny_squad, limit=4)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    out = proxy_scores(model, tok, md, "w8a8", [3, 4, 8], method, n_batches=2, batch_size=2, progress=False)
    scores = out["scores"]
    assert out["batches"] == 2 and set(scores) == set(model.bitswitch.units)
    for unit, row in scores.items():
        # no noise at the base bits; the head runs fp at w8a8, so 8 bits already perturb it
        assert (row[8] == 0.0) == (unit != "head")
        if method == "fisher":   # a weighted sum of squared noise (seeded model: exact facts)
            assert row[3] >= row[4] >= 0.0
        elif method == "taylor":  # a squared projection: never negative, not monotone in general
            assert row[3] >= 0.0 and row[4] >= 0.0
    assert sum(row[3] for row in scores.values()) != 0.0
    # gradients and flags are left as they were
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("method", ["fisher", "hutchinson"])
def test_proxy_scores_around_a_low_base_are_gains_above_it(method, tiny_squad):
    """Damage is against the float weights on both sides: from w4a8, 3 bits costs and 8 bits gains."""
    model, tok = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model)
    md = M.prepare(model, tok, "answer_ppl", tiny_squad, limit=4)
    units = [u for u in model.bitswitch.units if u != "head"]
    scores = proxy_scores(model, tok, md, "w4a8", [3, 4, 8], method, n_batches=2, batch_size=2, units=units,
                          progress=False)["scores"]
    for unit in units:
        assert scores[unit][4] == 0.0
        if method == "fisher":   # F >= 0: 8 bits has less noise energy than 4, 3 bits more
            assert scores[unit][8] < 0.0 < scores[unit][3]
        else:  # tr(H) of an untrained model may be negative; one factor per unit: opposite signs
            assert scores[unit][8] * scores[unit][3] < 0.0


@pytest.mark.parametrize("method", ["fisher", "fisher-grad"])
def test_fisher_is_half_the_squared_token_gradient_times_the_noise(method, tmp_path):
    """One scored token: the random sign squares away, so the Fisher score is exactly
    ``1/2 sum_i g_i^2 (dW_b^2 - dW_base^2)`` with ``g`` that token's gradient, and fisher-grad adds
    ``sum_i g_i (Q_b(W) - Q_base(W))_i`` (exact facts)."""
    import torch

    from bitswitch.search.proxies import _noise, _token_nll, loss_batches
    from bitswitch.switching import resolve_profile, set_profile, state, unit_modules

    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat " * 4)
    model, tok = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model)
    md = M.prepare(model, tok, "ppl", str(text), max_tokens=2)
    unit = "L1.mlp_out"
    scores = proxy_scores(model, tok, md, "w8a8", [3], method, n_batches=1, batch_size=1, units=[unit],
                          progress=False)["scores"]
    set_profile(model, "w8a8")
    _, table = resolve_profile(model, "w8a8")
    mods = [m for u, _, m in unit_modules(model) if u == unit]
    for m in mods:
        m.base.weight.requires_grad_(True)
    grads = torch.autograd.grad(_token_nll(model, loss_batches(md, tok, 1, 1)[0]).sum(), [m.base.weight for m in mods])
    want = 0.0
    for m, g in zip(mods, grads):
        g = (g.t() if m.conv1d else g).double()
        opts = state(model).options
        d3, d8 = (_noise(m, table[unit].weight, b, opts).double() for b in (3, None))
        want += 0.5 * float((g.pow(2) * (d3.pow(2) - d8.pow(2))).sum())
        if method == "fisher-grad":
            want += float((g * (d3 - d8)).sum())
    assert scores[unit][3] == pytest.approx(want, rel=1e-5)
