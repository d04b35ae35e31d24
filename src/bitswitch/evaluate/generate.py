"""Batched greedy decoding and teacher-forced answer likelihood for extractive QA.

Decoding is an explicit loop with one ``model(...)`` call per generated token (no
``model.generate``), so callers can change the model between steps, e.g. switch precision.
Batches are left-padded: every row's last prompt token sits in the last column, so each step
appends one column and reads one logit row. ``position_ids`` come from the attention mask, so a
padded prompt sees the same positions as it would alone.

Both functions take prompts as token-id lists (see :func:`bitswitch.data.squad.encode_prompts`),
sort them by length so batches pad little, and run under ``torch.inference_mode`` on the model's device.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from ..models import context_length


def greedy_generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 32, batch_size: int = 8,
                    stop_at_newline: bool = True, progress=None) -> list[str]:
    """Greedy continuations of ``prompts``, returned in the input order.

    A row stops at an EOS token (the tokenizer's or the model's generation config's) or, with
    ``stop_at_newline``, once its text has a line break after some non-blank text; the batch stops
    when every row has. Returned texts are stripped and, with ``stop_at_newline``, cut at that line
    break. ``progress`` (e.g. a ``tqdm``) is advanced by the number of prompts finished.
    """
    return _generate(model, tokenizer, prompts, None, max_new_tokens, batch_size, stop_at_newline, progress)[0]


def generate_and_score(model, tokenizer, prompts: list[list[int]], answers: list[str], max_new_tokens: int = 32,
                       batch_size: int = 8, stop_at_newline: bool = True,
                       progress=None) -> tuple[list[str], float, int]:
    """:func:`greedy_generate` and :func:`answer_nll` in one pass: ``(texts, total NLL, answer tokens)``.

    The first forward of each batch runs every prompt with its answer appended (teacher-forced,
    right-padded after the prompts, which stay right-aligned); its logits give the answer NLL and
    the first generated token, and its KV cache, cropped back to the prompts, carries on the
    decoding. Exact (causal attention never lets a prompt position see the answer), with each
    prompt's prefill run once instead of twice.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1 (the first forward scores the answers), got {max_new_tokens}")
    targets = [answer_token_ids(tokenizer, a) for a in answers]
    ctx = context_length(model)
    if ctx:   # an answer scored past the model's last position would index beyond its position table
        targets = [t[:max(ctx - len(p), 1)] for p, t in zip(prompts, targets)]
    return _generate(model, tokenizer, prompts, targets, max_new_tokens, batch_size, stop_at_newline, progress)


def answer_token_ids(tokenizer, answer: str) -> list[int]:
    """The scored answer tokens: ``" " + answer`` without special tokens."""
    return tokenizer(" " + answer, add_special_tokens=False)["input_ids"]


def _generate(model, tokenizer, prompts, targets, max_new_tokens, batch_size, stop_at_newline, progress):
    """Texts in input order, and (with ``targets``) the answers' total NLL and token count."""
    _check_prompts(prompts)
    device = next(model.parameters()).device
    stop_ids = _stop_ids(model, tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = [""] * len(prompts)
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            new_tokens, nll, n = _greedy_batch(model, tokenizer, [prompts[i] for i in rows], max_new_tokens,
                                               stop_at_newline, stop_ids, device,
                                               None if targets is None else [targets[i] for i in rows])
            total, count = total + nll, count + n
            for i, tokens in zip(rows, new_tokens):
                texts[i] = _answer_text(tokenizer.decode(tokens, skip_special_tokens=True), stop_at_newline)
            if progress is not None:
                progress.update(len(rows))
    return texts, total, count


def _greedy_batch(model, tokenizer, prompts, max_new_tokens, stop_at_newline, stop_ids, device,
                  targets=None) -> tuple[list[list[int]], float, int]:
    """New token ids per prompt (EOS excluded) for one batch; with ``targets`` (answer ids per
    prompt) also their total NLL and count, from the first forward (else 0.0, 0)."""
    pad = _pad_id(tokenizer)
    ids, mask = _pad(prompts, pad, device)  # (b, L) each, left-padded
    width = 0                                     # A: answer columns appended after the prompts
    if targets is not None:
        answer, answer_mask = _pad(targets, pad, device, left=False)                 # (b, A)
        width = answer.shape[1]
        ids, mask = torch.cat([ids, answer], 1), torch.cat([mask, answer_mask], 1)   # (b, L + A)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)             # (b, L): pads get 0, real tokens 0..n-1
    cache_kw = _cache_kwarg(model)
    cache = None  # the model creates its own cache on the first call (right layer types for its config)
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    total, count = 0.0, 0
    for step in range(max_new_tokens):
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=width + 1 if step == 0 else 1, **{cache_kw: cache})
        cache = getattr(out, cache_kw)
        next_ids = out.logits[:, 0].argmax(-1)  # (b,): the first kept row is the last prompt position
        if step == 0 and width:
            nll = token_nll(out.logits, answer)                                       # (b, A)
            total, count = nll[answer_mask.bool()].double().sum().item(), int(answer_mask.sum())
            cache.crop(-width)                     # back to the prompts: decoding continues from them
            mask, positions = mask[:, :-width], positions[:, :-width]
        for row, token in enumerate(next_ids.tolist()):
            if done[row]:
                continue
            if token in stop_ids:
                done[row] = True
                continue
            new[row].append(token)
            # decode the whole continuation: a newline can hide inside a multi-byte or merged token
            text = tokenizer.decode(new[row], skip_special_tokens=True)
            done[row] = stop_at_newline and "\n" in text.lstrip()
        if all(done):
            break
        # finished rows keep decoding in lockstep; their extra tokens are simply not recorded
        ids = next_ids[:, None]                   # (b, 1)
        mask = F.pad(mask, (0, 1), value=1)       # (b, L + step)
        positions = positions[:, -1:] + 1         # (b, 1)
    return new, total, count


def answer_nll(model, tokenizer, prompts: list[list[int]], answers: list[str],
               batch_size: int = 8) -> tuple[float, int]:
    """Total negative log-likelihood (nats) of the answers given their prompts, and the answer token count.

    Each answer is tokenized as ``" " + answer`` without special tokens and appended to its prompt;
    only those tokens are scored (teacher forcing). ``exp(total / count)`` is the answer perplexity.
    """
    _check_prompts(prompts)
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers")
    device = next(model.parameters()).device
    targets = [answer_token_ids(tokenizer, answer) for answer in answers]
    seqs = [prompt + target for prompt, target in zip(prompts, targets)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            ids, mask = _pad([seqs[i] for i in rows], _pad_id(tokenizer), device)      # (b, L)
            lengths = torch.tensor([len(targets[i]) for i in rows], device=device)    # (b,)
            width = int(lengths.max())                                                 # A
            # left padding puts every answer at the end: the last A + 1 positions predict the last A tokens
            out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                        use_cache=False, logits_to_keep=width + 1)
            nll = token_nll(out.logits, ids[:, -width:])                                # (b, A)
            is_answer = torch.arange(width, device=device) >= width - lengths[:, None]  # (b, A)
            total += nll[is_answer].double().sum().item()
            count += int(is_answer.sum())
    return total, count


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL (b, A) of ``targets`` (b, A) from logits (b, A + 1, V) whose row j predicts token j."""
    logprobs = logits[:, :-1].float().log_softmax(-1)                 # (b, A, V)
    return -logprobs.gather(-1, targets[..., None]).squeeze(-1)       # (b, A)


def _pad(seqs: list[list[int]], pad_id: int, device, left: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``(b, L)`` long tensors; ``left``: sequences right-aligned."""
    width = max(len(seq) for seq in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids.to(device), mask.to(device)


def _pad_id(tokenizer) -> int:
    # padded positions are masked out, so any valid id works; GPT-2 has no pad token, only EOS
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    return 0


def _stop_ids(model, tokenizer) -> set[int]:
    """EOS ids of the tokenizer and of the model's generation config (chat models often add e.g. ``<|im_end|>``)."""
    ids = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    return ids - {None}


def _cache_kwarg(model) -> str:
    """Name of the KV-cache argument: transformers 5 renamed ``past_key_values`` to ``cache``.

    The output field carries the same name, so ``getattr(out, name)`` reads the cache back.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps forward(**kwargs)
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _answer_text(text: str, stop_at_newline: bool) -> str:
    return answer_text(text, stop_at_newline)


def answer_text(text: str, stop_at_newline: bool = True) -> str:
    """The answer a decoded continuation gives: leading blanks dropped, cut at its first line break
    (with ``stop_at_newline``), stripped. Public for engines outside torch (llama.cpp) to apply the
    same rule to their tokens."""
    text = text.lstrip()  # leading blank lines are not an answer terminator
    return (text.split("\n", 1)[0] if stop_at_newline else text).strip()


def _check_prompts(prompts: list[list[int]]) -> None:
    if any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("every prompt needs at least one token")
