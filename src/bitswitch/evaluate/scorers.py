"""One scorer per task: what every caller that measures a profile runs.

``bitswitch eval`` (:mod:`.squad`, :mod:`.tasks`), the search and sensitivity steps
(:func:`bitswitch.search.metrics.measure`) and the robustness replays
(:func:`bitswitch.robust.replay.replay`) all score through these functions, so the same profile on
the same prompts gives the same floats whichever command measured it.

- SQuAD: :func:`score_squad` (greedy answers, EM / F1 per question and their means, answer
  perplexity in the same pass) and :func:`score_answer_ppl` (teacher forcing only).
- Both run on fake quantization (a torch model) or on the runtime (:mod:`.runtime_scoring`), whichever
  ``model`` is.
- Text: :func:`load_text_ids` (the tokens a perplexity is taken over) and :func:`score_text`
  (sliding-window perplexity).

This module imports neither :mod:`.tasks` nor :mod:`.squad`, so both can import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from ..data.text import load_text, tokenize_text
from ..errors import BitswitchError
from ..models import context_length  # noqa: F401 - the scorers' callers take it from here
from .generate import answer_nll, generate_and_score
from .perplexity import perplexity
from .runtime_scoring import generate_and_score as runtime_generate_and_score
from .runtime_scoring import is_runtime
from .runtime_scoring import perplexity as runtime_perplexity
from .squad_metrics import exact_match, f1

TEXT_DEFAULT = "wikitext"
FALLBACK_CONTEXT = 2048   # prompt budget for a model whose config names no context window


def score_squad(model, tokenizer, prompts: list[list[int]], examples: Sequence, max_new_tokens: int = 32,
                batch_size: int = 8, progress=None,
                per_question: Callable[[int], object] | None = None) -> dict:
    """Greedy answers to ``prompts`` scored against ``examples`` (one :class:`SquadExample` each).

    Returns ``{"em", "f1", "answer_ppl", "n", "rows"}``: EM and F1 as percentages
    (``100 * sum / n`` over the questions in order), ``answer_ppl`` the teacher-forced perplexity of
    each question's first gold answer, ``rows`` one ``{"id", "prediction", "em", "f1"}`` per question
    in input order (scores as fractions).

    ``per_question``: ``i -> context manager`` entered around question ``i``, which then runs alone
    (batch of one), e.g. to add that question's embedding perturbation.
    """
    if len(prompts) != len(examples):
        raise ValueError(f"got {len(prompts)} prompts but {len(examples)} examples")
    golds = [ex.answers[0] for ex in examples]
    if is_runtime(model):
        if per_question is not None:
            raise BitswitchError("per-question perturbations need fake quantization: use --engine fake")
        preds, nll, count = runtime_generate_and_score(model, tokenizer, prompts, golds, max_new_tokens, batch_size,
                                                       progress=progress)
    elif per_question is None:
        preds, nll, count = generate_and_score(model, tokenizer, prompts, golds, max_new_tokens, batch_size,
                                               progress=progress)
    else:
        preds, nll, count = [], 0.0, 0
        for i, (prompt, gold) in enumerate(zip(prompts, golds)):
            with per_question(i):
                pred, a, b = generate_and_score(model, tokenizer, [prompt], [gold], max_new_tokens, 1,
                                                progress=progress)
            preds += pred
            nll, count = nll + a, count + b
    rows = [{"id": ex.id, "prediction": p, "em": exact_match(p, ex.answers), "f1": f1(p, ex.answers)}
            for ex, p in zip(examples, preds)]
    n = len(rows)
    return {"em": 100 * sum(r["em"] for r in rows) / n, "f1": 100 * sum(r["f1"] for r in rows) / n,
            "answer_ppl": math.exp(nll / max(count, 1)), "n": n, "rows": rows}


def score_answer_ppl(model, tokenizer, prompts: list[list[int]], answers: list[str], batch_size: int = 8,
                     progress=None) -> dict:
    """Teacher-forced perplexity of ``answers`` after ``prompts`` (no decoding): ``{"answer_ppl", "n"}``.

    ``progress`` is advanced by the number of prompts once they are scored.
    """
    nll, count = answer_nll(model, tokenizer, prompts, answers, batch_size)
    if progress is not None:
        progress.update(len(prompts))
    return {"answer_ppl": math.exp(nll / max(count, 1)), "n": len(prompts)}


def load_text_ids(model, tokenizer, data: str | None, max_tokens: int | None, offset: int, window: int):
    """Tokens ``offset .. offset + max_tokens`` of text ``data`` (default WikiText) as (1, N) ids, and
    ``window`` capped at the model's context. Fewer than 2 tokens is a one-line error."""
    ids = tokenize_text(tokenizer, load_text(data or TEXT_DEFAULT), max_tokens, offset)
    if ids.shape[1] < 2:
        raise BitswitchError(f"text data {data!r} gives fewer than 2 tokens after --offset {offset}: "
                             "pass more text or a smaller offset")
    ctx = context_length(model)
    return ids, (min(window, ctx) if ctx else window)


def score_text(model, ids, window: int, stride: int | None = None, progress=None) -> dict:
    """Sliding-window perplexity of ``ids`` (1, N): ``{"ppl", "nll", "tokens"}``
    (:func:`.perplexity.perplexity`; on the runtime, :func:`.runtime_scoring.perplexity`)."""
    if is_runtime(model):
        return runtime_perplexity(model, ids, window, stride, progress)
    return perplexity(model, ids, window, stride, progress)
