"""FakeQuantEngine: the engine interface over a switchable transformers model (fake quantization).

Widths are written by :func:`bitswitch.switching.set_unit_profiles`; the cache is transformers'
own (created by the model's first call), rolled back with ``DynamicCache.crop``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..evaluate.generate import _cache_kwarg
from ..profiles import Profile
from ..switching import set_unit_profiles, state
from .engine import Engine


class FakeQuantEngine(Engine):
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.units = list(state(model).units)
        self.device = next(model.parameters()).device
        self._kw = _cache_kwarg(model)
        self._cache = None
        self._pos = 0

    def set_widths(self, widths: Mapping[str, str | Profile]) -> None:
        current = state(self.model).unit_profiles or dict.fromkeys(self.units, "fp")
        set_unit_profiles(self.model, {**current, **widths}, state(self.model).adapters_on)

    def reset(self, capacity: int) -> None:
        self._cache, self._pos = None, 0   # the model makes a fresh cache of the right layer types

    def step(self, ids: Sequence[int]) -> Tensor:
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)          # (1, n)
        with torch.inference_mode():
            out = self.model(input_ids=x, use_cache=True, **{self._kw: self._cache})
        self._cache = getattr(out, self._kw)
        self._pos += x.shape[1]
        return out.logits[0].float()                                                 # (n, V)

    @property
    def position(self) -> int:
        return self._pos

    def _truncate(self, position: int) -> None:
        if position < self._pos:
            self._cache.crop(position - self._pos)   # transformers 5: a negative count of tokens to drop
        self._pos = position
