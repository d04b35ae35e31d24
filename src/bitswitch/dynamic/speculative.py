"""Self-speculative greedy decoding across precisions: draft ``k`` tokens at a low profile, verify
them at a high one in a single forward, keep the longest prefix the high profile agrees with plus
the high profile's own next token. Lossless: the tokens are exactly greedy decoding's at the high
profile, one sequence at a time. On the runtime that holds bit for bit: its engine's verification forward
(up to 16 columns) attends row by row as one-column steps do (``RuntimeModel.row_exact``), and the
units' kernels give a row the same bits whatever the row count. On fake quantization a k+1-token float32 forward may round
otherwise than one-token forwards, so an exact float tie could in principle break the other way.

    out = speculative_generate(engine, prompt_ids, "w4g32", "w8", k=4, max_new_tokens=32)
    out.tokens, out.acceptance          # accepted drafts / drafted tokens
    speculative_generate(engine, prompt_ids, "w4g32", "w8", k=8, max_new_tokens=32, min_prob=0.6)

``min_prob`` makes the draft length adaptive: drafting stops early at a token the low profile gives
less than that probability (the token is dropped: it would likely be rejected, and the verification
gives the high profile's own token there), so confident stretches are drafted long and uncertain
ones short. The output is the same greedy output whatever ``min_prob``.

Both generators stop after ``max_new_tokens`` tokens or at EOS (not included): ``eos`` True is the
tokenizer's, an int that id, False none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import BitswitchError
from .engine import Engine


@dataclass
class Generated:
    """tokens: the new ids; prefill_s / decode_s: wall time of the prompt's forward and of the rest;
    drafted / accepted: draft tokens proposed and kept; rounds: verify forwards."""

    tokens: list[int]
    prefill_s: float
    decode_s: float
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def decode_tok_s(self) -> float | None:
        """New tokens after the first (which the prefill gives) per second of decoding."""
        return (len(self.tokens) - 1) / self.decode_s if self.decode_s > 0 and self.tokens else None


def _finish(tokens: list[int], max_new_tokens: int, eos: int | None) -> tuple[list[int], bool]:
    """``tokens`` cut at EOS and at the limit; whether generation is over."""
    if eos is not None and eos in tokens:
        return tokens[:tokens.index(eos)][:max_new_tokens], True
    return tokens[:max_new_tokens], len(tokens) >= max_new_tokens


def greedy_generate(engine: Engine, prompt: Sequence[int], profile: str, max_new_tokens: int,
                    eos: bool | int = True) -> Generated:
    """Plain greedy decoding at ``profile``, one token per forward (the reference)."""
    _check(prompt, max_new_tokens)
    eos_id = _eos_id(engine, eos)
    engine.set_profile(profile)
    t0 = time.perf_counter()
    nxt = int(engine.prefill(prompt, len(prompt) + max_new_tokens)[-1].argmax())
    t1 = time.perf_counter()
    out, done = _finish([nxt], max_new_tokens, eos_id)
    while not done:
        nxt = int(engine.step([nxt])[-1].argmax())
        out, done = _finish(out + [nxt], max_new_tokens, eos_id)
    return Generated(out, t1 - t0, time.perf_counter() - t1)


def speculative_generate(engine: Engine, prompt: Sequence[int], low: str, high: str, k: int,
                         max_new_tokens: int, eos: bool | int = True, min_prob: float | None = None) -> Generated:
    """Greedy decoding at ``high``, drafted up to ``k`` tokens at a time at ``low``, each draft cut
    before the first token ``low`` gives less than ``min_prob`` (see the module)."""
    _check(prompt, max_new_tokens)
    if k < 1:
        raise BitswitchError(f"the draft length k must be at least 1, got {k}")
    if min_prob is not None and not 0 <= min_prob <= 1:
        raise BitswitchError(f"the draft's minimum probability must be in 0..1, got {min_prob:g}")
    floor = None if not min_prob else math.log(min_prob)   # compared with log-probabilities
    eos_id = _eos_id(engine, eos)
    engine.set_profile(high)
    t0 = time.perf_counter()
    nxt = int(engine.prefill(prompt, len(prompt) + max_new_tokens + k + 1)[-1].argmax())
    t1 = time.perf_counter()
    res = Generated([], t1 - t0, 0.0)
    out, done = _finish([nxt], max_new_tokens, eos_id)
    while not done:
        base = engine.position                        # where ``nxt`` (not yet fed) goes
        draft: list[int] = []
        kk = min(k, max_new_tokens - len(out) - 1)   # drafts past the limit would be thrown away
        if kk > 0:
            engine.set_profile(low)
            t = nxt
            for _ in range(kk):
                row = engine.step([t])[-1]
                t = int(row.argmax())
                if floor is not None and float(row[t].float() - row.float().logsumexp(-1)) < floor:
                    break                             # an unsure draft: verify what there is
                draft.append(t)
                if t == eos_id:
                    break
            engine.rollback(base)
            engine.set_profile(high)
        verify = engine.step([nxt, *draft]).argmax(-1).tolist()   # verify[i]: high's token after draft[:i]
        n = 0
        while n < len(draft) and draft[n] == verify[n]:
            n += 1
        engine.rollback(base + 1 + n)                 # keep nxt and the accepted drafts
        res.drafted, res.accepted, res.rounds = res.drafted + len(draft), res.accepted + n, res.rounds + 1
        nxt = verify[n]
        out, done = _finish(out + draft[:n] + [nxt], max_new_tokens, eos_id)
    res.tokens, res.decode_s = out, time.perf_counter() - t1
    return res


def _eos_id(engine: Engine, eos: bool | int) -> int | None:
    if eos is True:
        return engine.eos_id
    return None if eos is False else int(eos)


def _check(prompt: Sequence[int], max_new_tokens: int) -> None:
    if len(prompt) == 0:
        raise BitswitchError("every prompt needs at least one token")
    if max_new_tokens < 1:
        raise BitswitchError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
