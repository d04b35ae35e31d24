"""The search space: which units are searched, the spec each candidate bit-width gives them, and
what each choice costs in exact weight bytes and in the bits that ``avg_w_bits`` averages.

Costs are additive per unit, so the budget search can add them up; :meth:`SearchSpace.weight_bytes`
and :meth:`SearchSpace.avg_bits` reproduce :func:`bitswitch.accounting.profile_report` exactly
(the tests compare them), the parts outside the searched units being taken from the report of
the base profile. Candidates change weight bits only: a unit keeps the base profile's activation
quantizer and weight group size / symmetry.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from ..accounting import profile_report
from ..errors import BitswitchError
from ..profiles import quantized_tensor_bytes, table_to_string
from ..quant.config import WEIGHT_BITS, UnitPrecision, WeightQuant
from ..quant.functional import fake_quantize_weight
from ..switching import resolve_profile, state, unit_modules


def parse_candidates(text) -> tuple[int, ...]:
    """``'4,6,8'`` (or a list) -> (4, 6, 8), sorted, each a valid weight bit-width."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        bits = sorted({int(str(b).strip()) for b in items if str(b).strip()})
    except ValueError:
        raise BitswitchError(f"--candidates {text!r} must be comma-separated weight bits, e.g. 3,4,6,8") from None
    bad = [b for b in bits if b not in WEIGHT_BITS]
    if not bits or bad:
        raise BitswitchError(f"--candidates {text!r}: each must be a weight bit-width in "
                             f"{', '.join(map(str, WEIGHT_BITS))}, e.g. 3,4,6,8")
    return tuple(bits)


@dataclass
class UnitChoice:
    """One searched unit: ``params`` weight parameters over its modules, the base bits (None = fp
    weights), and per candidate bit-width its spec and exact packed bytes."""

    name: str
    params: int
    base_bits: int | None
    base_bytes: int
    specs: dict[int, str] = field(default_factory=dict)
    bytes: dict[int, int] = field(default_factory=dict)
    quantizers: dict[int, WeightQuant] = field(default_factory=dict)


@dataclass
class SearchSpace:
    base: str
    candidates: tuple[int, ...]
    units: dict[str, UnitChoice]
    base_table: dict[str, UnitPrecision]
    fixed_bytes: int          # weight bytes outside the searched units' weights (embeddings, norms, ...)
    fixed_bits_params: int    # bits x params that avg_w_bits counts outside the searched units
    counted_params: int       # avg_w_bits' denominator
    fp16_weight_bytes: int
    fp32_weight_bytes: int

    def weight_bytes(self, assign: dict[str, int]) -> int:
        """Exact weight bytes of the profile that puts unit ``u`` at ``assign[u]`` bits."""
        return self.fixed_bytes + sum(self.units[u].bytes[b] for u, b in assign.items())

    def bits_params(self, assign: dict[str, int]) -> int:
        return self.fixed_bits_params + sum(self.units[u].params * b for u, b in assign.items())

    def avg_bits(self, assign: dict[str, int]) -> float:
        return self.bits_params(assign) / self.counted_params

    def avg_bits_budget(self, avg_bits: float) -> int:
        """The largest searched-units bits x params sum whose average stays <= ``avg_bits`` (exact:
        the budget is read as a decimal fraction, so 4.1 means 41/10, not its float)."""
        return math.floor(Fraction(str(avg_bits)) * self.counted_params) - self.fixed_bits_params

    def uniform(self, bits: int) -> dict[str, int]:
        return {u: bits for u in self.units}

    def table(self, assign: dict[str, int]) -> dict[str, UnitPrecision]:
        table = dict(self.base_table)
        for u, b in assign.items():
            uc = self.units[u]
            table[u] = UnitPrecision(uc.quantizers[b], self.base_table[u].act)
        return table

    def profile(self, assign: dict[str, int]) -> str:
        """The assignment in the profile grammar, shortest form (most common spec first)."""
        return table_to_string(self.table(assign))


def build_space(model, base: str, candidates, units=None) -> SearchSpace:
    """The search space of ``model`` around ``base`` (default units: every block unit; ``head``
    stays at the base profile, since a tied head would also keep the embedding in fp16)."""
    candidates = parse_candidates(candidates)
    st = state(model)
    _, base_table = resolve_profile(model, base)
    names = [u for u in st.units if u.startswith("L")] if units is None else list(units)
    missing = [u for u in names if u not in st.units]
    if missing:
        raise BitswitchError(f"unit {missing[0]!r} is not a unit of this model: units are L{{i}}.{{role}} and head")
    shapes: dict[str, list[tuple[int, int]]] = {u: [] for u in names}
    for unit, _, mod in unit_modules(model):
        if unit in shapes:
            shapes[unit].append((mod.out_features, mod.in_features))
    rep = profile_report(model, base)
    space_units, base_sum, base_bits_params = {}, 0, 0
    for u in names:
        prec = base_table[u]
        w = prec.weight
        template = w or st.options.precision(candidates[0], None, None).weight
        params = sum(o * i for o, i in shapes[u])
        base_bytes = (sum(sum(quantized_tensor_bytes(o, i, w).values()) for o, i in shapes[u]) if w
                      else 2 * params)  # fp units count as fp16 in the accounting
        uc = UnitChoice(u, params, w.bits if w else None, base_bytes)
        for b in candidates:
            q = WeightQuant(b, template.group_size, template.symmetric, template.method)
            for o, i in shapes[u]:
                if q.group_size and i % q.group_size:
                    raise BitswitchError(f"group size {q.group_size} does not divide the {i} input columns of "
                                         f"unit {u}: use a group size that divides every unit's width")
            uc.quantizers[b] = q
            uc.specs[b] = UnitPrecision(q, prec.act).spec
            uc.bytes[b] = sum(sum(quantized_tensor_bytes(o, i, q).values()) for o, i in shapes[u])
        space_units[u] = uc
        base_sum += base_bytes
        base_bits_params += (w.bits if w else 16) * params
    counted = sum(r["params"] for r in rep["units"] if r["name"] != "head" or r["w_bits"] is not None)
    total_bits_params = round(rep["avg_w_bits"] * counted)
    return SearchSpace(base, candidates, space_units, base_table, rep["weight_bytes"] - base_sum,
                       total_bits_params - base_bits_params, counted, rep["fp16_weight_bytes"],
                       rep["fp32_weight_bytes"])


@torch.no_grad()
def noise_energy(model, space: SearchSpace, bits=None) -> dict[str, dict[int, float]]:
    """``{unit: {bits: ||Q_bits(W) - W||^2}}`` summed over the unit's modules, ``W`` the float weights,
    at every candidate, the units' base bits and ``bits`` (e.g. a sensitivity sweep's probe bits).

    The energy of the quantization error is what scales a unit's damage from one bit-width to
    another (:func:`bitswitch.search.table.damage_table`)."""
    base_bits = {uc.base_bits for uc in space.units.values() if uc.base_bits is not None}
    bits = sorted(set(space.candidates) | set(bits or ()) | base_bits)
    out: dict[str, dict[int, float]] = {u: {b: 0.0 for b in bits} for u in space.units}
    for unit, _, mod in unit_modules(model):
        if unit not in space.units:
            continue
        w = mod.weight_out_in().detach().float()                     # (out, in)
        template = space.units[unit].quantizers[space.candidates[0]]
        for b in bits:
            q = dataclasses.replace(template, bits=b)
            out[unit][b] += float((fake_quantize_weight(w, q) - w).pow(2).sum())
    return out
