"""llama.cpp under bitswitch's rules: greedy answers with its stop rule, windowed perplexity, decode speed.

bitswitch's greedy decoder (:mod:`bitswitch.evaluate.generate`) stops a row at an EOS id (the
tokenizer's or the generation config's) or once the decoded continuation has a line break after
non-blank text, then answers with :func:`~bitswitch.evaluate.generate.answer_text`. Here llama.cpp
generates from the same prompt ids with the stop string ``"\\n"`` (so it rarely runs on), and
:func:`cut_answer` applies that same rule to its tokens, decoded by the same tokenizer. A stop
string also fires on a leading line break, where bitswitch decodes on: such a row is generated
again without stop strings (up to ``max_new_tokens``) and cut the same way.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from ..evaluate.generate import answer_text


def cut_answer(tokens: Sequence[int], stop_ids: set[int], decode: Callable[[list[int]], str]) -> tuple[list[int], str]:
    """The tokens bitswitch's decoder would keep from ``tokens`` and why it stopped.

    Returns ``(kept, reason)``: ``reason`` is ``"eos"`` (the next token is a stop id, not kept),
    ``"newline"`` (the kept text has a line break after non-blank text) or ``"end"`` (``tokens``
    ran out first).
    """
    kept: list[int] = []
    for t in tokens:
        if t in stop_ids:
            return kept, "eos"
        kept.append(t)
        if "\n" in decode(kept).lstrip():
            return kept, "newline"
    return kept, "end"


def llama_answer(llm, prompt: list[int], max_new_tokens: int, stop_ids: set[int], decode) -> dict:
    """One greedy answer of ``llm`` (a :class:`~bitswitch.llamacpp.LlamaCpp`) to ``prompt`` under
    bitswitch's stop rule: ``{"text", "tokens", "stop"}`` (``stop``: eos, newline, max, or
    ``eog``: llama.cpp ended at an end-of-generation token that is not one of ``stop_ids``)."""
    out = llm.generate(prompt, max_new_tokens, stop=["\n"])
    kept, reason = cut_answer(out["tokens"], stop_ids, decode)
    if reason == "end" and len(out["tokens"]) < max_new_tokens:   # a leading line break stopped it
        out = llm.generate(prompt, max_new_tokens)
        kept, reason = cut_answer(out["tokens"], stop_ids, decode)
    if reason == "end":
        reason = "max" if len(kept) >= max_new_tokens else "eog"
    return {"text": answer_text(decode(kept)), "tokens": kept, "stop": reason}


def decode_speed(llm, prompt: list[int], new_tokens: int, repeats: int) -> dict:
    """Decode tokens/s of ``llm`` after ``prompt``: exactly ``new_tokens`` greedy tokens (no stop,
    EOS forbidden), one warm-up, then the median of ``repeats`` runs; decode covers the
    ``new_tokens - 1`` steps after the first token (the bridge's timing)."""
    rates, prefill = [], []
    for i in range(repeats + 1):
        out = llm.generate(prompt, new_tokens, min_new_tokens=new_tokens, eos=False)
        if i:
            rates.append((out["new_tokens"] - 1) / out["decode_s"])
            prefill.append(len(prompt) / out["prefill_s"])
    return {"decode_tok_s": statistics.median(rates), "prefill_tok_s": statistics.median(prefill),
            "prompt_tokens": len(prompt), "new_tokens": new_tokens, "repeats": repeats}
