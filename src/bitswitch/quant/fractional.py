"""Real-valued bit-widths (e.g. 4.7) as stochastic interpolation between adjacent integer grids.

Definition. A weight width ``b`` in [2, 8] (or exactly 16) runs, at each draw, on the integer grid
``floor(b)`` with probability ``1 - frac(b)`` and on the grid ``ceil(b)`` with probability
``frac(b)``, where ``frac(b) = b - floor(b)``. A draw is one uniform number ``u`` in [0, 1):
``bits = ceil(b) if u < frac(b) else floor(b)`` (:func:`draw_bits`). The integer grids are those of
:mod:`bitswitch.quant.functional` unchanged, so

* at an integer ``b`` no draw is made (``frac = 0``): the result *is* the integer grid, bit for bit;
* the expected width is ``b`` exactly (``E[bits] = floor(b) + frac(b)``), so a continuous cosine
  schedule (``train.schedules.cyclic_bits(..., continuous=True)``) has the real-valued average
  precision it names, and the draw adds the precision noise that CPT uses for exploration;
* nothing new has to be stored, packed, exported or run: every draw is a width the export formats,
  the nested checkpoint and the runtime kernels already have, and training at 4.7 bits trains the
  same adapters (``shared`` or ``unit-bits`` keying) as 4 and 5 bits.

The alternative, a deterministic grid of ``round(2^b) - 1`` levels, was rejected: a non-power-of-two
number of levels has no packed storage (a 4.5-bit code still takes 5 bits), so "4.5 bits" would save
nothing when deployed, and every consumer of a ``WeightQuant`` (caches, export, runtime) would need a
new width. What happens "between 4 and 5 bits" is then measured as: a model trained with the
continuous schedule (which spends its steps at mixtures of 4 and 5 bits in proportion) against the
integer CPT schedule, evaluated at the integer widths; and per-unit draws of one fractional width
(:func:`fractional_unit_bits`) give a fixed mixed profile whose average weight bits is close to ``b``.

The draw is made per *step* (every unit on the same grid) or per *unit* (each unit its own draw,
i.e. per weight tensor); both are pure functions of a seeded generator, so a resumed training run
draws what an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
import random

from torch import Tensor

from .config import WeightQuant
from .functional import fake_quantize_weight

FRACTIONAL_RANGE = (2.0, 8.0)   # integer grids 2..8 are contiguous; 16 only as an exact width


def check_bits(b: float) -> float:
    """``b`` as a float, or a one-line ValueError when it is no weight width."""
    if isinstance(b, bool) or not isinstance(b, (int, float)) or math.isnan(b):
        raise ValueError(f"a fractional weight width must be a number in 2..8 (or 16), got {b!r}")
    if b != 16 and not FRACTIONAL_RANGE[0] <= b <= FRACTIONAL_RANGE[1]:
        raise ValueError(f"a fractional weight width must lie in 2..8 (or be exactly 16), got {b}")
    return float(b)


def split_bits(b: float) -> tuple[int, int, float]:
    """``(floor(b), ceil(b), frac(b))``: the two integer grids and the probability of the upper one."""
    b = check_bits(b)
    lo = math.floor(b)
    frac = b - lo
    return lo, (lo + 1 if frac > 0 else lo), frac


def draw_bits(b: float, u: float) -> int:
    """The integer width of one draw: ``ceil(b)`` if ``u < frac(b)`` else ``floor(b)`` (``u`` in [0, 1))."""
    if not 0.0 <= u < 1.0:
        raise ValueError(f"a draw must be a uniform number in [0, 1), got {u}")
    lo, hi, frac = split_bits(b)
    return hi if u < frac else lo


def expected_bits(b: float) -> float:
    """``E[bits]`` of a width: ``floor(b) + frac(b)``, i.e. ``b`` itself."""
    lo, _, frac = split_bits(b)
    return lo + frac


def fractional_weight_quant(b: float, u: float, base: WeightQuant = WeightQuant(8)) -> WeightQuant:
    """The integer quantizer of one draw: ``base`` (its groups, symmetry, method, grid) at
    :func:`draw_bits`."""
    return dataclasses.replace(base, bits=draw_bits(b, u))


def fake_quantize_fractional(w: Tensor, b: float, u: float, base: WeightQuant = WeightQuant(8)) -> Tensor:
    """Fake-quantize a weight (out, in) at the real width ``b`` for the draw ``u``: the integer grid
    of :func:`draw_bits` through :func:`~bitswitch.quant.functional.fake_quantize_weight`."""
    return fake_quantize_weight(w, fractional_weight_quant(b, u, base))


def fractional_unit_bits(b: float, units: list[str], rng: random.Random) -> dict[str, int]:
    """Per-unit (per weight tensor) draws of one width: ``{unit: bits}``, one ``rng.random()`` each in
    the order of ``units``."""
    return {u: draw_bits(b, rng.random()) for u in units}
