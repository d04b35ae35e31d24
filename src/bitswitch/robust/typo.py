"""Typo attack: character swaps, insertions, deletions and keyboard-neighbour substitutions.

Greedy on the answer loss: each step draws ``candidates`` random single-character edits (seeded),
scores all of them in one batched forward, and applies the one that raises the loss most (stopping
when none raises it). One edit costs one unit of the ``budget`` (a swap of two neighbouring letters
counts as one edit), so at most ``budget`` edits are ever made. Only letters of the question (and,
with ``context``, of the context outside every gold-answer occurrence, with one character of margin)
are edited, so the answer stays in the text.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import replace

from ..data.squad import PromptConfig, SquadExample, encode_prompts
from ..evaluate.generate import answer_token_ids
from .examples import AdvExample, answer_spans, token_layout
from .loss import AnswerScorer

OPS = ("swap", "insert", "delete", "keyboard")
_ROWS = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


def _neighbours() -> dict[str, str]:
    """QWERTY neighbours of each lowercase letter (same row left/right, rows above/below)."""
    pos = {ch: (r, c) for r, row in enumerate(_ROWS) for c, ch in enumerate(row)}
    out = {}
    for ch, (r, c) in pos.items():
        out[ch] = "".join(o for o, (r2, c2) in pos.items() if o != ch and abs(r2 - r) <= 1 and abs(c2 - c) <= 1)
    return out


NEIGHBOURS = _neighbours()


def editable_positions(text: str, protected=()) -> list[int]:
    """Indices of letters in ``text`` outside the ``protected`` spans (with one character of margin)."""
    return [i for i, ch in enumerate(text) if ch.isascii() and ch.isalpha()
            and not any(s - 1 <= i <= e for s, e in protected)]


def apply_edit(text: str, op: str, i: int, ch: str = "") -> str:
    """One character edit at index ``i``: swap i/i+1, insert ``ch`` after i, delete i, substitute ``ch``."""
    if op == "swap":
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    if op == "insert":
        return text[:i + 1] + ch + text[i + 1:]
    if op == "delete":
        return text[:i] + text[i + 1:]
    if op == "keyboard":
        return text[:i] + ch + text[i + 1:]
    raise ValueError(f"unknown edit {op!r}")


def _random_edit(rng: random.Random, text: str, positions: list[int]):
    """A random valid edit ``(op, i, ch)`` of ``text`` at one of ``positions``, or None."""
    for _ in range(20):
        i = rng.choice(positions)
        op = rng.choice(OPS)
        if op == "swap":
            if i + 1 < len(text) and text[i + 1].isalpha() and text[i + 1] != text[i] and i + 1 in positions:
                return op, i, ""
        elif op == "insert":
            return op, i, rng.choice(NEIGHBOURS.get(text[i].lower(), "e"))
        elif op == "delete":
            # keep words of one letter: deleting them would delete a word, not make a typo
            if (i > 0 and text[i - 1].isalpha()) or (i + 1 < len(text) and text[i + 1].isalpha()):
                return op, i, ""
        else:
            ch = rng.choice(NEIGHBOURS.get(text[i].lower(), "e"))
            return op, i, ch.upper() if text[i].isupper() else ch
    return None


def typo(model, tokenizer, example: SquadExample, cfg: PromptConfig, sampler, budget: int = 4,
         candidates: int = 12, context: bool = False, seed: int = 0, max_length: int = 2048,
         craft: str = "") -> AdvExample:
    """Attack one question; returns the replayable :class:`AdvExample` (never more than ``budget`` edits)."""
    rng = random.Random(seed * 1_000_003 + zlib.crc32(example.id.encode()))
    tl = token_layout(tokenizer, example, cfg, context=context, alpha_only=False)
    answer = answer_token_ids(tokenizer, example.answers[0])
    scorer = AnswerScorer(model, tokenizer, sampler, tl.ids, answer, tl.prefix_len())

    def encode(ex: SquadExample) -> list[int]:
        return encode_prompts(tokenizer, [ex], cfg, max_length, reserve=0)[0][0]

    cur = example
    loss_clean = float(scorer.losses([encode(cur)])[0])
    cur_loss, edits = loss_clean, []
    for _ in range(budget):
        fields = {"question": editable_positions(cur.question)}
        if context:
            fields["context"] = editable_positions(cur.context, answer_spans(cur.context, cur.answers))
        fields = {k: v for k, v in fields.items() if v}
        if not fields:
            break
        trials, what = [], []
        for _ in range(candidates):
            field = rng.choice(sorted(fields))
            text = getattr(cur, field)
            edit = _random_edit(rng, text, fields[field])
            if edit is None:
                continue
            trials.append(replace(cur, **{field: apply_edit(text, *edit)}))
            what.append({"field": field, "op": edit[0], "index": edit[1], "char": edit[2]})
        if not trials:
            break
        draws = sampler.sample()
        losses = scorer.losses([encode(cur)] + [encode(t) for t in trials], draws)
        best = int(losses[1:].argmax())
        if losses[1 + best] <= losses[0]:
            break
        cur, cur_loss = trials[best], float(losses[1 + best])
        edits.append(what[best])
    return AdvExample(example.id, "typo", craft, example.question, example.context, cur.question, cur.context,
                      budget, edits, len(edits), loss_clean, cur_loss, {"forwards": scorer.calls})
