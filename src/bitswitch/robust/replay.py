"""Replay questions (clean or adversarial) at a setting: EM / F1 / answer perplexity.

One function serves the clean baseline, the direct attack result and every cell of the
transferability matrix, so a matrix cell crafted and evaluated at the same setting *is* the direct
result. Scores come from :func:`~bitswitch.evaluate.scorers.score_squad` (what ``bitswitch eval``
and the search run); a setting is
a fixed profile or an RPI mode reseeded at ``seed`` before every replay (reproducible draws).
"""

from __future__ import annotations

from ..data.squad import PromptConfig, SquadExample, encode_prompts
from ..evaluate.scorers import FALLBACK_CONTEXT, context_length, score_squad
from .rpi import use_setting

# a question counts as answered when its F1 reaches this; an attack succeeds on an answered question
# when the adversarial F1 falls below it
ANSWERED_F1 = 0.5


def replay(model, tokenizer, examples: list[SquadExample], cfg: PromptConfig, setting, max_new_tokens: int = 16,
           batch_size: int = 16, seed: int = 0, deltas=None, progress=None) -> dict:
    """Evaluate ``examples`` at ``setting``; returns ``{"em", "f1", "answer_ppl", "n", "rows"}``.

    ``deltas``: per example ``(positions, delta)`` or None, for embedding attacks (then one question
    per batch, the perturbation added by an embedding hook).
    """
    prompts, _ = encode_prompts(tokenizer, examples, cfg, context_length(model, FALLBACK_CONTEXT),
                                reserve=max_new_tokens)
    per_question = None
    if deltas is not None:
        from .embed import perturbed

        def per_question(i):
            return perturbed(model, *(deltas[i] if deltas[i] is not None else ([], None)), len(prompts[i]))
    with use_setting(model, setting, seed):
        return score_squad(model, tokenizer, prompts, examples, max_new_tokens, batch_size, progress=progress,
                           per_question=per_question)


def success_rate(clean_rows: list[dict], adv_rows: list[dict]) -> float | None:
    """Percent of the questions answered cleanly (F1 >= 0.5) whose adversarial F1 falls below 0.5."""
    adv = {r["id"]: r for r in adv_rows}
    answered = [r for r in clean_rows if r["f1"] >= ANSWERED_F1 and r["id"] in adv]
    if not answered:
        return None
    return 100 * sum(adv[r["id"]]["f1"] < ANSWERED_F1 for r in answered) / len(answered)
