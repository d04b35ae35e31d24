"""The validated configuration of ``bitswitch eval``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BitswitchError
from ..profiles import QuantOptions


@dataclass
class EvalConfig:
    model: str
    task: str
    profiles: list[str] | None = None     # None: fp, or the profile an exported model was made at
    out: str = "runs/eval"
    data: str | None = None
    adapters: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    seed: int = 0
    keying: str = "profile"
    options: QuantOptions = field(default_factory=QuantOptions)
    weight_cache: str = "codes"           # switching.WEIGHT_CACHES; never changes results, only memory/speed
    # wikitext
    max_tokens: int | None = None
    window: int = 1024
    stride: int | None = None
    # squad / lm-eval
    limit: int | None = None
    offset: int = 0                       # squad: skip N questions; wikitext: skip N tokens (held-out slices)
    shots: int = 0
    train_data: str | None = None
    template: str | None = None
    chat: bool = False
    batch_size: int = 8
    max_new_tokens: int = 32
    calib_batches: int = 4

    def __post_init__(self):
        if self.profiles is not None and not self.profiles:
            raise BitswitchError("no profiles to evaluate: pass --profiles, e.g. --profiles fp w8a8 w4a8")
        if self.profiles and len(set(self.profiles)) != len(self.profiles):
            raise BitswitchError(f"--profiles lists a profile twice: {self.profiles}")
        for name in ("max_tokens", "limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise BitswitchError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
        for name in ("window", "batch_size", "max_new_tokens", "calib_batches"):
            if getattr(self, name) < 1:
                raise BitswitchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.stride is not None and not 0 < self.stride <= self.window:
            raise BitswitchError(f"--stride must be in 1..--window ({self.window}), got {self.stride}")
        if self.weight_cache not in ("codes", "float"):
            raise BitswitchError(f"--weight-cache must be codes or float, got {self.weight_cache!r}")
        if self.offset < 0:
            raise BitswitchError(f"--offset must be >= 0, got {self.offset}")
        if self.offset and self.task.startswith("lm-eval:"):
            raise BitswitchError("--offset applies to squad and wikitext only: drop it for lm-eval tasks")
        if self.shots < 0:
            raise BitswitchError(f"--shots must be >= 0, got {self.shots}")
