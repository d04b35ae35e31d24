"""One scorer per task: ``bitswitch eval``, the search's ``measure`` and the robustness ``replay`` give
the same floats on the same profile and questions, because all three score through ``evaluate.scorers``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bitswitch as bs
from bitswitch.data.squad import PromptConfig, load_squad
from bitswitch.evaluate.config import EvalConfig
from bitswitch.evaluate.scorers import context_length, score_squad
from bitswitch.evaluate.squad import SquadTask
from bitswitch.evaluate.tasks import WikitextTask
from bitswitch.robust.replay import replay
from bitswitch.search.metrics import measure, prepare

N = 6
MAX_NEW, BATCH = 4, 4


def _squad_file(path: Path, answers: list[list[str]]) -> Path:
    qas = [{"id": f"q{i}", "question": f"What is item {i}?",
            "answers": [{"text": a, "answer_start": 0} for a in golds]} for i, golds in enumerate(answers)]
    data = {"version": "1.1", "data": [{"title": "T", "paragraphs": [
        {"context": "A list of items: " + ", ".join(f"item {i}" for i in range(N)) + ".", "qas": qas}]}]}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def llama():
    model, tok = bs.load_model("tiny-llama", device="cpu")
    bs.make_switchable(model)
    return model, tok


@pytest.fixture
def scored_file(tmp_path, llama):
    """Gold answers made from the model's own fp answers (whole, padded, or missed), so EM and F1 are
    neither all 0 nor all 100 and the means test the summation, not just zeros."""
    model, tok = llama
    path = _squad_file(tmp_path / "probe.json", [[f"item {i}"] for i in range(N)])
    bs.set_profile(model, "fp")
    first = replay(model, tok, load_squad(str(path)), PromptConfig(), "fp", MAX_NEW, BATCH)
    preds = {r["id"]: r["prediction"] for r in first["rows"]}   # rows come in the sampled order
    golds = [[[p, p + " zz", "zz yy " + p, "nothing"][i % 4], "item"]
             for i, p in enumerate(preds[f"q{i}"] for i in range(N))]
    return _squad_file(tmp_path / "dev.json", golds)


@pytest.mark.parametrize("profile", ["fp", "w4a16"])
def test_eval_search_and_replay_score_squad_identically(tmp_path, llama, scored_file, profile):
    model, tok = llama
    bs.set_profile(model, profile)
    task = SquadTask(EvalConfig(model="tiny-llama", task="squad", data=str(scored_file), max_new_tokens=MAX_NEW,
                                batch_size=BATCH))
    task.setup(model, tok)
    via_eval = task.evaluate(model, tok, profile, tmp_path)
    md = prepare(model, tok, "f1", str(scored_file), batch_size=BATCH, max_new_tokens=MAX_NEW)
    via_search = measure(model, tok, md)
    via_replay = replay(model, tok, load_squad(str(scored_file)), PromptConfig(), profile, MAX_NEW, BATCH)
    direct = score_squad(model, tok, md.prompts, md.examples, MAX_NEW, BATCH)

    assert md.prompts == task.prompts                     # same prompts, so the same work
    if profile == "fp":
        assert 0 < direct["em"] < 100 and 0 < direct["f1"] < 100 and direct["em"] < direct["f1"]
    for key in ("em", "f1", "answer_ppl", "n"):           # exact: the same floats, not approximately
        assert via_eval[key] == via_search[key] == via_replay[key] == direct[key], key
    assert via_replay["rows"] == direct["rows"]
    written = [json.loads(line) for line in (tmp_path / f"predictions-{profile}.jsonl").read_text().splitlines()]
    assert [{k: r[k] for k in ("id", "prediction", "em", "f1")} for r in written] == direct["rows"]
    n = direct["n"]
    assert direct["f1"] == 100 * sum(r["f1"] for r in direct["rows"]) / n


def test_answer_ppl_only_measure_scores_the_same_answers(llama, scored_file):
    model, tok = llama
    bs.set_profile(model, "fp")
    md = prepare(model, tok, "answer_ppl", str(scored_file), batch_size=BATCH, max_new_tokens=MAX_NEW)
    teacher = measure(model, tok, md)
    decoded = measure(model, tok, md, "f1")
    assert set(teacher) == {"n", "answer_ppl"} and teacher["n"] == N
    # teacher forcing alone and the first forward of decoding score the same answer tokens
    assert teacher["answer_ppl"] == pytest.approx(decoded["answer_ppl"], rel=1e-4)


def test_eval_and_search_score_text_identically(tmp_path, llama):
    model, tok = llama
    bs.set_profile(model, "w4a16")
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"word{i % 37} and more text {i}" for i in range(300)))
    task = WikitextTask(EvalConfig(model="tiny-llama", task="wikitext", data=str(text), window=64, max_tokens=200))
    task.setup(model, tok)
    via_eval = task.evaluate(model, tok, "w4a16", tmp_path)
    via_search = measure(model, tok, prepare(model, tok, "ppl", str(text), max_tokens=200, window=64))
    assert via_eval["ppl"] == via_search["ppl"] and via_eval["tokens"] == via_search["tokens"]


def test_context_length_falls_back_only_when_asked(llama):
    model, _ = llama
    assert context_length(model) == context_length(model, 2048) > 0

    class Bare:
        config = object()
    assert context_length(Bare()) is None and context_length(Bare(), 2048) == 2048


def test_squad_task_does_not_import_the_task_registry():
    code = "import sys, bitswitch.evaluate.squad; assert 'bitswitch.evaluate.tasks' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")})
