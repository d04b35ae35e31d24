"""The scorers' two primitives on the switchable runtime (:class:`bitswitch.runtime.Runtime`), so
``bitswitch eval --engine runtime`` scores exactly as fake quantization does, on the packed kernels.

- :func:`generate_and_score`: greedy answers with the same stop rule as
  :mod:`.generate` (EOS, or a line break after some non-blank text; the text then cut by
  ``_answer_text``), and the teacher-forced answer NLL, both per length-sorted batch;
- :func:`perplexity`: the same windows and scored tokens as :func:`.perplexity.perplexity`.

The runtime computes in bf16 (its kernels are fast only there), so its figures differ from fake
quantization's by bf16 rounding; ``docs/results.md`` reports the paired difference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models import context_length
from .generate import _answer_text, _check_prompts, _pad, _pad_id, answer_token_ids, token_nll
from .perplexity import windows


def is_runtime(model) -> bool:
    """Whether ``model`` is a runtime rather than a torch module (duck-typed: no import of runtime/)."""
    return getattr(model, "is_runtime", False) is True


def newline_after_text(text: str) -> int:
    """The stop rule of greedy SQuAD answers: the index of the first line break after some
    non-blank text, else -1 (leading blank lines do not end an answer)."""
    stripped = text.lstrip()
    cut = stripped.find("\n")
    return -1 if cut < 0 else len(text) - len(stripped) + cut


def generate_and_score(rt, tokenizer, prompts: list[list[int]], answers: list[str], max_new_tokens: int = 32,
                       batch_size: int = 8, stop_at_newline: bool = True, progress=None):
    """``(texts in input order, total answer NLL, answer tokens)``, as :func:`.generate.generate_and_score`."""
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
    _check_prompts(prompts)
    targets = [answer_token_ids(tokenizer, a) for a in answers]
    ctx = context_length(rt)
    if ctx:
        targets = [t[:max(ctx - len(p), 1)] for p, t in zip(prompts, targets)]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = [""] * len(prompts)
    total, count = 0.0, 0
    pad = _pad_id(tokenizer)
    stop = [newline_after_text] if stop_at_newline else None
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        seqs = [prompts[i] + targets[i] for i in rows]
        ids, mask = _pad(seqs, pad, "cpu")                                           # (b, L), left-padded
        lengths = torch.tensor([len(targets[i]) for i in rows])                     # (b,)
        width = int(lengths.max())                                                   # A
        logits = rt.logits(ids, mask, last=width + 1)                              # (b, A + 1, V)
        nll = token_nll(logits, ids[:, -width:])                                     # (b, A)
        is_answer = torch.arange(width) >= width - lengths[:, None]
        total += nll[is_answer].double().sum().item()
        count += int(is_answer.sum())
        out = rt.generate([prompts[i] for i in rows], max_new_tokens=max_new_tokens, stop=stop, eos=True)
        for i, text in zip(rows, out.texts):
            texts[i] = _answer_text(text, stop_at_newline)
        if progress is not None:
            progress.update(len(rows))
    return texts, total, count


def perplexity(rt, input_ids: torch.Tensor, window: int = 1024, stride: int | None = None, progress=None) -> dict:
    """``{"ppl", "nll", "tokens"}`` of ``input_ids`` (1, N) through the runtime."""
    stride = stride or window
    nll_sum, n_scored = 0.0, 0
    for begin, end, n_target in windows(input_ids.shape[1], window, stride):
        ids = input_ids[:, begin:end]
        logits = rt.logits(ids)[:, :-1]                                              # (1, T-1, V) float32
        labels = ids[:, 1:].clone()
        valid = min(n_target, labels.shape[1])
        labels[:, : labels.shape[1] - valid] = -100
        nll_sum += F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum").item()
        n_scored += valid
        if progress is not None:
            progress.update(n_target)
    nll = nll_sum / max(n_scored, 1)
    return {"ppl": math.exp(nll), "nll": nll, "tokens": n_scored}
