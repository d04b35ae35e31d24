"""The widths a controller chooses from, and what each costs per token on each unit.

A width is a spec (``w4g32``, ``w8``, ``fp``) run as a profile: every block unit at it, the head as
that profile leaves it (unquantized). Costs are per token: ``bits`` is the unit's share of the
average weight bits (its parameters over all block units' times the width's bits, fp counted as 16,
as :mod:`bitswitch.accounting` averages), so summing over units gives the token's average weight
bits; ``bytes`` is the unit's weight bytes read at that width (codes + scales + zero points, as
:func:`~bitswitch.profiles.quantized_tensor_bytes` counts them; fp as 2 bytes per weight).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import BitswitchError
from ..profiles import QuantOptions, parse_spec, quantized_tensor_bytes

MEASURES = ("bits", "bytes")


@dataclass(frozen=True)
class WidthSet:
    """``widths``: specs by ascending bits; ``bits``: each one's weight bits; ``params``: weights per
    block unit; ``nbytes``: per unit, bytes at each width."""

    widths: tuple[str, ...]
    bits: tuple[int, ...]
    params: dict[str, int]
    nbytes: dict[str, tuple[int, ...]]

    @classmethod
    def from_shapes(cls, widths: Sequence[str], shapes: Mapping[str, Sequence[tuple[int, int]]],
                    options: QuantOptions = QuantOptions()) -> WidthSet:
        """``shapes``: per block unit, the (out, in) of each of its weights."""
        specs = [w.strip() for w in (widths.split(",") if isinstance(widths, str) else widths)]
        if not specs or any(not s for s in specs):
            raise BitswitchError("--widths needs at least one spec, e.g. w4g32,w8")
        parsed = {s: parse_spec(s, s) for s in specs}
        bits = {s: 16 if w is None else w for s, (w, _, _) in parsed.items()}
        if len(set(bits.values())) != len(specs):
            raise BitswitchError(f"widths {','.join(specs)}: each width needs its own weight bits")
        specs.sort(key=bits.__getitem__)
        nbytes = {}
        for unit, mats in shapes.items():
            row = []
            for s in specs:
                w, g, a = parsed[s]
                cfg = options.precision(w, g, a).weight
                row.append(sum(2 * o * i if cfg is None else sum(quantized_tensor_bytes(o, i, cfg).values())
                               for o, i in mats))
            nbytes[unit] = tuple(row)
        params = {u: sum(o * i for o, i in mats) for u, mats in shapes.items()}
        return cls(tuple(specs), tuple(bits[s] for s in specs), params, nbytes)

    @classmethod
    def from_model(cls, model, widths) -> WidthSet:
        """For a switchable model's block units (the head stays as the profiles leave it)."""
        from ..switching import state, unit_modules

        shapes: dict[str, list] = {}
        for unit, _, mod in unit_modules(model):
            if unit != "head":
                shapes.setdefault(unit, []).append((mod.out_features, mod.in_features))
        return cls.from_shapes(widths, shapes, state(model).options)

    @classmethod
    def from_runtime(cls, runtime, widths) -> WidthSet:
        """For a runtime's block units (fused weights quantize as their parts: same bytes)."""
        units = dict(runtime.model.units())
        shapes = {u: [(m.out_features, m.in_features)] for u, m in units.items() if u != "head"}
        return cls.from_shapes(widths, shapes, next(iter(units.values())).options)

    def index_of(self, precision) -> int:
        """The index of the width whose weight bits ``precision`` (a UnitPrecision) has."""
        bits = precision.weight.bits if precision.weight is not None else 16
        if bits not in self.bits:
            raise BitswitchError(f"{bits}-bit weights are not among the widths {','.join(self.widths)}")
        return self.bits.index(bits)

    @property
    def units(self) -> list[str]:
        return list(self.params)

    def costs(self, by: str = "bits") -> dict[str, torch.Tensor]:
        """Per unit, (W,) float64: the cost of one token at each width (summing units: the token's)."""
        if by not in MEASURES:
            raise BitswitchError(f"a budget is in {' or '.join(MEASURES)}, got {by!r}")
        if by == "bytes":
            return {u: torch.tensor(b, dtype=torch.float64) for u, b in self.nbytes.items()}
        total = sum(self.params.values())
        return {u: torch.tensor(self.bits, dtype=torch.float64) * p / total for u, p in self.params.items()}

    def cost_range(self, by: str = "bits") -> tuple[float, float]:
        c = self.costs(by)
        return float(sum(v[0] for v in c.values())), float(sum(v[-1] for v in c.values()))

    def check_budget(self, budget: float, by: str = "bits") -> None:
        """A budget the widths cannot meet (below the lowest or above the highest) is a one-line error."""
        lo, hi = self.cost_range(by)
        if not lo - 1e-9 <= budget <= hi + 1e-9:
            unit = "weight bits" if by == "bits" else "bytes per token"
            raise BitswitchError(f"budget {budget:g} {unit} is outside what widths {','.join(self.widths)} give "
                                 f"({lo:g} .. {hi:g}): pick a budget in that range or other --widths")
