"""A tiny SQuAD-format file for the search tests (written per test into tmp_path)."""

from __future__ import annotations

import json
import random

import pytest


@pytest.fixture
def tiny_squad(tmp_path):
    """8 questions over 4 short paragraphs, official SQuAD v1.1 layout."""
    rng = random.Random(0)
    words = "the cat sat on a mat while the dog ran to the park with a red ball and blue hat".split()
    articles, qid = [], 0
    for a in range(2):
        paragraphs = []
        for _ in range(2):
            context = " ".join(rng.choice(words) for _ in range(16))
            qas = []
            for q in range(2):
                qas.append({"id": f"q{qid}", "question": f"Which word is number {q}?",
                            "answers": [{"text": context.split()[q], "answer_start": 0}]})
                qid += 1
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"T{a}", "paragraphs": paragraphs})
    path = tmp_path / "tiny-squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": articles}))
    return str(path)
