"""The per-unit damage table the budget and greedy searches optimise: ``{unit: {bits: damage}}``.

Damage is additive, oriented (larger = worse; :func:`bitswitch.search.metrics.damage`) and relative
to the base profile: 0 at the unit's base bits, >= 0 below them, <= 0 (a gain) above them, so a
search can start from any operating point (``w8a8`` and lower units from there, or ``w4a8`` and
trade units lowered to 3 bits against units raised to 6 or 8). Sources give it at some bit-widths:
a measured sweep at its probe bits (one sweep per probe), a proxy at every candidate. A missing
bit-width is filled by the second-order model the Fisher proxy rests on: a unit's damage grows with
the energy of its quantization error, ``damage(b) = c * (e(b) - e(base))`` with ``e`` the squared
error against the float weights (:func:`bitswitch.search.space.noise_energy`; 0 for fp) and ``c``
fitted to the nearest measured bit-width on the same side of the base (else the nearest at all).
A measured damage of the wrong sign (worse for more bits, better for fewer) is noise and reads as 0.

``fit="pooled"`` fits one ``c`` per unit to every measured bit-width instead, as the mean of the
per-measurement estimates ``d(b) / (e(b) - e(base))`` (clipped at 0), and predicts every candidate
from it, measured ones included. Why: a single-unit measurement on a small calibration set mixes the
unit's sensitivity with the effect of that one rounding pattern, and a search that picks the units
measured least damaging picks that noise (a winner's curse). Two sweeps on opposite sides of the
base (e.g. 3 and 8 bits around 4) are two estimates of the same ``c``; averaging them halves the
noise's variance and lets the loss below the base inform the gain above it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BitswitchError
from .space import SearchSpace


def known_from_records(records: list[dict]) -> dict[str, dict[int, float]]:
    """``{unit: {bits: damage}}`` from sensitivity records (measured or proxy layout).

    Measured records carry ``probe_bits`` and ``damage``; proxy records also ``by_bits``.
    """
    known: dict[str, dict[int, float]] = {}
    for r in records:
        name = r.get("name")
        if name is None:
            continue
        by_bits = r.get("by_bits")
        if by_bits:
            known.setdefault(name, {}).update({int(b): float(d) for b, d in by_bits.items()})
        elif r.get("probe_bits") is not None and r.get("damage") is not None:
            known.setdefault(name, {})[int(r["probe_bits"])] = float(r["damage"])
    return known


def load_sensitivity(path: str | Path, granularity: str | None = "unit") -> dict:
    """A ``results.json`` written by ``bitswitch sensitivity`` (of ``granularity``; None = any)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise BitswitchError(f"sensitivity file {str(path)!r} does not exist: pass the results.json (or its "
                             "directory) of a bitswitch sensitivity run")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BitswitchError(f"sensitivity file {str(path)!r} is not valid JSON ({exc.msg}): rerun "
                             "bitswitch sensitivity") from exc
    if doc.get("kind") != "sensitivity" or granularity not in (None, doc.get("granularity")):
        raise BitswitchError(f"{str(path)!r} is not a {granularity or ''} sensitivity result of bitswitch: "
                             f"pass the results.json of bitswitch sensitivity --granularity {granularity or 'unit'}")
    return doc


FITS = ("side", "pooled")


def damage_table(space: SearchSpace, known: dict[str, dict[int, float]],
                 energy: dict[str, dict[int, float]] | None = None, fit: str = "side") -> dict[str, dict[int, float]]:
    """Damage of every searched unit at every candidate bit-width, relative to the base.

    known: damages at some bit-widths per unit; energy: ``{unit: {bits: e}}`` noise energies
    against the float weights at every candidate and base bit-width (needed only when a candidate
    is missing from ``known``, and always for ``fit="pooled"``). fit: ``side`` (measured values
    kept, missing ones scaled from the nearest on the same side) or ``pooled`` (one coefficient per
    unit from all its measurements; module docstring). A searched unit absent from ``known`` is an error.
    """
    if fit not in FITS:
        raise BitswitchError(f"damage fit {fit!r}: use side or pooled")
    if fit == "pooled" and energy is None:
        raise BitswitchError("the pooled damage fit needs noise energies: pass energies to damage_table")
    table: dict[str, dict[int, float]] = {}
    for u, uc in space.units.items():
        base = uc.base_bits
        k = {b: _signed(d, b, base) for b, d in known.get(u, {}).items() if b != base}
        if not k:
            raise BitswitchError(f"the sensitivity table has no entry for unit {u}: measure it with "
                                 "--granularity unit on this model")
        if fit == "pooled":
            table[u] = _pooled_row(u, space.candidates, base, known[u], energy)
            continue
        row = {}
        for b in space.candidates:
            if b == base:
                row[b] = 0.0
            elif b in k:
                row[b] = k[b]
            else:
                if energy is None:
                    raise BitswitchError(f"no damage for unit {u} at {b} bits and no noise energies to scale "
                                         "one from: pass energies or measure at every candidate")
                same_side = [kb for kb in k if _below(kb, base) == _below(b, base)]
                ref = min(same_side or k, key=lambda kb: (abs(kb - b), kb))
                e_base = energy[u][base] if base is not None else 0.0
                span = energy[u][ref] - e_base
                row[b] = _signed(k[ref] * (energy[u][b] - e_base) / span, b, base) if span else 0.0
        table[u] = row
    return table


def _pooled_row(u: str, candidates, base: int | None, measured: dict[int, float], energy) -> dict[int, float]:
    """``{bits: c * (e(bits) - e(base))}`` with ``c`` the mean of the measurements' estimates."""
    e_base = energy[u][base] if base is not None else 0.0
    estimates = [d / (energy[u][b] - e_base) for b, d in measured.items()
                 if b != base and energy[u][b] != e_base]
    c = max(sum(estimates) / len(estimates), 0.0) if estimates else 0.0
    return {b: 0.0 if b == base else c * (energy[u][b] - e_base) for b in candidates}


def _below(bits: int, base: int | None) -> bool:
    return base is None or bits < base


def _signed(d: float, bits: int, base: int | None) -> float:
    """Below the base damage is >= 0, above it <= 0; the other sign is measurement noise."""
    return max(d, 0.0) if _below(bits, base) else min(d, 0.0)


def penalize(table: dict[str, dict[int, float]], space: SearchSpace, factor: float,
             ref: int | None = None) -> dict[str, dict[int, float]]:
    """The table with the damage of lowering a unit below a reference multiplied by ``factor``:
    ``d'(u, b) = d(u, r) + factor * (d(u, b) - d(u, r))`` for ``b < r``, other entries unchanged.
    The reference ``r`` is ``ref`` bits (the uniform profile a budget allows; units without that
    candidate keep their base bits) or, by default, each unit's base bits, where ``d(u, r) = 0``.

    Why: the additive model sums single-unit damages, but lowering many units at once costs more
    than the sum (the quantization errors compound through the residual stream); measured on
    SmolLM2-135M at 4 average bits, 21 units at 3 bits chosen with factor 1 lost more answer
    perplexity on held-out questions than 8 chosen with factor 4. A factor > 1 makes the search
    lower fewer units and buy the budget back with smaller gains; a large one returns the uniform
    profile at the reference, so a budget's search can only trade away from uniform where the
    table says it pays. Which factor is best depends on the model and the budget, so
    ``bitswitch search --below-penalty`` tries several and keeps the one that measures best on
    the calibration data.
    """
    if factor == 1:   # exactly the table (the formula would round a few entries)
        return table
    out = {}
    for u, row in table.items():
        r = ref if ref in row else space.units[u].base_bits
        at_r = row.get(r, 0.0)
        out[u] = {b: at_r + factor * (d - at_r) if _below(b, r) else d for b, d in row.items()}
    return out


def predicted(table: dict[str, dict[int, float]], assign: dict[str, int]) -> float:
    """The additive model's damage of an assignment."""
    return sum(table[u][b] for u, b in assign.items())
