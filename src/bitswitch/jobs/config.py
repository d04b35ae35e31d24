"""``RunConfig``: the settings every measuring command shares, validated once.

Subclasses add their own fields (all keyword-only, so a subclass may give a field without a
default after the base's defaulted ones) and extend ``validate``. ``settings_hash`` names what
must match for an earlier record to be reused: every field except ``UNHASHED`` ones (where the
output goes, which device runs it, and subclass knobs that never change a result).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import BitswitchError
from ..models import resolve_device
from ..profiles import QuantOptions

ORDERS = ("stratified", "file")   # question selection: a seeded sample across articles, or file order


@dataclass(kw_only=True)
class RunConfig:
    model: str
    out: str
    adapters: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    seed: int = 0
    keying: str = "profile"
    options: QuantOptions = field(default_factory=QuantOptions)
    data: str | None = None
    limit: int | None = None              # squad: N questions (from --offset); lm-eval: N examples
    offset: int = 0                       # squad: skip N questions of the order; text: skip N tokens
    order: str = "stratified"             # squad question order: stratified over articles, or file
    sample_seed: int = 0                  # the stratified order's seed (apart from --seed: same questions)
    batch_size: int = 8

    UNHASHED: ClassVar[tuple[str, ...]] = ("out", "device")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """One-line errors for impossible values; subclasses call ``super().validate()``."""
        resolve_device(self.device)   # a device this machine lacks: one line now, before any output
        if self.dtype not in ("fp32", "bf16", "fp16"):
            raise BitswitchError(f"--dtype {self.dtype!r}: use fp32, bf16 or fp16")
        if self.limit is not None and self.limit < 1:
            raise BitswitchError(f"--limit must be at least 1, got {self.limit}")
        if self.offset < 0:
            raise BitswitchError(f"--offset must be >= 0, got {self.offset}")
        if self.order not in ORDERS:
            raise BitswitchError(f"--order {self.order!r}: use {' or '.join(ORDERS)}")
        if self.batch_size < 1:
            raise BitswitchError(f"--batch-size must be at least 1, got {self.batch_size}")

    def settings(self) -> dict:
        """The fields that decide results (JSON-ready)."""
        d = dataclasses.asdict(self)
        for k in self.UNHASHED:
            d.pop(k, None)
        return json.loads(json.dumps(d, sort_keys=True, default=str))

    def settings_hash(self) -> str:
        return hashlib.sha1(json.dumps(self.settings(), sort_keys=True).encode()).hexdigest()[:12]

    def squad_selection(self) -> dict:
        """``load_squad`` keywords of the evaluated questions."""
        return {"limit": self.limit, "offset": self.offset, "order": self.order, "sample_seed": self.sample_seed}
