"""Greedy decoding loop and teacher-forced answer NLL on tiny seeded models (fp32, CPU).

Random tiny models rarely emit a newline or EOS, so ``steered`` copies two often-predicted rows of
an untied Llama's LM head into the newline and EOS rows (scaled up): rows then stop at different steps.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from bitswitch.evaluate.generate import answer_nll, generate_and_score, greedy_generate
from bitswitch.models import byte_tokenizer

TOK = byte_tokenizer()
EOS = TOK.eos_token_id
NEWLINE = TOK("\n")["input_ids"][0]
MAX_NEW = 20


def build(kind: str):
    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=257, n_positions=256, n_embd=64, n_layer=2, n_head=4,
                         bos_token_id=EOS, eos_token_id=EOS)
    else:
        cfg = LlamaConfig(vocab_size=257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    if kind == "steered":
        with torch.no_grad():
            model.lm_head.weight[NEWLINE] = 1.5 * model.lm_head.weight[69]
            model.lm_head.weight[EOS] = 1.2 * model.lm_head.weight[38]
    return model


MODELS = {kind: build(kind) for kind in ("gpt2", "llama", "steered")}
PROMPTS = [TOK(f"Context: {'word ' * (3 * i)}\nQuestion: q{i}?\nAnswer:")["input_ids"] for i in range(11)]


def reference(model, prompt: list[int]) -> tuple[list[int], str]:
    """``model.generate`` greedy tokens for one unpadded prompt, and the text cut at its first line break."""
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=MAX_NEW, pad_token_id=EOS)
    tokens = out[0, len(prompt):].tolist()
    return tokens, TOK.decode(tokens, skip_special_tokens=True).lstrip().split("\n")[0].strip()


def test_steered_model_stops_rows_at_different_steps():
    stops = [reference(MODELS["steered"], p)[0] for p in PROMPTS]
    assert any(EOS in t for t in stops) and any(NEWLINE in t for t in stops)
    assert any(EOS not in t and NEWLINE not in t for t in stops)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("stop_at_newline", [True, False])
def test_batching_and_left_padding_do_not_change_predictions(kind, stop_at_newline):
    # batch_size=1 runs every prompt alone; larger batches left-pad the shorter ones
    alone = greedy_generate(MODELS[kind], TOK, PROMPTS, MAX_NEW, batch_size=1, stop_at_newline=stop_at_newline)
    for batch_size in (3, 8):
        assert greedy_generate(MODELS[kind], TOK, PROMPTS, MAX_NEW, batch_size=batch_size,
                               stop_at_newline=stop_at_newline) == alone
    # the shortest prompt padded next to the longest one
    pair = greedy_generate(MODELS[kind], TOK, [PROMPTS[-1], PROMPTS[0]], MAX_NEW, stop_at_newline=stop_at_newline)
    assert pair == [alone[-1], alone[0]]
    assert len(set(alone)) > 1


@pytest.mark.parametrize("kind", MODELS)
def test_matches_model_generate(kind):
    ours = greedy_generate(MODELS[kind], TOK, PROMPTS, MAX_NEW, batch_size=4)
    assert ours == [reference(MODELS[kind], p)[1] for p in PROMPTS]


def test_one_forward_call_per_step_and_early_stop():
    model = MODELS["steered"]
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        for prompt in PROMPTS:
            tokens, _ = reference(model, prompt)  # model.generate's calls are cleared below
            calls.clear()
            greedy_generate(model, TOK, [prompt], MAX_NEW, batch_size=1)
            stop = [i for i, t in enumerate(tokens) if t == EOS or (t == NEWLINE and TOK.decode(tokens[:i]).strip())]
            assert len(calls) == (stop[0] + 1 if stop else MAX_NEW)
    finally:
        hook.remove()


def test_progress_counts_questions_and_empty_prompts_are_refused():
    class Counter:
        n = 0

        def update(self, k):
            self.n += k

    progress = Counter()
    greedy_generate(MODELS["gpt2"], TOK, PROMPTS, 4, batch_size=4, progress=progress)
    assert progress.n == len(PROMPTS)
    with pytest.raises(ValueError, match="at least one token"):
        greedy_generate(MODELS["gpt2"], TOK, [PROMPTS[0], []])


ANSWERS = ["Denver Broncos", "x", "Santa Clara, California", "7", "the golden anniversary", "Levi's",
           "50", "Broncos", "February 7, 2016", "a", "Super Bowl L"]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_answer_nll_batched_equals_one_at_a_time(kind):
    model = MODELS[kind]
    total, count = answer_nll(model, TOK, PROMPTS, ANSWERS, batch_size=4)
    singles = [answer_nll(model, TOK, [p], [a], batch_size=1) for p, a in zip(PROMPTS, ANSWERS)]
    assert count == sum(n for _, n in singles) == sum(len(" " + a) for a in ANSWERS)  # one token per byte
    assert total == pytest.approx(sum(t for t, _ in singles), rel=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_answer_nll_by_hand(kind):
    model, prompt, answer = MODELS[kind], PROMPTS[2], "Denver Broncos"
    target = TOK(" " + answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + target])
    with torch.no_grad():
        logprobs = model(ids).logits[0].log_softmax(-1)  # (L, V); row t predicts token t + 1
    expected = -sum(logprobs[len(prompt) + j - 1, token].item() for j, token in enumerate(target))
    total, count = answer_nll(model, TOK, [prompt], [answer])
    assert count == len(target)
    assert total == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("batch_size", [1, 4])
def test_generate_and_score_is_generate_then_answer_nll(kind, batch_size):
    # one prefill of prompt + answer, cache cropped back to the prompt: same texts, same likelihood
    model = MODELS[kind]
    texts, total, count = generate_and_score(model, TOK, PROMPTS, ANSWERS, MAX_NEW, batch_size)
    assert texts == greedy_generate(model, TOK, PROMPTS, MAX_NEW, batch_size)
    expected_total, expected_count = answer_nll(model, TOK, PROMPTS, ANSWERS, batch_size)
    assert count == expected_count and total == pytest.approx(expected_total, rel=1e-5)
    with pytest.raises(ValueError, match="answers"):
        generate_and_score(model, TOK, PROMPTS, ANSWERS[:-1])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_and_score(model, TOK, PROMPTS, ANSWERS, max_new_tokens=0)
