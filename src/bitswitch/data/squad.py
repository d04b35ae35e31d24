"""SQuAD v1.1: load questions, render them as prompts and encode them for a causal LM.

Sources: an official SQuAD v1.1 JSON file (``{"version": "1.1", "data": [articles]}``, each article
``{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers": [{"text", ...}]}]}]}``),
a directory of such ``*.json`` files (read in name order), or the hub name ``squad``
(``datasets.load_dataset("squad")``, needs network).

Question order: :func:`load_squad` slices ``offset .. offset + limit`` out of either the file order
(``order="file"``) or, by default, a seeded order stratified over articles (``order="stratified"``,
see :func:`stratified_order`), in which every prefix is a proportional sample of the articles and
disjoint ``offset`` slices stay disjoint.

Prompts are ``str.format`` templates with the fields ``{context}`` (exactly once), ``{question}`` and
optionally ``{title}``. The default is::

    DEFAULT_TEMPLATE = "Context: {context}\\nQuestion: {question}\\nAnswer:"

k-shot prompts put k solved examples (template + " " + first gold answer) before the question,
separated by blank lines. The k examples are drawn once per :func:`encode_prompts` call with
``random.Random(seed)``, so every question sees the same shots and runs are reproducible.
With ``chat=True`` the whole text becomes one user message of the tokenizer's chat template.
Prompts too long for the model lose words from the end of the question's context, never anything else.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import json
import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..errors import BitswitchError

DEFAULT_TEMPLATE = "Context: {context}\nQuestion: {question}\nAnswer:"
HUB_NAMES = ("squad", "rajpurkar/squad")
ORDERS = ("stratified", "file")
TEMPLATE_FIELDS = {"context", "question", "title"}
FORMAT_HINT = ('expected the official SQuAD v1.1 format {"version": "1.1", "data": [{"title", "paragraphs": '
               '[{"context", "qas": [{"id", "question", "answers": [{"text"}]}]}]}]}')
_SLOT = "\x00CONTEXT\x00"  # stands in for the context while rendering, so the text can be split around it


@dataclass(frozen=True)
class SquadExample:
    """One question with its paragraph; ``answers`` holds every gold answer text in file order."""

    id: str
    title: str
    context: str
    question: str
    answers: tuple[str, ...]


def load_squad(source: str, split: str = "validation", limit: int | None = None, offset: int = 0,
               order: str = "stratified", sample_seed: int = 0) -> list[SquadExample]:
    """Load SQuAD v1.1 questions ``offset .. offset + limit`` of ``order`` (held-out slices).

    ``source``: a JSON file, a directory of ``*.json`` files, or ``squad`` for the hub (``split``
    only applies to the hub; a local file is its own split). ``order`` (one of :data:`ORDERS`):
    ``"stratified"`` slices :func:`stratified_order` ``(examples, sample_seed)``, so any prefix is a
    proportional sample over articles and disjoint ``offset`` slices never share a question;
    ``"file"`` slices the file order. Everything is validated before anything is returned; a bad
    file raises :class:`BitswitchError` naming the first bad record.
    """
    if order not in ORDERS:
        raise BitswitchError(f"squad order {order!r} is unknown: use one of {', '.join(ORDERS)}")
    if not isinstance(sample_seed, int) or isinstance(sample_seed, bool):
        raise BitswitchError(f"squad sample seed must be an integer, got {sample_seed!r}")
    if limit is not None and limit < 1:
        raise BitswitchError(f"squad limit must be a positive number of questions, got {limit}")
    if offset < 0:
        raise BitswitchError(f"--offset must be >= 0 questions, got {offset}")
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise BitswitchError(f"squad directory {path} holds no *.json files: pass a SQuAD v1.1 JSON file or "
                                 "a directory of them")
        seen: dict[str, Path] = {}
        examples = [ex for file in files for ex in _read_file(file, seen)]
    elif path.is_file():
        examples = _read_file(path, {})
    elif source in HUB_NAMES:
        examples = _load_hub(source, split)
    else:
        raise BitswitchError(f"squad source {source!r} does not exist: pass a SQuAD v1.1 JSON file, a directory "
                             "of them, or 'squad' for the Hugging Face hub")
    if offset and offset >= len(examples):
        raise BitswitchError(f"--offset {offset} skips every question of {source!r} ({len(examples)}): lower it")
    if order == "stratified":
        examples = stratified_order(examples, sample_seed)
    return examples[offset:None if limit is None else offset + limit]


def stratified_order(examples: Sequence[SquadExample], seed: int = 0) -> list[SquadExample]:
    """All of ``examples`` in a seeded order in which every prefix is a proportional sample of articles.

    An article is a ``title`` (articles are numbered in order of first appearance; questions of one
    title in several files count as one article). With ``rng = random.Random(seed)`` (only
    ``rng.random()`` is used, whose sequence Python keeps the same across versions):

    1. each question draws ``rng.random()``, in input order; an article's questions are taken in
       increasing draw (a seeded shuffle);
    2. then each article ``a`` draws a tie-break rank ``rng.random()``, in article order;
    3. positions ``N = 1 .. total`` are filled one at a time (Balinski and Young's quota method):
       with ``c_a`` questions of article ``a`` (``n_a`` questions) already placed, the candidates are
       the articles with ``c_a < n_a`` and ``c_a * total < N * n_a`` (one more stays within the upper
       quota ``ceil(N * n_a / total)``); position ``N`` gets the next question of the candidate with
       the smallest ``(c_a + 1) / n_a`` (exact fractions), ties going to the smaller rank.

    So the first ``N`` questions hold ``floor(N * n_a / total)`` or ``ceil(N * n_a / total)``
    questions of every article ``a``, for every ``N``.
    """
    rng = random.Random(seed)
    draws = [rng.random() for _ in examples]
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.title, []).append(i)
    articles = [[examples[i] for i in sorted(idx, key=lambda i: draws[i])] for idx in groups.values()]
    rank = [rng.random() for _ in articles]
    total = len(examples)
    taken = [0] * len(articles)
    ready = [(Fraction(1, len(qs)), rank[a], a) for a, qs in enumerate(articles)]
    heapq.heapify(ready)
    waiting: list[tuple[int, int]] = []   # (first position at which article a is a candidate again, a)
    out: list[SquadExample] = []
    for n in range(1, total + 1):
        while waiting and waiting[0][0] <= n:
            _, a = heapq.heappop(waiting)
            heapq.heappush(ready, (Fraction(taken[a] + 1, len(articles[a])), rank[a], a))
        while True:
            if not ready:  # the quota method always has a candidate (Balinski and Young, 1975)
                raise AssertionError(f"stratified_order found no candidate for position {n}")
            _, _, a = heapq.heappop(ready)
            size = len(articles[a])
            if taken[a] * total < n * size:
                break
            heapq.heappush(waiting, (taken[a] * total // size + 1, a))
        out.append(articles[a][taken[a]])
        taken[a] += 1
        if taken[a] < size:
            heapq.heappush(ready, (Fraction(taken[a] + 1, size), rank[a], a))
    return out


def _read_file(path: Path, seen: dict[str, Path]) -> list[SquadExample]:
    """Parse one official-format file; ``seen`` maps question ids to their file, to catch duplicates."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BitswitchError(f"squad file {path} cannot be read ({exc}): pass a UTF-8 SQuAD v1.1 JSON file") from exc
    if not text.strip():
        raise BitswitchError(f"squad file {path} is empty: {FORMAT_HINT}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BitswitchError(f"squad file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                             f"{exc.msg}): {FORMAT_HINT}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise BitswitchError(f"squad file {path} has no top-level 'data' list: {FORMAT_HINT}")
    version = str(doc.get("version", "1.1")).lstrip("v")
    if not version.startswith("1."):
        raise BitswitchError(f"squad file {path} is SQuAD version {version}, which has unanswerable questions: "
                             "only SQuAD v1.1 is supported")
    examples = [ex for a_index, article in enumerate(doc["data"], 1) for ex in _article(path, a_index, article)]
    if not examples:
        raise BitswitchError(f"squad file {path} holds no questions: {FORMAT_HINT}")
    for ex in examples:
        if ex.id in seen:
            raise BitswitchError(f"squad file {path}: question id {ex.id!r} appears more than once "
                                 f"(first in {seen[ex.id]}): question ids must be unique")
        seen[ex.id] = path
    return examples


def _article(path: Path, a_index: int, article) -> list[SquadExample]:
    """The questions of one article, checked field by field (``a_index`` is 1-based, for messages)."""
    def bad(where: str, what: str) -> BitswitchError:
        return BitswitchError(f"squad file {path}: {where} {what}")

    title = article.get("title") if isinstance(article, dict) else None
    where = f"article {title!r}" if isinstance(title, str) else f"article {a_index}"
    if not isinstance(title, str):
        raise bad(where, "has no 'title' string")
    if not isinstance(article.get("paragraphs"), list):
        raise bad(where, "has no 'paragraphs' list")
    examples = []
    for p_index, paragraph in enumerate(article["paragraphs"], 1):
        p_where = f"paragraph {p_index} ({where})"
        if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
            raise bad(p_where, "has no 'qas' list")
        context = paragraph.get("context")
        if not isinstance(context, str) or not context.strip():
            raise bad(p_where, "has no 'context' text")
        for q_index, qa in enumerate(paragraph["qas"], 1):
            qid = qa.get("id") if isinstance(qa, dict) else None
            label = repr(qid) if isinstance(qid, str) and qid else str(q_index)
            q_where = f"question {label} ({where}, paragraph {p_index})"
            if not isinstance(qid, str) or not qid:
                raise bad(q_where, "has no 'id' string")
            if not isinstance(qa.get("question"), str) or not qa["question"].strip():
                raise bad(q_where, "has no 'question' text")
            answers = qa.get("answers")
            if not isinstance(answers, list) or not answers:
                raise bad(q_where, "has no answers")
            if not all(isinstance(a, dict) and isinstance(a.get("text"), str) and a["text"].strip() for a in answers):
                raise bad(q_where, "has an answer without 'text'")
            examples.append(SquadExample(qid, title, context, qa["question"], tuple(a["text"] for a in answers)))
    return examples


def _load_hub(name: str, split: str) -> list[SquadExample]:
    from datasets import load_dataset

    from ..hub import hub_reachable

    hub_reachable()  # offline: read the datasets cache only, fail fast

    try:
        rows = load_dataset(name, split=split)
    except Exception as exc:  # offline, missing split, hub error: all mean "use a local file"
        raise BitswitchError(f"could not load {name!r} split {split!r} from the Hugging Face hub "
                             f"({type(exc).__name__}: {str(exc)[:200]}): the hub could not be reached; pass a local "
                             "SQuAD v1.1 JSON file instead, e.g. ../shared/data/squad-v1.1/dev-part1-v1.1.json"
                             ) from exc
    return [SquadExample(r["id"], r["title"], r["context"], r["question"], tuple(r["answers"]["text"]))
            for r in rows]


@dataclass
class PromptConfig:
    """How questions become prompts; see the module docstring.

    ``max_length`` optionally caps the total tokens (prompt + generated) below the model's own limit.
    """

    template: str = DEFAULT_TEMPLATE
    shots: int = 0
    shot_source: list[SquadExample] | None = None
    seed: int = 0
    chat: bool = False
    max_length: int | None = None

    def __post_init__(self):
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None]
        except ValueError as exc:
            raise BitswitchError(f"prompt template {self.template!r} is not a valid str.format template ({exc}): "
                                 "write literal braces as {{ and }}") from exc
        unknown = sorted(set(fields) - TEMPLATE_FIELDS)
        if unknown or fields.count("context") != 1 or "question" not in fields:
            raise BitswitchError(f"prompt template {self.template!r} must contain {{context}} once and {{question}}, "
                                 f"and no fields but context, question, title (found {fields})")
        if self.shots < 0:
            raise BitswitchError(f"shots must be >= 0, got {self.shots}")
        if self.shots > len(self.shot_source or []):
            raise BitswitchError(f"{self.shots}-shot prompts need at least {self.shots} shot examples, got "
                                 f"{len(self.shot_source or [])}: pass shot_source (e.g. the SQuAD train set)")
        if self.max_length is not None and self.max_length < 1:
            raise BitswitchError(f"prompt max_length must be a positive number of tokens, got {self.max_length}")


def draw_shots(cfg: PromptConfig) -> list[SquadExample]:
    """The ``cfg.shots`` solved examples, drawn from ``cfg.shot_source`` with ``random.Random(cfg.seed)``."""
    return random.Random(cfg.seed).sample(cfg.shot_source, cfg.shots) if cfg.shots else []


def render_prompt(example: SquadExample, cfg: PromptConfig, shots: Sequence[SquadExample] = (),
                  tokenizer=None) -> str:
    """The full prompt text for ``example`` (``tokenizer`` is only needed when ``cfg.chat``)."""
    head, tail = _prompt_parts(example, cfg, shots, tokenizer)
    return head + example.context + tail


def _prompt_parts(example: SquadExample, cfg: PromptConfig, shots, tokenizer) -> tuple[str, str]:
    """The prompt text before and after the question's context."""
    demos = [cfg.template.format(context=s.context, question=s.question, title=s.title) + " " + s.answers[0]
             for s in shots]
    user = cfg.template.format(context=_SLOT, question=example.question, title=example.title)
    text = "\n\n".join([*demos, user])
    if cfg.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise BitswitchError(f"chat prompts need a tokenizer with a chat template and "
                                 f"{getattr(tokenizer, 'name_or_path', tokenizer)!r} has none: turn chat off or use "
                                 "an instruct model")
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
    head, tail = text.split(_SLOT)
    return head, tail


def encode_prompts(tokenizer, examples: list[SquadExample], cfg: PromptConfig, max_length: int,
                   reserve: int = 32) -> tuple[list[list[int]], int]:
    """Token ids of each example's prompt, and how many prompts had their context cut.

    ``max_length`` is the model's context window (``cfg.max_length`` may lower it); ``reserve`` tokens
    are kept free for the answer. A longer prompt keeps as many leading context words as fit. Plain
    prompts use the tokenizer's default special tokens (e.g. Llama's BOS); rendered chat templates
    already contain them, so they are tokenized without.
    """
    limit = min(max_length, cfg.max_length or max_length) - reserve
    if limit < 1:
        raise BitswitchError(f"max_length {min(max_length, cfg.max_length or max_length)} leaves no room for a "
                             f"prompt after reserving {reserve} tokens for the answer: raise max_length")
    shots = draw_shots(cfg)
    evaluated = {ex.id for ex in examples}
    leaked = [s.id for s in shots if s.id in evaluated]
    if leaked:
        raise BitswitchError(f"shot example {leaked[0]!r} is also an evaluated question: draw shots from another "
                             "split (e.g. the SQuAD train set)")

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=not cfg.chat)["input_ids"]

    encoded, truncated = [], 0
    for ex in examples:
        head, tail = _prompt_parts(ex, cfg, shots, tokenizer)
        ids = encode(head + ex.context + tail)
        if len(ids) > limit:
            ids = _cut_context(encode, head, ex, tail, limit)
            truncated += 1
        encoded.append(ids)
    return encoded, truncated


def _kept_words(encode, head: str, example: SquadExample, tail: str, limit: int) -> int:
    """How many leading context words fit in a prompt of ``limit`` tokens.

    Tokenizing the whole text (rather than pieces) keeps the tokens at the seams as the model would
    see them; the word count is binary-searched since prompt length grows with it.
    """
    word_ends = [m.end() for m in re.finditer(r"\S+", example.context)]

    def length(words: int) -> int:
        return len(encode(head + example.context[:word_ends[words - 1] if words else 0] + tail))

    bare = length(0)
    if bare > limit:
        raise BitswitchError(f"the prompt for question {example.id!r} is {bare} tokens even without its "
                             f"context, more than the {limit} allowed: use fewer shots, a shorter template or a "
                             "larger max_length")
    # fits(k) is True for small k, False from some k on: the count of k in 1..n that fit is the answer
    return bisect.bisect_left(range(1, len(word_ends) + 1), True, key=lambda k: length(k) > limit)


def _context_words(example: SquadExample, words: int) -> str:
    ends = [m.end() for m in re.finditer(r"\S+", example.context)]
    return example.context[:ends[words - 1] if words else 0]


def _cut_context(encode, head: str, example: SquadExample, tail: str, limit: int) -> list[int]:
    """Ids of the prompt keeping the most leading context words that fit in ``limit`` tokens."""
    return encode(head + _context_words(example, _kept_words(encode, head, example, tail, limit)) + tail)


def fit_contexts(tokenizer, examples: list[SquadExample], cfg: PromptConfig, max_length: int,
                 reserve: int = 32) -> tuple[list[SquadExample], int]:
    """The examples with each context cut as :func:`encode_prompts` cuts it (so their whole prompt,
    tokenized as a text, fits ``max_length - reserve``), and how many were cut. For code that edits
    prompt text (attacks) and so needs the example, not only its ids."""
    limit = min(max_length, cfg.max_length or max_length) - reserve
    shots = draw_shots(cfg)

    def encode(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=not cfg.chat)["input_ids"]

    out, cut = [], 0
    for ex in examples:
        head, tail = _prompt_parts(ex, cfg, shots, tokenizer)
        if len(encode(head + ex.context + tail)) > limit:
            ex = dataclasses.replace(ex, context=_context_words(ex, _kept_words(encode, head, ex, tail, limit)))
            cut += 1
        out.append(ex)
    return out, cut


def calibration_batches(tokenizer, examples: list[SquadExample], n: int, template: str = DEFAULT_TEMPLATE,
                        chat: bool = False, max_length: int = 1024) -> list:
    """The prompts of the first ``n`` examples as (1, T) id tensors: inputs for static activation
    observers (``bitswitch.calibrate``); draw them from training data, never the evaluated questions."""
    import torch

    ids, _ = encode_prompts(tokenizer, examples[:n], PromptConfig(template=template, chat=chat), max_length,
                            reserve=0)
    return [torch.tensor([seq]) for seq in ids]


def encode_answered(tokenizer, examples: list[SquadExample], cfg: PromptConfig, max_length: int
                    ) -> tuple[list[list[int]], list[list[int]], int]:
    """Each example's prompt ids, its ``" " + first answer`` + EOS ids, and how many prompts were cut:
    a prompt too long for ``max_length`` loses context words, the answer is always kept whole."""
    end = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]   # the generator stops on EOS
    answers = [tokenizer(" " + ex.answers[0], add_special_tokens=False)["input_ids"] + end for ex in examples]
    reserve = max((len(a) for a in answers), default=0)
    prompts, cut = encode_prompts(tokenizer, examples, cfg, max_length, reserve=reserve)
    return prompts, answers, cut


def answer_batches(tokenizer, examples: list[SquadExample], n: int, template: str = DEFAULT_TEMPLATE,
                   chat: bool = False, max_length: int = 1024) -> list:
    """The first ``n`` examples as prompt + ``" " + first answer`` + EOS: ``(ids, mask)`` pairs of (1, T)
    tensors, ``mask`` True at the positions whose next token is an answer token (the last prompt
    token up to the answer's second-to-last token). For objectives that should weigh what a model
    says, not how it reads the prompt; draw them from training data, never the evaluated questions."""
    import torch

    prompts, answers, _ = encode_answered(tokenizer, examples[:n], PromptConfig(template=template, chat=chat),
                                          max_length)
    out = []
    for p, a in zip(prompts, answers):
        mask = torch.zeros(1, len(p) + len(a), dtype=torch.bool)
        mask[0, len(p) - 1:len(p) + len(a) - 1] = True
        out.append((torch.tensor([p + a]), mask))
    return out
