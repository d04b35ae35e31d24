import pytest
import torch

import bitswitch as bs
from bitswitch.data.squad import PromptConfig, load_squad
from bitswitch.evaluate.generate import answer_token_ids
from bitswitch.robust.embed import absolute_eps, embed_attack
from bitswitch.robust.examples import answer_spans, prompt_layout, token_layout
from bitswitch.robust.hotflip import hotflip
from bitswitch.robust.loss import AnswerScorer, frozen
from bitswitch.robust.rpi import DrawSampler, RPIConfig
from bitswitch.robust.typo import apply_edit, typo

CFG = PromptConfig()


@pytest.fixture(params=["tiny-gpt2", "tiny-llama"])
def setup(request, squad_file):
    model, tok = bs.load_model(request.param, device="cpu")
    bs.make_switchable(model)
    bs.set_profile(model, "w8a8")
    return model, tok, load_squad(str(squad_file))


def test_prefix_cached_losses_equal_full_forwards(setup):
    """The scorer's cached, middle-padded candidate batch gives each prompt's own full-forward loss."""
    model, tok, examples = setup
    ex = examples[0]
    tl = token_layout(tok, ex, CFG)
    answer = answer_token_ids(tok, ex.answers[0])
    cached = AnswerScorer(model, tok, DrawSampler(model, "w8a8"), tl.ids, answer, tl.prefix_len())
    plain = AnswerScorer(model, tok, DrawSampler(model, "w8a8"), tl.ids, answer, 0)
    other = list(tl.ids)
    other[tl.editable[0]] = 120
    shorter = tl.ids[:tl.editable[0]] + tl.ids[tl.editable[0] + 1:]
    prompts = [tl.ids, other, shorter]
    a, b = cached.losses(prompts), torch.stack([plain.losses([p])[0] for p in prompts])
    assert torch.allclose(a, b, atol=1e-4) and a[0] != a[1]
    loss, grad, m = cached.loss_and_grad(tl.ids)
    assert loss == pytest.approx(float(a[0]), abs=1e-4) and m == tl.prefix_len() > 0
    assert grad.shape == (len(tl.ids) - m + len(answer), model.get_input_embeddings().weight.shape[1])


def test_editable_tokens_lie_in_the_question_and_never_in_answers(setup):
    model, tok, examples = setup
    for ex in examples:
        tl = token_layout(tok, ex, CFG, context=True)
        lay = tl.layout
        assert lay.text[lay.question_span[0]:lay.question_span[1]] == ex.question
        for i in tl.editable:
            s, e = tl.offsets[i]
            assert not any(s < pe and e > ps for ps, pe in lay.protected)


@pytest.mark.parametrize("budget", [1, 2, 3])
def test_hotflip_never_exceeds_its_budget(setup, budget):
    model, tok, examples = setup
    with frozen(model):
        for ex in examples:
            adv = hotflip(model, tok, ex, CFG, DrawSampler(model, "w8a8"), budget=budget, candidates=4)
            clean = token_layout(tok, ex, CFG).ids
            assert adv.n_edits == len(adv.edits) <= budget
            assert adv.loss_adv >= adv.loss_clean
            if adv.extra["retokenized_same"]:   # the replayed text is exactly the attacked ids
                new = token_layout(tok, adv.adversarial(ex), CFG, alpha_only=False).ids
                assert sum(a != b for a, b in zip(clean, new)) == adv.n_edits
            assert adv.adv_context == ex.context


@pytest.mark.parametrize("budget", [1, 4])
def test_typo_never_exceeds_its_budget_and_keeps_answers(setup, budget):
    model, tok, examples = setup
    with frozen(model):
        for ex in examples:
            adv = typo(model, tok, ex, CFG, DrawSampler(model, "w8a8"), budget=budget, candidates=6, context=True,
                       max_length=256)
            assert adv.n_edits == len(adv.edits) <= budget
            # replaying the recorded edits from the clean text gives the adversarial text
            text = {"question": ex.question, "context": ex.context}
            for e in adv.edits:
                text[e["field"]] = apply_edit(text[e["field"]], e["op"], e["index"], e["char"])
            assert (text["question"], text["context"]) == (adv.adv_question, adv.adv_context)
            assert answer_spans(adv.adv_context, ex.answers)          # the answer is still in the context
            assert adv.loss_adv >= adv.loss_clean


@pytest.mark.parametrize("method, norm", [("pgd", "linf"), ("pgd", "l2"), ("fgsm", "linf")])
def test_embed_attack_stays_in_its_radius_and_raises_the_loss(setup, method, norm):
    model, tok, examples = setup
    with frozen(model):
        adv, delta = embed_attack(model, tok, examples[1], CFG, DrawSampler(model, "w8a8"), method, eps=0.5,
                                  norm=norm, steps=3)
    e = absolute_eps(model, 0.5, norm)
    size = delta.abs().max() if norm == "linf" else delta.norm(dim=-1).max()
    assert float(size) <= e * (1 + 1e-5) and adv.extra["eps_abs"] == pytest.approx(e)
    assert delta.shape == (len(adv.extra["positions"]), model.get_input_embeddings().weight.shape[1])
    assert adv.loss_adv > adv.loss_clean


def test_adaptive_attacker_averages_over_rpi_draws(setup):
    model, tok, examples = setup
    cfg = RPIConfig(("w8a8", "w4a8", "fp"), 0.5, "forward", 0)
    sampler = DrawSampler(model, cfg, eot=3, seed=0)
    with frozen(model):
        a = hotflip(model, tok, examples[0], CFG, sampler, budget=2, candidates=3)
        b = hotflip(model, tok, examples[0], CFG, DrawSampler(model, cfg, eot=3, seed=0), budget=2, candidates=3)
    assert a.adv_question == b.adv_question and a.n_edits <= 2      # seeded EOT: reproducible
    # each step scores under eot draws: several precisions' prefixes were computed
    assert a.extra["forwards"] > 2 * 3


def test_prompt_layout_spans():
    ex = load_squad.__globals__["SquadExample"]("x", "T", "ctx text", "q?", ("text",))
    lay = prompt_layout(ex, CFG)
    assert lay.text[slice(*lay.context_span)] == "ctx text" and lay.text[slice(*lay.question_span)] == "q?"
    assert lay.protected == [(lay.context_span[0] + 4, lay.context_span[0] + 8)]
