"""Precision schedules: which profile(s) a training step trains, as pure functions of (step, seed).

- ``fixed``: the first profile, always;
- ``random``: one profile of the set, drawn per step;
- ``random-unit``: every unit draws its own weight bits from ``candidates`` per step ("bit-width
  dropout"); the step's profile is the per-unit rule list;
- ``all``: every profile of the set each step (the losses are averaged);
- ``cyclic``: CPT (Fu et al., ICLR'21): ``bits(t) = round(b_min + 0.5 (b_max - b_min)
  (1 + cos(pi (t mod T) / T + pi)))`` with ``T = steps / cycles``, applied through a profile
  ``family`` such as ``w{bits}a8``; ``b_min`` / ``b_max`` may be real (e.g. 4.5); with
  ``continuous`` the cosine is not rounded: the real width ``bits(t)`` is drawn per step (or per unit,
  ``fractional="unit"``) as ``floor`` or ``ceil`` with probability ``frac`` (stochastic interpolation
  between adjacent integer grids, :mod:`bitswitch.quant.fractional`);
- ``progressive``: the profiles as a ladder, equal numbers of steps each, ``ascending`` (fewest
  bits first) or ``descending``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ..errors import BitswitchError
from ..quant.fractional import check_bits, draw_bits, fractional_unit_bits

SCHEDULES = ("fixed", "random", "random-unit", "all", "cyclic", "progressive")


def _rng(seed: int, step: int) -> random.Random:
    # one generator per (seed, step): the draw at a step never depends on the steps before it,
    # so a resumed run draws exactly what an uninterrupted one would
    return random.Random(seed * 1_000_003 + step)


FRACTIONAL = ("step", "unit")


def cyclic_bits(step: int, steps: int, cycles: int, b_min: float, b_max: float,
                continuous: bool = False) -> int | float:
    """CPT's cosine cycle: b_min at the start of each cycle, rising to b_max at its end; rounded to
    an integer width unless ``continuous`` (then the real width, to be drawn by
    :func:`~bitswitch.quant.fractional.draw_bits`)."""
    period = steps / cycles
    t = step % period
    b = b_min + 0.5 * (b_max - b_min) * (1 + math.cos(math.pi * t / period + math.pi))
    return b if continuous else round(b)


@dataclass
class Schedule:
    kind: str
    profiles: list[str]
    steps: int
    seed: int = 0
    cycles: int = 2
    b_min: int | float = 4
    b_max: int | float = 8
    family: str = "w{bits}a8"
    order: str = "ascending"
    candidates: list[int] = field(default_factory=lambda: [4, 6, 8])
    units: list[str] = field(default_factory=list)   # block unit names, for random-unit
    act_bits: int | None = 8                          # activations of random-unit draws
    avg_bits: dict[str, float] = field(default_factory=dict)  # for the progressive ladder order
    continuous: bool = False                          # cyclic: real widths, drawn per step or unit
    fractional: str = "step"                          # cyclic continuous: one draw per step or per unit

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise BitswitchError(f"unknown schedule {self.kind!r}: use one of {', '.join(SCHEDULES)}")
        if self.kind in ("fixed", "random", "all", "progressive") and not self.profiles:
            raise BitswitchError(f"schedule {self.kind!r} needs --profiles")
        if self.kind == "cyclic":
            if not (2 <= self.b_min <= self.b_max <= 16):
                raise BitswitchError(f"cyclic bits need 2 <= b_min <= b_max <= 16, got {self.b_min}..{self.b_max}")
            if self.continuous or self.b_min != int(self.b_min) or self.b_max != int(self.b_max):
                for b in (self.b_min, self.b_max):
                    try:
                        check_bits(b)
                    except ValueError as exc:
                        raise BitswitchError(f"cyclic b_min/b_max: {exc}") from None
                if self.b_max == 16 and self.b_min != 16:
                    raise BitswitchError("real-valued cyclic widths lie in 2..8: 9-15 bits have no grid (use b_max <= 8)")
            if self.fractional not in FRACTIONAL:
                raise BitswitchError(f"fractional must be one of {', '.join(FRACTIONAL)}, got {self.fractional!r}")
            if self.fractional == "unit" and self.continuous and not self.units:
                raise BitswitchError("per-unit fractional draws need the model's units")
            if not 1 <= self.cycles <= self.steps:
                raise BitswitchError(f"cyclic cycles must be in 1..steps ({self.steps}), got {self.cycles}")
            if "{bits}" not in self.family:
                raise BitswitchError(f"cyclic family {self.family!r} must contain {{bits}}, e.g. w{{bits}}a8")
        if self.kind == "random-unit" and (not self.candidates or not self.units):
            raise BitswitchError("random-unit needs candidate bits (e.g. 4,6,8) and the model's units")
        if self.order not in ("ascending", "descending"):
            raise BitswitchError(f"progressive order must be ascending or descending, got {self.order!r}")

    def at(self, step: int) -> list[str]:
        """The profiles trained at ``step`` (one, except for ``all``)."""
        if self.kind == "fixed":
            return [self.profiles[0]]
        if self.kind == "random":
            return [_rng(self.seed, step).choice(self.profiles)]
        if self.kind == "all":
            return list(self.profiles)
        if self.kind == "cyclic":
            b = cyclic_bits(step, self.steps, self.cycles, self.b_min, self.b_max, self.continuous)
            if not self.continuous:
                return [self.family.format(bits=b)]
            rng = _rng(self.seed, step)
            if self.fractional == "step":
                return [self.family.format(bits=draw_bits(b, rng.random()))]
            drawn = fractional_unit_bits(b, self.units, rng)
            return [";".join(f"{u}={self.family.format(bits=bits)}" for u, bits in drawn.items())]
        if self.kind == "progressive":
            ladder = self.ladder()
            return [ladder[min(step * len(ladder) // self.steps, len(ladder) - 1)]]
        rng = _rng(self.seed, step)
        act = f"a{self.act_bits}" if self.act_bits else ""
        return [";".join(f"{u}=w{rng.choice(self.candidates)}{act}" for u in self.units)]

    def ladder(self) -> list[str]:
        key = lambda p: self.avg_bits.get(p, 0.0)  # noqa: E731
        return sorted(self.profiles, key=key, reverse=self.order == "descending")

    def all_profiles(self) -> list[str]:
        """Every profile the schedule can train (to create adapters up front); for random-unit,
        one uniform profile per candidate, which covers every (unit, bits) adapter."""
        if self.kind == "cyclic":
            return [self.family.format(bits=b) for b in range(math.floor(self.b_min), math.ceil(self.b_max) + 1)]
        if self.kind == "random-unit":
            act = f"a{self.act_bits}" if self.act_bits else ""
            return [f"w{b}{act}" for b in self.candidates]
        return list(self.profiles)
