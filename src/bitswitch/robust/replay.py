"""Replay questions (clean or adversarial) at a setting: EM / F1 / answer perplexity.

One function serves the clean baseline, the direct attack result and every cell of the
transferability matrix, so a matrix cell crafted and evaluated at the same setting *is* the direct
result. Predictions and likelihoods come from :func:`~bitswitch.evaluate.generate.generate_and_score`
(what ``bitswitch eval`` runs), scores from the official SQuAD metrics; a setting is
a fixed profile or an RPI mode reseeded at ``seed`` before every replay (reproducible draws).
"""

from __future__ import annotations

import math

from ..data.squad import PromptConfig, SquadExample, encode_prompts
from ..evaluate.generate import generate_and_score
from ..evaluate.squad_metrics import exact_match, f1
from .rpi import use_setting

# a question counts as answered when its F1 reaches this; an attack succeeds on an answered question
# when the adversarial F1 falls below it
ANSWERED_F1 = 0.5


def context_length(model) -> int:
    cfg = model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 2048


def replay(model, tokenizer, examples: list[SquadExample], cfg: PromptConfig, setting, max_new_tokens: int = 16,
           batch_size: int = 16, seed: int = 0, deltas=None, progress=None) -> dict:
    """Evaluate ``examples`` at ``setting``; returns ``{"em", "f1", "answer_ppl", "n", "rows"}``.

    ``deltas``: per example ``(positions, delta)`` or None, for embedding attacks (then one question
    per batch, the perturbation added by an embedding hook).
    """
    prompts, _ = encode_prompts(tokenizer, examples, cfg, context_length(model), reserve=max_new_tokens)
    golds = [ex.answers[0] for ex in examples]
    with use_setting(model, setting, seed):
        if deltas is None:
            preds, nll, count = generate_and_score(model, tokenizer, prompts, golds, max_new_tokens, batch_size,
                                                   progress=progress)
        else:
            from .embed import perturbed

            preds, nll, count = [], 0.0, 0
            for prompt, gold, d in zip(prompts, golds, deltas):
                with perturbed(model, *(d if d is not None else ([], None)), len(prompt)):
                    pred, a, b = generate_and_score(model, tokenizer, [prompt], [gold], max_new_tokens, 1,
                                                    progress=progress)
                    preds += pred
                nll, count = nll + a, count + b
    rows = [{"id": ex.id, "prediction": p, "em": exact_match(p, ex.answers), "f1": f1(p, ex.answers)}
            for ex, p in zip(examples, preds)]
    n = len(rows)
    return {"em": 100 * sum(r["em"] for r in rows) / n, "f1": 100 * sum(r["f1"] for r in rows) / n,
            "answer_ppl": math.exp(nll / max(count, 1)), "n": n, "rows": rows}


def success_rate(clean_rows: list[dict], adv_rows: list[dict]) -> float | None:
    """Percent of the questions answered cleanly (F1 >= 0.5) whose adversarial F1 falls below 0.5."""
    adv = {r["id"]: r for r in adv_rows}
    answered = [r for r in clean_rows if r["f1"] >= ANSWERED_F1 and r["id"] in adv]
    if not answered:
        return None
    return 100 * sum(adv[r["id"]]["f1"] < ANSWERED_F1 for r in answered) / len(answered)
