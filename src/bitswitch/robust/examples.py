"""Adversarial examples: where an attacker may edit a SQuAD prompt, and the replayable record of an attack.

Editable text: the question, and optionally the context outside every occurrence of a gold answer
(editing the answer span would change the answer itself). Prompts are rendered with the data
module's own template code (``render_prompt``), so the attacked prompt is exactly what evaluation sees.

An :class:`AdvExample` holds the original and adversarial question/context (text), the edits, and
for embedding attacks the positions of the perturbed tokens (the deltas live in a safetensors file
beside the JSONL). Replaying one means evaluating ``adversarial()`` (a ``SquadExample``) at any profile.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..data.squad import PromptConfig, SquadExample, render_prompt
from ..errors import BitswitchError
from ..io import atomic_write_text

_SLOT_Q = "\x00QUESTION\x00"
_SLOT_C = "\x00CONTEXT\x00"


@dataclass
class AdvExample:
    """One attacked question. ``edits`` lists what changed (attack-specific dicts); ``n_edits`` counts
    them in the attack's budget unit (character edits for typo, flipped tokens for hotflip, perturbed
    tokens for embedding attacks)."""

    id: str
    attack: str
    craft: str
    question: str
    context: str
    adv_question: str
    adv_context: str
    budget: int
    edits: list = field(default_factory=list)
    n_edits: int = 0
    loss_clean: float | None = None
    loss_adv: float | None = None
    extra: dict = field(default_factory=dict)

    def adversarial(self, example: SquadExample) -> SquadExample:
        if example.id != self.id:
            raise BitswitchError(f"adversarial example {self.id!r} replayed against question {example.id!r}: "
                                 "replay a file on the data it was crafted on")
        return replace(example, question=self.adv_question, context=self.adv_context)


def answer_spans(context: str, answers) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of every occurrence of every gold answer in ``context``."""
    spans = []
    for ans in {a for a in answers if a}:
        start = context.find(ans)
        while start >= 0:
            spans.append((start, start + len(ans)))
            start = context.find(ans, start + 1)
    return sorted(spans)


@dataclass
class PromptLayout:
    """The prompt text of one example and where its question and context lie in it (character spans)."""

    text: str
    question_span: tuple[int, int]
    context_span: tuple[int, int]
    protected: list[tuple[int, int]]   # absolute spans of gold-answer occurrences in the context


def prompt_layout(example: SquadExample, cfg: PromptConfig, tokenizer=None) -> PromptLayout:
    """Render the prompt with placeholders to find the question and context spans, then fill them."""
    marked = render_prompt(replace(example, question=_SLOT_Q, context=_SLOT_C), cfg, tokenizer=tokenizer)
    if marked.count(_SLOT_Q) != 1 or marked.count(_SLOT_C) != 1:
        raise BitswitchError("attacks need a prompt template with {question} and {context} exactly once each")
    text, spans = "", {}
    for part in re.split(f"({_SLOT_Q}|{_SLOT_C})", marked):
        if part == _SLOT_Q:
            spans["q"] = (len(text), len(text) + len(example.question))
            text += example.question
        elif part == _SLOT_C:
            spans["c"] = (len(text), len(text) + len(example.context))
            text += example.context
        else:
            text += part
    c0 = spans["c"][0]
    protected = [(c0 + s, c0 + e) for s, e in answer_spans(example.context, example.answers)]
    return PromptLayout(text, spans["q"], spans["c"], protected)


# -- JSONL: one header line (attack settings, for resume) then one line per example ----------------

def write_adv_jsonl(path: str | Path, header: dict, examples: list[AdvExample]) -> Path:
    """Write atomically: ``{"kind": "header", ...}`` then one ``AdvExample`` per line."""
    lines = [json.dumps({"kind": "header", **header}, ensure_ascii=False)]
    lines += [json.dumps(asdict(ex), ensure_ascii=False) for ex in examples]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def read_adv_jsonl(path: str | Path) -> tuple[dict, list[AdvExample]]:
    """``(header, examples)`` of a file written by :func:`write_adv_jsonl`."""
    path = Path(path)
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as exc:
        raise BitswitchError(f"adversarial file {path} cannot be read ({exc}): delete it to craft again") from exc
    header = rows[0] if rows and rows[0].get("kind") == "header" else {}
    body = rows[1:] if header else rows
    return header, [AdvExample(**r) for r in body]


# -- token view of a prompt: which tokens an attacker may replace ---------------------------------

_ALPHA = re.compile(r"^ ?[A-Za-z]+$")


@dataclass
class TokenLayout:
    """The prompt's token ids (as ``encode_prompts`` makes them), their character offsets, and the
    editable token positions: inside the question (or the context, outside answer spans)."""

    layout: PromptLayout
    ids: list[int]
    offsets: list[tuple[int, int]]
    editable: list[int]
    first_editable_char: int

    def prefix_len(self) -> int:
        """Tokens that end before the first editable character (their KV cache can be shared)."""
        n = 0
        while n < len(self.ids) and self.offsets[n][1] < self.first_editable_char:
            n += 1
        return n


def token_layout(tokenizer, example: SquadExample, cfg: PromptConfig, context: bool = False,
                 alpha_only: bool = True) -> TokenLayout:
    """Tokenize the prompt with offsets and find the editable tokens.

    A token is editable when its characters lie in the question (or, with ``context``, in the context
    and outside every gold-answer occurrence, with one character of margin) and, with ``alpha_only``,
    it decodes to letters with at most one leading space, and that text is what the prompt holds at
    its offsets (so a replacement token's text can be written back into the question).
    """
    lay = prompt_layout(example, cfg, tokenizer)
    enc = tokenizer(lay.text, add_special_tokens=not cfg.chat, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    spans = [lay.question_span] + ([lay.context_span] if context else [])
    editable = []
    for i, (s, e) in enumerate(offsets):
        # a word token may carry the space before the question's first word (" Which")
        if e <= s or not any((a <= s or (s == a - 1 and lay.text[s] == " ")) and e <= b for a, b in spans):
            continue
        if any(s < pe + 1 and e > ps - 1 for ps, pe in lay.protected):
            continue
        if alpha_only:
            dec = tokenizer.decode([ids[i]], clean_up_tokenization_spaces=False)
            if not _ALPHA.match(dec) or dec.lstrip(" ") != lay.text[s:e].lstrip(" "):
                continue
        editable.append(i)
    first = min(a for a, _ in spans)
    return TokenLayout(lay, ids, offsets, editable, first)
