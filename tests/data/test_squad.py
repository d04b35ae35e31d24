"""SQuAD loading (files, directories, hub fallback, validation) and prompt encoding.

The byte-level tokenizer makes one token per byte, so expected prompt lengths are character counts.
"""

import json
import math
from collections import Counter
from pathlib import Path

import pytest
from tokenizers import processors

from bitswitch.data.squad import (DEFAULT_TEMPLATE, ORDERS, PromptConfig, SquadExample, answer_batches, draw_shots,
                                  encode_prompts, load_squad, render_prompt, stratified_order)
from bitswitch.errors import BitswitchError
from bitswitch.models import byte_tokenizer

SHARED_DEV = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "squad-v1.1" / "dev-part1-v1.1.json"


def qa(qid, question, *answers):
    return {"id": qid, "question": question, "answers": [{"answer_start": 0, "text": a} for a in answers]}


def squad_doc(*articles):
    return {"version": "1.1", "data": list(articles)}


ARTICLE_A = {"title": "A", "paragraphs": [
    {"context": "Paris is the capital of France.", "qas": [qa("a1", "Capital of France?", "Paris", "Paris", "paris")]},
    {"context": "The Seine flows through Paris.", "qas": [qa("a2", "Which river?", "The Seine"),
                                                          qa("a3", "Through which city?", "Paris")]},
]}
ARTICLE_B = {"title": "B", "paragraphs": [
    {"context": "Berlin is in Germany.", "qas": [qa("b1", "Where is Berlin?", "Germany", "in Germany")]},
]}


def write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def example(qid="q", context="one two three four five", question="q?", answers=("five",), title="T"):
    return SquadExample(qid, title, context, question, answers)


# --- loading -------------------------------------------------------------------------------------

def test_load_file_keeps_order_and_all_answers(tmp_path):
    examples = load_squad(str(write(tmp_path / "s.json", squad_doc(ARTICLE_A, ARTICLE_B))), order="file")
    assert [e.id for e in examples] == ["a1", "a2", "a3", "b1"]
    assert examples[0] == SquadExample("a1", "A", "Paris is the capital of France.", "Capital of France?",
                                       ("Paris", "Paris", "paris"))
    assert examples[3].answers == ("Germany", "in Germany")
    assert [e.id for e in load_squad(str(tmp_path / "s.json"), limit=2, order="file")] == ["a1", "a2"]


def test_offset_is_a_held_out_slice_and_skipping_everything_is_an_error(tmp_path):
    path = str(write(tmp_path / "s.json", squad_doc(ARTICLE_A, ARTICLE_B)))
    assert [e.id for e in load_squad(path, offset=1, limit=2, order="file")] == ["a2", "a3"]
    assert [e.id for e in load_squad(path, offset=3, order="file")] == ["b1"]
    for order in ORDERS:
        with pytest.raises(BitswitchError, match="--offset 4 skips every question"):
            load_squad(path, offset=4, order=order)
    with pytest.raises(BitswitchError, match="--offset must be >= 0"):
        load_squad(path, offset=-1)


def test_load_directory_reads_json_files_in_name_order(tmp_path):
    write(tmp_path / "2.json", squad_doc(ARTICLE_A))
    write(tmp_path / "1.json", squad_doc(ARTICLE_B))
    (tmp_path / "notes.txt").write_text("not squad")
    assert [e.id for e in load_squad(str(tmp_path), order="file")] == ["b1", "a1", "a2", "a3"]


# --- question order ------------------------------------------------------------------------------

SIZES = {"Big": 10, "Mid": 5, "One": 1}


def sized_doc(sizes=SIZES):
    """One article per title with ``n`` questions in two paragraphs (ids ``<title>-<i>``)."""
    def paragraphs(title, n):
        half = (n + 1) // 2
        return [{"context": f"{title} context {p}.", "qas": [qa(f"{title}-{i}", f"Q{i}?", "x") for i in ids]}
                for p, ids in enumerate([range(half), range(half, n)]) if ids]
    return squad_doc(*({"title": t, "paragraphs": paragraphs(t, n)} for t, n in sizes.items()))


@pytest.fixture
def sized(tmp_path):
    return str(write(tmp_path / "sized.json", sized_doc()))


def ids(examples):
    return [e.id for e in examples]


def test_file_order_is_the_old_slicing(sized):
    every = ids(load_squad(sized, order="file"))
    assert every == [f"{t}-{i}" for t, n in SIZES.items() for i in range(n)]
    for offset, limit in [(0, 3), (2, 5), (9, None), (15, 4)]:
        end = None if limit is None else offset + limit
        assert ids(load_squad(sized, offset=offset, limit=limit, order="file")) == every[offset:end]


def test_stratified_is_the_default_and_a_permutation(sized):
    stratified = ids(load_squad(sized))
    assert stratified == ids(load_squad(sized, order="stratified", sample_seed=0))
    assert sorted(stratified) == sorted(ids(load_squad(sized, order="file")))
    assert stratified != ids(load_squad(sized, order="file"))


def test_stratified_offset_slices_are_disjoint_and_tile_the_prefix(sized):
    every = ids(load_squad(sized))
    first, second = ids(load_squad(sized, limit=6)), ids(load_squad(sized, offset=6, limit=7))
    assert not set(first) & set(second)
    assert first + second == every[:13]
    assert ids(load_squad(sized, offset=13)) == every[13:]


def test_every_stratified_prefix_is_within_quota(sized):
    every = load_squad(sized, sample_seed=3)
    total = len(every)
    for n in range(1, total + 1):
        counts = Counter(e.title for e in every[:n])
        for title, size in SIZES.items():
            assert math.floor(n * size / total) <= counts[title] <= math.ceil(n * size / total), (n, title)
    # the prefix of 8 is half of every article (rounded): 5 of Big, 2 or 3 of Mid, 0 or 1 of One
    counts = Counter(e.title for e in load_squad(sized, limit=8, sample_seed=3))
    assert counts["Big"] == 5 and counts["Mid"] + counts["One"] == 3


PINNED_SEED0_PREFIX = ["Big-3", "Big-7", "Mid-2", "Big-5", "Big-2", "Mid-1"]


def test_stratified_order_is_seeded(sized):
    assert ids(load_squad(sized, sample_seed=1)) == ids(load_squad(sized, sample_seed=1))
    assert ids(load_squad(sized, sample_seed=1)) != ids(load_squad(sized, sample_seed=2))
    # pinned: the order must not change across runs or Python versions (only random.random() is used)
    assert ids(load_squad(sized, limit=6)) == PINNED_SEED0_PREFIX


def test_unknown_order_and_bad_seed_are_one_line_errors(sized):
    with pytest.raises(BitswitchError, match="squad order 'random' is unknown: use one of stratified, file") as err:
        load_squad(sized, order="random")
    assert "\n" not in str(err.value)
    with pytest.raises(BitswitchError, match="sample seed must be an integer"):
        load_squad(sized, sample_seed="0")


def test_hub_rows_go_through_the_same_selection(monkeypatch, tmp_path):
    import datasets

    doc = sized_doc()
    rows = [{"id": q["id"], "title": a["title"], "context": p["context"], "question": q["question"],
             "answers": {"text": [x["text"] for x in q["answers"]], "answer_start": [0]}}
            for a in doc["data"] for p in a["paragraphs"] for q in p["qas"]]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: rows)
    local = str(write(tmp_path / "same.json", doc))
    for kwargs in [{}, {"limit": 5}, {"offset": 3, "limit": 4, "sample_seed": 7}, {"order": "file", "limit": 3}]:
        assert load_squad("squad", **kwargs) == load_squad(local, **kwargs)


def test_first_200_real_dev_questions_cover_the_articles():
    if not SHARED_DEV.exists():
        pytest.skip(f"{SHARED_DEV} is absent")
    every = load_squad(str(SHARED_DEV), order="file")
    sizes = Counter(e.title for e in every)
    assert len(sizes) == 24 and sizes["Super_Bowl_50"] == 810
    assert {e.title for e in every[:200]} == {"Super_Bowl_50"}  # why file order is a poor sample
    first = load_squad(str(SHARED_DEV), limit=200)
    counts = Counter(e.title for e in first)
    assert len(counts) == 24   # the smallest article (96 questions) expects 3.9 of the 200
    assert counts["Super_Bowl_50"] in (32, 33)   # 810 / 4961 * 200 = 32.7
    for title, size in sizes.items():
        assert math.floor(200 * size / 4961) <= counts[title] <= math.ceil(200 * size / 4961)
    assert stratified_order(every) == load_squad(str(SHARED_DEV))


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("{\"data\": [", "is not valid JSON (line 1"),
    ({"version": "1.1"}, "has no top-level 'data' list"),
    ({"version": "v2.0", "data": [ARTICLE_A]}, "only SQuAD v1.1"),
    (squad_doc(), "holds no questions"),
    (squad_doc({"paragraphs": []}), "article 1 has no 'title'"),
    (squad_doc({"title": "A", "paragraphs": [{"qas": []}]}), "paragraph 1 (article 'A') has no 'context'"),
    (squad_doc(ARTICLE_A, {"title": "B", "paragraphs": [{"context": "c",
                                                          "qas": [qa("b1", "Q?", "x"), qa("b2", "Q?")]}]}),
     "question 'b2' (article 'B', paragraph 1) has no answers"),
    (squad_doc({"title": "A", "paragraphs": [{"context": "c", "qas": [{"id": "x", "answers": [{"text": "c"}]}]}]}),
     "question 'x' (article 'A', paragraph 1) has no 'question' text"),
    (squad_doc({"title": "A", "paragraphs": [{"context": "c", "qas": [{"question": "Q?", "answers": []}]}]}),
     "question 1 (article 'A', paragraph 1) has no 'id'"),
    (squad_doc({"title": "A", "paragraphs": [{"context": "c", "qas": [qa("x", "Q?", "")]}]}),
     "question 'x' (article 'A', paragraph 1) has an answer without 'text'"),
    (squad_doc(ARTICLE_A, ARTICLE_A), "question id 'a1' appears more than once"),
])
def test_malformed_files_raise_one_line_errors_naming_the_record(tmp_path, content, message):
    path = write(tmp_path / "bad.json", content)
    with pytest.raises(BitswitchError) as err:
        load_squad(str(path), limit=1)  # the whole file is validated even when only one question is wanted
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_duplicate_ids_across_directory_files(tmp_path):
    write(tmp_path / "1.json", squad_doc(ARTICLE_A))
    write(tmp_path / "2.json", squad_doc(ARTICLE_A))
    with pytest.raises(BitswitchError, match="appears more than once"):
        load_squad(str(tmp_path))


def test_missing_source_and_empty_directory(tmp_path):
    with pytest.raises(BitswitchError, match="does not exist"):
        load_squad(str(tmp_path / "nope.json"))
    with pytest.raises(BitswitchError, match="no \\*.json files"):
        load_squad(str(tmp_path))
    with pytest.raises(BitswitchError, match="positive"):
        load_squad("squad", limit=0)


def test_hub_failure_says_to_pass_a_local_file(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BitswitchError, match="hub could not be reached.*local SQuAD v1.1 JSON file"):
        load_squad("squad")


def test_hub_rows_are_converted(monkeypatch):
    import datasets

    rows = [{"id": "h1", "title": "T", "context": "ctx", "question": "Q?",
             "answers": {"text": ["a", "b"], "answer_start": [0, 1]}}] * 3
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: rows)
    assert load_squad("squad", split="validation", limit=2) == [SquadExample("h1", "T", "ctx", "Q?", ("a", "b"))] * 2


def test_real_dev_file_loads():
    if not SHARED_DEV.exists():
        pytest.skip(f"{SHARED_DEV} is absent")
    examples = load_squad(str(SHARED_DEV))
    assert len(examples) == 4961
    assert all(len(e.answers) >= 1 for e in examples)
    assert len({e.id for e in examples}) == 4961


# --- prompts ------------------------------------------------------------------------------------

def test_default_prompt():
    ex = example(title="France", context="Paris is the capital.", question="Capital?")
    assert render_prompt(ex, PromptConfig()) == "Context: Paris is the capital.\nQuestion: Capital?\nAnswer:"
    cfg = PromptConfig(template="{title}: {context} | {question} =")
    assert render_prompt(ex, cfg) == "France: Paris is the capital. | Capital? ="


@pytest.mark.parametrize("kwargs, message", [
    ({"template": "Q: {question}"}, "must contain {context}"),
    ({"template": "{context} {context} {question}"}, "must contain {context} once"),
    ({"template": "{context} {question} {answer}"}, "no fields but"),
    ({"template": "{context {question}"}, "not a valid str.format"),
    ({"shots": -1}, ">= 0"),
    ({"shots": 2}, "need at least 2 shot examples"),
    ({"max_length": 0}, "positive"),
])
def test_prompt_config_validation(kwargs, message):
    with pytest.raises(BitswitchError, match=message.replace("{", "\\{").replace("(", "\\(")):
        PromptConfig(**kwargs)


def test_k_shot_prompts_are_seeded_and_shared_by_all_questions():
    source = [example(qid=f"s{i}", context=f"ctx {i}", question=f"q{i}?", answers=(f"ans{i}", "other"))
              for i in range(20)]
    cfg = PromptConfig(shots=3, shot_source=source, seed=7)
    shots = draw_shots(cfg)
    assert shots == draw_shots(PromptConfig(shots=3, shot_source=source, seed=7))
    assert shots != draw_shots(PromptConfig(shots=3, shot_source=source, seed=8))
    target = example(context="C.", question="Q?")
    demos = [f"Context: {s.context}\nQuestion: {s.question}\nAnswer: {s.answers[0]}" for s in shots]
    expected = "\n\n".join([*demos, "Context: C.\nQuestion: Q?\nAnswer:"])
    assert render_prompt(target, cfg, shots) == expected

    tok = byte_tokenizer()
    targets = [example(qid="t1", context="C.", question="Q?"), example(qid="t2", context="D.", question="R?")]
    ids, truncated = encode_prompts(tok, targets, cfg, max_length=10_000)
    assert truncated == 0
    assert tok.decode(ids[0]) == expected
    assert tok.decode(ids[1]).startswith("\n\n".join(demos))


def test_shots_that_are_also_evaluated_are_refused():
    source = [example(qid=f"s{i}") for i in range(3)]
    with pytest.raises(BitswitchError, match="also an evaluated question"):
        encode_prompts(byte_tokenizer(), source, PromptConfig(shots=3, shot_source=source), max_length=1000)


def test_long_context_loses_trailing_words_only():
    tok = byte_tokenizer()
    ex = example(context="one two three four five", question="q?")
    head, tail = "Context: ", "\nQuestion: q?\nAnswer:"
    full = len(head) + len(ex.context) + len(tail)
    ids, truncated = encode_prompts(tok, [ex], PromptConfig(), max_length=full, reserve=0)
    assert truncated == 0 and len(ids[0]) == full
    # "one two three four" needs 48 tokens, "one two three" 43: anything in 43..47 keeps three words
    for limit in (43, 47):
        ids, truncated = encode_prompts(tok, [ex, example(qid="short", context="x")], PromptConfig(),
                                        max_length=limit + 32)
        assert truncated == 1
        assert tok.decode(ids[0]) == head + "one two three" + tail
        assert tok.decode(ids[1]) == head + "x" + tail
    # the config's max_length caps the model's
    ids, _ = encode_prompts(tok, [ex], PromptConfig(max_length=43 + 32), max_length=1000)
    assert tok.decode(ids[0]) == head + "one two three" + tail
    with pytest.raises(BitswitchError, match="even without its context"):
        encode_prompts(tok, [ex], PromptConfig(), max_length=len(head) + len(tail) - 1, reserve=0)
    with pytest.raises(BitswitchError, match="leaves no room"):
        encode_prompts(tok, [ex], PromptConfig(), max_length=32)


def test_answer_batches_mark_the_positions_that_predict_the_answer():
    """ids = prompt + " " + answer + EOS; the mask marks the positions whose next token is the answer's."""
    tok = byte_tokenizer()
    exs = [example(qid="a", answers=("five",)), example(qid="b", question="which?", answers=("one two", "x"))]
    prompts, _ = encode_prompts(tok, exs, PromptConfig(), max_length=1024, reserve=0)
    got = answer_batches(tok, exs, 5)
    assert len(got) == 2
    for (ids, mask), prompt, ex in zip(got, prompts, exs):
        answer = tok(" " + ex.answers[0], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids.shape == mask.shape == (1, len(prompt) + len(answer))
        assert ids[0].tolist() == prompt + answer
        assert ids[0, 1:][mask[0, :-1]].tolist() == answer and not mask[0, -1]
        assert int(mask.sum()) == len(answer)


def test_special_tokens_follow_the_tokenizer_and_chat_templates_carry_their_own():
    tok = byte_tokenizer()
    bos = tok.bos_token_id
    # a Llama-style tokenizer that prepends BOS by default
    tok._tokenizer.post_processor = processors.TemplateProcessing(single=f"{tok.bos_token} $A",
                                                                  special_tokens=[(tok.bos_token, bos)])
    ex = example(context="C.", question="Q?")
    ids, _ = encode_prompts(tok, [ex], PromptConfig(), max_length=1000)
    assert ids[0][0] == bos and ids[0].count(bos) == 1

    with pytest.raises(BitswitchError, match="chat template"):
        encode_prompts(tok, [ex], PromptConfig(chat=True), max_length=1000)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}"
                         "{% if add_generation_prompt %}<bot>{% endif %}")
    text = "<|endoftext|><user>Context: C.\nQuestion: Q?\nAnswer:</user><bot>"
    assert render_prompt(ex, PromptConfig(chat=True), tokenizer=tok) == text
    ids, _ = encode_prompts(tok, [ex], PromptConfig(chat=True), max_length=1000)
    assert ids[0].count(bos) == 1 and tok.decode(ids[0]) == text
    # truncation inside a chat prompt still cuts only the context
    long = example(context="one two three four five", question="Q?")
    limit = len(ids[0]) - len("C.") + len("one two")
    ids, truncated = encode_prompts(tok, [long], PromptConfig(chat=True), max_length=limit, reserve=0)
    assert truncated == 1 and tok.decode(ids[0]) == text.replace("C.", "one two")


def test_default_template_is_documented():
    import bitswitch.data.squad as module

    assert DEFAULT_TEMPLATE == "Context: {context}\nQuestion: {question}\nAnswer:"
    assert "Context: {context}\\nQuestion: {question}\\nAnswer:" in module.__doc__
