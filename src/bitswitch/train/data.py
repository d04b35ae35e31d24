"""Training data: supervised SQuAD examples (loss on the answer only) or plain-text chunks, and
seeded length-grouped batches with dynamic padding.

The batch of a training step is a pure function of (seed, global batch index), so a resumed run
sees exactly the batches an uninterrupted one would, and each DDP rank takes its own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..data.squad import DEFAULT_TEMPLATE, PromptConfig, encode_answered, load_squad
from ..data.text import load_text
from ..errors import BitswitchError

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]        # IGNORE where no loss is taken (the prompt)

    def __len__(self) -> int:
        return len(self.input_ids)


def squad_examples(tokenizer, source: str, limit: int | None, max_length: int,
                   template: str = DEFAULT_TEMPLATE, offset: int = 0, order: str = "stratified",
                   sample_seed: int = 0) -> tuple[list[Example], int]:
    """Prompt tokens (no loss) + ``" " + first answer`` + EOS (loss), and how many prompts were cut.

    Questions ``offset .. offset + limit`` of ``order`` (as :func:`load_squad` selects them). A
    prompt too long for ``max_length`` (the model's context at most) loses context words, as in
    eval; the answer is always kept whole.
    """
    rows = load_squad(source, split="train", limit=limit, offset=offset, order=order, sample_seed=sample_seed)
    prompts, answers, cut = encode_answered(tokenizer, rows, PromptConfig(template=template), max_length)
    return [Example(tuple(p + a), tuple([IGNORE] * len(p) + a)) for p, a in zip(prompts, answers)], cut


def text_examples(tokenizer, source: str, max_length: int, limit: int | None = None,
                  offset: int = 0) -> list[Example]:
    """Consecutive ``max_length``-token chunks of a text from token ``offset``; every token is a target."""
    ids = tokenizer(load_text(source), return_tensors=None)["input_ids"][offset:]
    chunks = [tuple(ids[i:i + max_length]) for i in range(0, len(ids) - 1, max_length)]
    chunks = [c for c in chunks if len(c) > 1][:limit]
    if not chunks:
        raise BitswitchError(f"text data {source!r} has too few tokens for one training example"
                             + (f" after offset {offset}" if offset else ""))
    return [Example(c, c) for c in chunks]


class LengthGroupedBatches:
    """Seeded batches of similar lengths, at most ``batch_size`` examples and ``max_tokens`` padded tokens.

    Each epoch shuffles the examples, sorts them by length within mega-batches of 32 batches (so
    padding stays small but order stays random), cuts batches, and shuffles the batches.
    """

    def __init__(self, lengths: list[int], batch_size: int, max_tokens: int | None, seed: int):
        self.lengths, self.batch_size, self.max_tokens, self.seed = lengths, batch_size, max_tokens, seed
        self._epochs: list[list[list[int]]] = []

    def _epoch(self, e: int) -> list[list[int]]:
        while len(self._epochs) <= e:
            rng = random.Random(self.seed * 7919 + len(self._epochs))
            order = list(range(len(self.lengths)))
            rng.shuffle(order)
            mega = self.batch_size * 32
            batches = []
            for start in range(0, len(order), mega):
                group = sorted(order[start:start + mega], key=lambda i: -self.lengths[i])
                batch: list[int] = []
                for i in group:
                    longest = max([self.lengths[j] for j in batch] + [self.lengths[i]])
                    too_many = self.max_tokens is not None and longest * (len(batch) + 1) > self.max_tokens
                    if batch and (len(batch) == self.batch_size or too_many):
                        batches.append(batch)
                        batch = []
                    batch.append(i)
                if batch:
                    batches.append(batch)
            rng.shuffle(batches)
            self._epochs.append(batches)
        return self._epochs[e]

    def batch(self, index: int) -> list[int]:
        """Example indices of the ``index``-th batch over all epochs."""
        e = 0
        while index >= len(self._epoch(e)):
            index -= len(self._epoch(e))
            e += 1
        return self._epoch(e)[index]


def collate(examples: list[Example], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels``, each (B, T_max)."""
    width = max(len(ex) for ex in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}
