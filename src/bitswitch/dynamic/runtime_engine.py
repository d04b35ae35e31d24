"""RuntimeEngine: the engine interface over :class:`bitswitch.runtime.Runtime` (packed weights).

Widths are the runtime's ``set_unit_profiles`` (attribute writes, never repacking); the cache is
the runtime's static KV cache, sized at ``reset``, and rolling back only moves the position: the
next forward overwrites the columns after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from ..errors import BitswitchError
from .engine import Engine


class RuntimeEngine(Engine):
    def __init__(self, runtime):
        self.runtime, self.model, self.tokenizer = runtime, runtime.model, runtime.tokenizer
        self.units = runtime.units
        self._cache = None
        self._pos = 0

    def set_widths(self, widths: Mapping[str, str]) -> None:
        self.runtime.set_unit_profiles(dict(widths))

    def reset(self, capacity: int) -> None:
        if self._cache is None or self._cache.max_len < capacity:
            self._cache = self.model.new_cache(1, capacity)
        self._cache.valid.zero_()
        self._pos = 0

    def step(self, ids: Sequence[int]) -> Tensor:
        n = len(ids)
        if self._cache is None or self._pos + n > self._cache.max_len:
            raise BitswitchError(f"the cache holds {0 if self._cache is None else self._cache.max_len} positions: "
                                 "prefill with a larger capacity")
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.model.embed.device)   # (1, n)
        self._cache.valid[:, self._pos:self._pos + n] = True
        # a forward that extends the sequence (a speculative verification) attends row by row, so it
        # equals the one-token steps it stands for bit for bit; the prompt's attends in one call
        self.model.row_exact = self._pos > 0
        try:
            with torch.inference_mode():
                logits = self.model(x, self._cache, self._pos)[0]                        # (n, V)
        finally:
            self.model.row_exact = False
        self._pos += n
        return logits

    @property
    def position(self) -> int:
        return self._pos

    def _truncate(self, position: int) -> None:
        self._cache.valid[:, position:] = False
        self._pos = position
