"""The answer loss attacks maximise: teacher-forced NLL of the gold answer tokens given the prompt.

Same protocol as :func:`bitswitch.evaluate.generate.answer_nll` (the answer is tokenized as
``" " + answer`` and appended to the prompt; only its tokens are scored), but per example, with
gradients through ``inputs_embeds`` for gradient attacks, and fast for many candidates:

- every candidate of one question shares the prompt up to the first editable token (the context,
  for question attacks), so that prefix runs once per precision draw and its KV cache is reused by
  every candidate and step (exact: causal attention never lets the prefix see the edits);
- candidates are scored in one batched forward; they are left-padded *after* the cached prefix
  (padding in the middle, masked out, positions from the mask), so the answer ends every row and
  the LM head runs only on the last ``A + 1`` positions.

Against RPI the scorer averages over ``eot`` precision draws of a :class:`~.rpi.DrawSampler` (EOT).
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F

from ..evaluate.generate import _cache_kwarg, _pad_id, token_nll
from .rpi import DrawSampler


@contextlib.contextmanager
def frozen(model):
    """No parameter gradients while attacking: only the input (embeddings) needs them, and frozen
    weights let fake quantization use its weight cache."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    _drop_scratch(model)
    try:
        yield model
    finally:
        _drop_scratch(model)
        for p, flag in flags:
            p.requires_grad_(flag)


def _drop_scratch(model) -> None:
    """Forget the units' shared dequantization buffers: one made under ``torch.inference_mode`` (by
    evaluation) cannot be written outside it (by attacks), so each mode makes its own."""
    for m in model.modules():
        scratch = getattr(m, "scratch", None)
        if isinstance(scratch, dict):
            scratch.clear()


def _row_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean NLL per row: logits (n, A + 1, V) from the last A + 1 positions, targets (n, A) -> (n,)."""
    return token_nll(logits, targets).mean(-1)


class AnswerScorer:
    """Answer loss of one question under a setting (fixed profile or RPI via ``sampler``).

    ``prompt``: token ids of the clean prompt; ``answer``: answer token ids (A,); ``prefix_len``:
    how many leading prompt tokens no candidate changes (their KV cache is reused).
    """

    def __init__(self, model, tokenizer, sampler: DrawSampler, prompt: list[int], answer: list[int],
                 prefix_len: int):
        self.model, self.sampler = model, sampler
        self.answer = list(answer)
        self.prefix = list(prompt[:max(0, min(prefix_len, len(prompt) - 1))])
        self.device = next(model.parameters()).device
        self.pad_id = _pad_id(tokenizer)
        self.cache_kw = _cache_kwarg(model)
        self._caches: dict = {}
        self.calls = 0  # forward passes run (for cost accounting)

    # -- prefix caches -----------------------------------------------------------------------------
    def _prefix_len(self, prompts: list[list[int]]) -> int:
        """The longest prefix of the cached one that every prompt starts with."""
        m = len(self.prefix)
        for p in prompts:
            k = 0
            while k < m and k < len(p) - 1 and p[k] == self.prefix[k]:
                k += 1
            m = k
        return m

    @torch.no_grad()
    def _cache(self, draw, m: int, n: int):
        """A fresh KV cache of the first ``m`` prefix tokens at ``draw``'s precision, batch ``n``."""
        if m == 0:
            return None
        key = (draw, m)
        if key not in self._caches:
            if len(self._caches) > 16:  # per-unit draws rarely repeat: keep memory bounded
                self._caches.clear()
            ids = torch.tensor([self.prefix[:m]], device=self.device)
            out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
            self.calls += 1
            self._caches[key] = getattr(out, self.cache_kw)
        cache = copy.deepcopy(self._caches[key])
        if n > 1:
            cache.batch_repeat_interleave(n)
        return cache

    def _batch(self, prompts: list[list[int]], m: int):
        """ids (n, S) of the suffixes after ``m`` cached tokens, left-padded; mask (n, m + S); positions (n, S)."""
        suffixes = [p[m:] + self.answer for p in prompts]
        width = max(len(s) for s in suffixes)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), m + width), dtype=torch.long)
        mask[:, :m] = 1
        for r, s in enumerate(suffixes):
            ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[r, m + width - len(s):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, m:]
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _forward(self, draw, m, ids, mask, positions, embeds=None) -> torch.Tensor:
        """Per-row answer NLL (n,) at ``draw``."""
        self.sampler.apply(draw)
        n = ids.shape[0]
        cache = self._cache(draw, m, n)
        a = len(self.answer)
        kw = {"inputs_embeds": embeds} if embeds is not None else {"input_ids": ids}
        out = self.model(**kw, attention_mask=mask, position_ids=positions, use_cache=cache is not None,
                         logits_to_keep=a + 1, **({self.cache_kw: cache} if cache is not None else {}))
        self.calls += 1
        return _row_nll(out.logits, ids[:, -a:])

    # -- public ------------------------------------------------------------------------------------
    @torch.no_grad()
    def losses(self, prompts: list[list[int]], draws=None, batch_size: int = 16) -> torch.Tensor:
        """Answer loss of each prompt (n,), averaged over ``draws`` (default: a fresh EOT sample)."""
        draws = draws or self.sampler.sample()
        m = self._prefix_len(prompts)
        total = torch.zeros(len(prompts), dtype=torch.float64)
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            ids, mask, pos = self._batch(chunk, m)
            for d in draws:
                total[start:start + len(chunk)] += self._forward(d, m, ids, mask, pos).double().cpu()
        return total / len(draws)

    def loss_and_grad(self, prompt: list[int], delta: torch.Tensor | None = None, delta_at=None, draws=None):
        """Answer loss of ``prompt`` and its gradient w.r.t. the input embeddings, averaged over draws.

        ``delta`` (k, d) is added to the embeddings at prompt positions ``delta_at`` (k,) (and gets
        the gradient when it requires grad). Returns ``(loss, grad (S, d), m)``: the gradient covers
        the positions ``m .. m + S`` of prompt + answer (``m`` tokens came from the cache).
        """
        draws = draws or self.sampler.sample()
        m = self._prefix_len([prompt])
        if delta_at is not None and len(delta_at) and min(delta_at) < m:
            m = int(min(delta_at))  # perturbed positions must be recomputed, not read from the cache
        ids, mask, pos = self._batch([prompt], m)
        table = self.model.get_input_embeddings().weight
        x = F.embedding(ids, table).detach().requires_grad_(True)       # (1, S, d)
        total = 0.0
        for d in draws:
            emb = x
            if delta is not None:
                idx = torch.as_tensor(delta_at, device=self.device) - m
                emb = x.index_add(1, idx, delta[None].to(x.dtype))
            loss = self._forward(d, m, ids, mask, pos, emb)[0] / len(draws)
            loss.backward()
            total += float(loss.detach())
        return total, x.grad[0], m
