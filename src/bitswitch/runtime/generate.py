"""The decode loop: left-padded prompts, one prefill, then one token per step for every row.

Precision may change between steps (``schedule``: a profile per step, cycled, step 0 being the
prefill) by setting module state, never by repacking. A row ends at EOS (``eos``), at a stop (a
string, cut before it, or a callable ``text -> cut index or -1``), or at ``max_new_tokens``; ended
rows keep stepping on a pad token until every row has ended (their outputs are not read).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import BitswitchError


@dataclass
class GenerateOutput:
    """texts / tokens: per row, the new text (cut at its stop) and ids; prompt_tokens, new_tokens:
    sums over rows; prefill_s / decode_s: wall time of step 0 and of the later steps; profiles_used:
    the profile of each step run; steps: how many steps ran (prefill included)."""

    texts: list[str]
    tokens: list[list[int]]
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float
    profiles_used: list[str] = field(default_factory=list)
    steps: int = 0

    @property
    def decode_tok_s(self) -> float | None:
        """Tokens per second of the decode steps, over every row (batch x steps after the first)."""
        n = sum(max(len(t) - 1, 0) for t in self.tokens)
        return n / self.decode_s if self.decode_s > 0 else None


def pick(logits: Tensor, do_sample: bool, temperature: float, top_k: int | None, top_p: float | None,
         gen: torch.Generator | None) -> Tensor:
    """Next ids (B,) from last-position logits (B, V) float32: argmax, or a sample after temperature,
    top-k and top-p (nucleus: the smallest set whose probability reaches top_p, the top token always in)."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / max(temperature, 1e-6)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)   # ties as argmax breaks them
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]


def _cut(text: str, stops) -> int:
    """The earliest cut index any stop gives in ``text``, or -1."""
    best = -1
    for s in stops:
        i = s(text) if callable(s) else text.find(s)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


def run(rt, prompts: list[list[int]], max_new_tokens: int, do_sample: bool = False, temperature: float = 1.0,
        top_k: int | None = None, top_p: float | None = None, seed: int = 0, stop=("\n",), eos: bool = True,
        min_new_tokens: int = 0, schedule: list[str] | None = None) -> GenerateOutput:
    """Generate for ``prompts`` (lists of ids) on runtime ``rt`` at its current profile (or ``schedule``)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise BitswitchError("every prompt needs at least one token")
    if max_new_tokens < 1:
        raise BitswitchError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    for p in schedule or []:
        rt.check_profile(p)
    tok, model = rt.tokenizer, rt.model
    eos_id = tok.eos_token_id if eos else None
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    stops = [s for s in (stop or ()) if callable(s) or s]
    b, length = len(prompts), max(len(p) for p in prompts)
    cache = model.new_cache(b, length + max_new_tokens)
    ids = torch.full((b, length), pad, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, length - len(p):] = torch.tensor(p, dtype=torch.long)
        cache.valid[r, length - len(p):length] = True
    gen = torch.Generator().manual_seed(seed) if do_sample else None
    new: list[list[int]] = [[] for _ in range(b)]
    texts = [""] * b
    done = [False] * b
    used: list[str] = []
    prefill_s = decode_s = 0.0
    pos, step_ids = 0, ids
    with torch.inference_mode():
        for step in range(max_new_tokens):
            if schedule:
                rt.set_profile(schedule[step % len(schedule)])
            used.append(rt.profile)
            t0 = time.perf_counter()
            logits = rt.step(step_ids, cache, pos)[:, -1]                       # (B, V)
            if step < min_new_tokens and eos_id is not None:
                logits[:, eos_id] = float("-inf")
            nxt = pick(logits, do_sample, temperature, top_k, top_p, gen)
            pos += step_ids.shape[1]
            for r in range(b):
                if done[r]:
                    continue
                t = int(nxt[r])
                if eos_id is not None and t == eos_id and step >= min_new_tokens:
                    done[r] = True
                    continue
                new[r].append(t)
                if stops and step + 1 >= min_new_tokens:
                    text = tok.decode(new[r], skip_special_tokens=True)
                    cut = _cut(text, stops)
                    if cut >= 0:
                        texts[r], done[r] = text[:cut], True
                        continue
                if len(new[r]) >= max_new_tokens:
                    done[r] = True
            if not all(done):
                cache.valid[:, pos] = True
                step_ids = nxt.masked_fill(torch.tensor(done), pad)[:, None]
            elapsed = time.perf_counter() - t0   # the whole step: forward, pick and the stop checks
            if step == 0:
                prefill_s += elapsed
            else:
                decode_s += elapsed
            if all(done):
                break
    for r in range(b):
        if not texts[r]:
            texts[r] = tok.decode(new[r], skip_special_tokens=True)
            cut = _cut(texts[r], stops) if stops else -1
            texts[r] = texts[r][:cut] if cut >= 0 else texts[r]
    return GenerateOutput(texts, new, sum(map(len, prompts)), sum(map(len, new)), prefill_s, decode_s, used,
                          len(used))
