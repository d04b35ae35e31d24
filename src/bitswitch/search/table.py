"""The per-unit damage table the budget and greedy searches optimise: ``{unit: {bits: damage}}``.

Damage is additive and oriented (larger = worse; :func:`bitswitch.search.metrics.damage`).
Sources give it at some bit-widths: a measured sweep at its probe bits, a proxy at every
candidate. Missing bit-widths are filled from the nearest known one, scaled by the unit's
quantization-noise energy (:func:`bitswitch.search.space.noise_energy`): a small perturbation
costs in proportion to its squared size, the same second-order model the Fisher proxy rests on.
Measured damage below zero is noise (quantizing further cannot help on average) and is read as 0;
at or above the base bits damage is 0 by definition.
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


def damage_table(space: SearchSpace, known: dict[str, dict[int, float]],
                 energy: dict[str, dict[int, float]] | None = None) -> dict[str, dict[int, float]]:
    """Damage of every searched unit at every candidate bit-width.

    known: damages at some bit-widths per unit; energy: noise energies (needed only when a
    candidate is missing from ``known``). A searched unit absent from ``known`` is an error.
    """
    table: dict[str, dict[int, float]] = {}
    for u, uc in space.units.items():
        k = {b: max(d, 0.0) for b, d in known.get(u, {}).items()}
        if not k:
            raise BitswitchError(f"the sensitivity table has no entry for unit {u}: measure it with "
                                 "--granularity unit on this model")
        row = {}
        for b in space.candidates:
            if uc.base_bits is not None and b >= uc.base_bits:
                row[b] = 0.0
            elif b in k:
                row[b] = k[b]
            else:
                if energy is None:
                    raise BitswitchError(f"no damage for unit {u} at {b} bits and no noise energies to scale "
                                         "one from: pass energies or measure at every candidate")
                ref = min(k, key=lambda kb: (abs(kb - b), kb))
                e_ref = energy[u].get(ref, 0.0)
                row[b] = k[ref] * energy[u][b] / e_ref if e_ref > 0 else 0.0
        table[u] = row
    return table


def predicted(table: dict[str, dict[int, float]], assign: dict[str, int]) -> float:
    """The additive model's damage of an assignment."""
    return sum(table[u][b] for u, b in assign.items())
