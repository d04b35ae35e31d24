"""A static key/value cache: one preallocated tensor pair per layer, written in place.

float32 by default (fake quantization keeps keys and values in float32, so the runtime's logits match
it); bfloat16 halves the cache, which dominates memory at long contexts and large batches (llama.cpp
keeps an F16 cache by default). Attention reads it back as float32.

Rows are left-padded prompts; column ``t`` of every row is decoding position ``t`` (the rotary or
learned position of a row is its count of real tokens before it, see :func:`positions`). Rolling
back is free: the next forward at an earlier ``pos`` overwrites what follows (speculative decoding).
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """k, v: ``n_layer`` tensors (B, n_kv_head, max_len, head_dim) of ``dtype``; ``valid`` (B, max_len)
    bool: which columns hold real tokens (pads stay False); ``length``: columns written so far."""

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (batch, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.max_len, self.length = max_len, 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def positions(valid: Tensor, pos: int, n: int) -> Tensor:
    """(B, n) position ids of columns pos..pos+n-1: real tokens before each column (pads count 0),
    as transformers derives them from the attention mask (cumsum - 1, pads clamped to 0)."""
    return (valid[:, :pos + n].long().cumsum(1) - 1).clamp_min(0)[:, pos:pos + n]


def attention_mask(valid: Tensor, pos: int, n: int) -> Tensor:
    """(B, 1, n, pos+n) bool: query column pos+i sees key column j <= pos+i that holds a real token.

    A pad query also sees itself: a row with no key at all would be NaN in softmax, and NaN times
    the zero weight of a masked key is still NaN, which would then reach real rows."""
    keys = torch.arange(pos + n, device=valid.device)
    query = keys[pos:, None]                                             # (n, 1)
    causal = keys[None, :] <= query                                      # (n, pos+n)
    own = keys[None, :] == query
    return ((valid[:, None, :pos + n] & causal) | own)[:, None]
