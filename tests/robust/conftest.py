"""A tiny SQuAD-format file for the robustness tests (short contexts: the tiny models see 256 tokens)."""

import json

import pytest

CONTEXT = "The cat sat on the mat in Paris. Bob owns a red car and a blue house near the river."
QUESTIONS = [("q0", "Where did the cat sit?", "the mat"), ("q1", "What colour is Bob's car?", "red"),
             ("q2", "Where is the house?", "near the river"), ("q3", "Who owns a car?", "Bob")]


@pytest.fixture
def squad_file(tmp_path):
    qas = [{"id": i, "question": q, "answers": [{"text": a, "answer_start": CONTEXT.find(a)}]} for i, q, a in QUESTIONS]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": CONTEXT, "qas": qas}]}]}))
    return path
