"""The engine interface dynamic decoding runs on: one sequence (batch 1), a KV cache that can be
rolled back to any earlier position, and per-unit widths as state set by one function.

    engine.set_profile("w8")                 # every unit; set_widths({unit: profile}) for some
    logits = engine.prefill(prompt_ids)      # (T, V) float32, the cache now holds T positions
    logits = engine.step([tok])              # (n, V) for n fed tokens (n > 1: one verify forward)
    engine.rollback(pos)                     # forget every position >= pos

Two engines implement it: :class:`~.fake_engine.FakeQuantEngine` (a switchable transformers model,
fake quantization) and :class:`~.runtime_engine.RuntimeEngine` (the packed runtime, where speed
is real).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

from torch import Tensor

from ..errors import BitswitchError


class Engine(ABC):
    """``units``: the unit names widths are set for; ``tokenizer``; ``position``: positions cached."""

    units: list[str]
    tokenizer: object

    @abstractmethod
    def set_widths(self, widths: Mapping[str, str]) -> None:
        """Units each to a profile (``{unit: profile}``; units not named keep theirs). The one
        function that changes what the engine runs at."""

    def set_profile(self, profile: str) -> None:
        self.set_widths(dict.fromkeys(self.units, profile))

    @abstractmethod
    def reset(self, capacity: int) -> None:
        """Empty the cache, ready for a sequence of up to ``capacity`` positions."""

    @abstractmethod
    def step(self, ids: Sequence[int]) -> Tensor:
        """Feed ``ids`` at the next positions; their logits (n, V) float32 (row i predicts the token
        after ids[i])."""

    @property
    @abstractmethod
    def position(self) -> int:
        """How many positions the cache holds."""

    @abstractmethod
    def _truncate(self, position: int) -> None:
        """Drop cached positions >= ``position`` (0 <= position <= self.position)."""

    def prefill(self, ids: Sequence[int], capacity: int | None = None) -> Tensor:
        """Reset and feed a prompt: logits (T, V)."""
        if len(ids) == 0:
            raise BitswitchError("a prompt needs at least one token")
        self.reset(capacity or len(ids))
        return self.step(ids)

    def rollback(self, position: int) -> None:
        """Forget every position >= ``position``: the next step writes there."""
        if not 0 <= position <= self.position:
            raise BitswitchError(f"cannot roll back to position {position}: the cache holds {self.position}")
        self._truncate(position)

    @property
    def eos_id(self) -> int | None:
        return getattr(self.tokenizer, "eos_token_id", None)
