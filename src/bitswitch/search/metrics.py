"""One measurement: a metric of the model at a profile on data prepared once.

Every search and sensitivity step calls :func:`measure`; the scoring is
:mod:`bitswitch.evaluate.scorers`' (what ``bitswitch eval`` and the robustness replays run), so a
searched profile scores exactly what ``bitswitch eval`` would give it on the same questions.

Metrics: ``f1`` / ``em`` (SQuAD, greedy decoding, percent), ``answer_ppl`` (SQuAD, teacher-forced
perplexity of the first gold answer), ``ppl`` (sliding-window text perplexity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import BitswitchError
from ..results import higher_is_better

METRICS = ("f1", "em", "answer_ppl", "ppl")
ALIASES = {"squad-f1": "f1", "squad-em": "em", "answer-ppl": "answer_ppl", "f1": "f1", "em": "em",
           "answer_ppl": "answer_ppl", "ppl": "ppl", "wikitext-ppl": "ppl"}
TASK_OF = {"f1": "squad", "em": "squad", "answer_ppl": "squad", "ppl": "wikitext"}


def canonical_metric(name: str, task: str | None = None) -> str:
    """``squad-f1`` -> ``f1``; checks the metric fits ``task`` (one-line error otherwise)."""
    metric = ALIASES.get(str(name).strip().lower())
    if metric is None:
        raise BitswitchError(f"unknown metric {name!r}: use squad-f1, squad-em, answer-ppl or ppl")
    if task is not None and TASK_OF[metric] != task:
        raise BitswitchError(f"metric {name!r} does not fit task {task!r}: squad takes squad-f1, squad-em or "
                             "answer-ppl; wikitext takes ppl")
    return metric


def damage(metric: str, value: float, base: float) -> float:
    """How much worse ``value`` is than ``base``, on an additive scale (larger = worse).

    F1/EM: points lost. Perplexities: ``ln(value / base)``, i.e. extra nats per scored token, which
    adds up over small independent perturbations (what the budget search assumes).
    """
    if higher_is_better(metric):
        return base - value
    return math.log(value / base)


def drop(metric: str, value: float, base: float) -> float:
    """The drop ``--max-drop`` is compared with: F1/EM points lost, or the relative perplexity
    increase (0.05 = 5% higher)."""
    return base - value if higher_is_better(metric) else value / base - 1.0


@dataclass
class MetricData:
    """Data for one metric, tokenized once.

    squad: ``prompts`` (token-id lists), ``answers`` (first gold answer each), ``examples``.
    wikitext: ``ids`` (1, N) token ids, ``window`` / ``stride`` of the sliding windows.
    """

    task: str
    metric: str
    source: str
    batch_size: int = 8
    max_new_tokens: int = 32
    prompts: list = field(default_factory=list)
    answers: list = field(default_factory=list)
    examples: list = field(default_factory=list)
    ids: object = None
    window: int = 1024
    stride: int | None = None
    offset: int = 0

    @property
    def size(self) -> int:
        """Questions (squad) or tokens (wikitext): what a progress bar counts."""
        return len(self.prompts) if self.task == "squad" else int(self.ids.shape[1])


def prepare(model, tokenizer, metric: str, data: str | None, limit: int | None = None, offset: int = 0,
            max_tokens: int | None = None, batch_size: int = 8, max_new_tokens: int = 32,
            window: int = 1024, stride: int | None = None, order: str = "stratified",
            sample_seed: int = 0) -> MetricData:
    """Load and tokenize the data a metric needs.

    squad: questions ``offset .. offset + limit`` of ``data`` in ``order`` (``load_squad``: stratified
    over articles with ``sample_seed``, or the file's), zero-shot prompts in ``bitswitch eval``'s default template. wikitext: tokens
    ``offset .. offset + max_tokens`` of ``data`` (a held-out text slice, as ``offset`` holds out questions).
    """
    from ..evaluate.scorers import FALLBACK_CONTEXT, context_length, load_text_ids

    metric = canonical_metric(metric)
    task = TASK_OF[metric]
    for name, v in (("limit", limit), ("max-tokens", max_tokens)):
        if v is not None and v < 1:
            raise BitswitchError(f"--{name} must be at least 1, got {v}")
    if batch_size < 1 or max_new_tokens < 1:
        raise BitswitchError("--batch-size and --max-new-tokens must be at least 1")
    if task == "squad":
        from ..data.squad import PromptConfig, encode_prompts, load_squad

        examples = load_squad(data or "squad", limit=limit, offset=offset, order=order, sample_seed=sample_seed)
        prompts, _ = encode_prompts(tokenizer, examples, PromptConfig(), context_length(model, FALLBACK_CONTEXT),
                                    reserve=max_new_tokens)
        return MetricData(task, metric, str(data), batch_size, max_new_tokens, prompts,
                          [ex.answers[0] for ex in examples], examples, offset=offset)
    ids, window = load_text_ids(model, tokenizer, data, max_tokens, offset, window)
    return MetricData(task, metric, str(data), batch_size, max_new_tokens, ids=ids, window=window,
                      stride=stride, offset=offset)


def measure(model, tokenizer, md: MetricData, metric: str | None = None, progress=None) -> dict:
    """Metrics of ``model`` at its current profile on ``md``.

    ``metric`` (default ``md.metric``) decides the work: ``answer_ppl`` runs teacher forcing only;
    ``f1``/``em`` decode greedily and add ``answer_ppl`` too; ``ppl`` returns ``{"ppl", "tokens"}``.
    """
    from ..evaluate.scorers import score_answer_ppl, score_squad, score_text

    metric = canonical_metric(metric or md.metric)
    if md.task == "wikitext":
        out = score_text(model, md.ids, md.window, md.stride, progress)
        return {"ppl": out["ppl"], "tokens": out["tokens"]}
    if metric in ("f1", "em"):
        out = score_squad(model, tokenizer, md.prompts, md.examples, md.max_new_tokens, md.batch_size,
                          progress=progress)
        return {"n": out["n"], "em": out["em"], "f1": out["f1"], "answer_ppl": out["answer_ppl"]}
    out = score_answer_ppl(model, tokenizer, md.prompts, md.answers, md.batch_size,
                           progress=progress if metric == "answer_ppl" else None)
    return {"n": out["n"], "answer_ppl": out["answer_ppl"]}


def fast_weight_cache(model) -> None:
    """Keep fake-quantized weights as floats in the cache when the wrappers support the choice:
    sensitivity and search run hundreds of forwards at a handful of quantizers, so dequantizing
    codes on every forward would cost more than the cache's memory."""
    from ..switching import unit_modules

    for _, _, mod in unit_modules(model):
        if hasattr(mod, "weight_cache"):
            mod.weight_cache = "float"
