"""Answer sentences computed from result rows, never written by hand.

A *row* is one measurement: ``{"label", "profile", "avg_w_bits", <metrics>...}`` (renderers turn
each kind's results into rows). An experiment's ``answers:`` list names rules:

- ``compare: {kind, metric, labels: [A, B, ...], profiles: [...], better: higher|lower}``: the
  labels side by side at every profile they share; with two labels, the difference A - B per
  profile and, for SQuAD EM/F1, its paired standard error over the same questions;
- ``drop: {kind, metric, label, reference}``: each profile's change against ``reference`` (default:
  the label's highest-bit profile).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import BitswitchError
from ..results import higher_is_better, se_of_mean


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def signed(v: float) -> str:
    return ("+" if v >= 0 else "\u2212") + fmt(abs(v))


def evaluate_rule(rule: dict, rows_by_kind: dict[str, list[dict]]) -> str:
    """One sentence for one rule; a rule that does not fit the data says so instead of failing."""
    if not isinstance(rule, dict) or len(rule) != 1:
        raise BitswitchError(f"answer rule {rule!r} must be one of compare: {{...}} or drop: {{...}}")
    (name, args), = rule.items()
    if name not in RULES or not isinstance(args, dict):
        raise BitswitchError(f"unknown answer rule {name!r}: use compare or drop")
    kind = args.get("kind", "eval-squad")
    rows = rows_by_kind.get(kind, [])
    if not rows:
        return f"({name} on {kind}: no results of that kind in this run)"
    return RULES[name](args, rows)


def _index(rows: list[dict], metric: str) -> dict[tuple[str, str], dict]:
    return {(r["label"], r["profile"]): r for r in rows if r.get(metric) is not None}


def _profiles(rows: list[dict], wanted, labels) -> list[str]:
    order = sorted(dict.fromkeys(r["profile"] for r in rows),
                   key=lambda p: -max((r.get("avg_w_bits") or 0) for r in rows if r["profile"] == p))
    have = lambda p: all(any(r["label"] == lab and r["profile"] == p for r in rows) for lab in labels)  # noqa: E731
    return [p for p in (wanted or order) if have(p)]


def compare(args: dict, rows: list[dict]) -> str:
    metric = args.get("metric", "f1")
    labels = [str(x) for x in args.get("labels") or dict.fromkeys(r["label"] for r in rows)]
    up = higher_is_better(metric, args.get("better"))
    idx = _index(rows, metric)
    missing = [lab for lab in labels if not any(k[0] == lab for k in idx)]
    labels = [lab for lab in labels if lab not in missing]   # e.g. variants left out at this size
    if len(labels) < 2:
        return f"(compare {metric}: no results for {', '.join(missing)} in this run)"
    note = f" ({', '.join(missing)}: not in this run)" if missing else ""
    profiles = _profiles([r for r in rows if r.get(metric) is not None], args.get("profiles"), labels)
    if not profiles:
        return f"(compare {metric}: {', '.join(labels)} share no evaluated profile)"
    sense = "higher" if up else "lower"
    if len(labels) == 2:
        a, b = labels
        parts, wins, losses, significant = [], 0, 0, 0
        for p in profiles:
            ra, rb = idx[(a, p)], idx[(b, p)]
            d = ra[metric] - rb[metric]
            se = paired_se(ra, rb, metric)
            wins += d != 0 and (d > 0) == up
            losses += d != 0 and (d > 0) != up
            if se is not None and se > 0 and abs(d) > 2 * se:
                significant += 1
            parts.append(f"{p} {signed(d)}" + (f" (SE {fmt(se)})" if se is not None else ""))
        tail = f"; {significant} of {len(profiles)} differences exceed 2 standard errors" if any(
            paired_se(idx[(a, p)], idx[(b, p)], metric) is not None for p in profiles) else ""
        return (f"{a} against {b}, {metric} ({sense} is better), {a} minus {b}: {', '.join(parts)}: "
                f"{a} is better at {wins}, worse at {losses}, equal at {len(profiles) - wins - losses} of {len(profiles)} "
                f"profiles{tail}.{note}")
    best_count = {lab: 0 for lab in labels}
    parts = []
    for p in profiles:
        vals = sorted(((idx[(lab, p)][metric], lab) for lab in labels), reverse=up)
        best = vals[0]
        best_count[best[1]] += 1
        margin = abs(best[0] - vals[1][0])
        parts.append(f"{p}: {best[1]} {fmt(best[0])} (next {vals[1][1]} by {fmt(margin)})")
    ranking = ", ".join(f"{lab} {n}" for lab, n in sorted(best_count.items(), key=lambda kv: -kv[1]))
    return (f"{metric} ({sense} is better), best per profile: {'; '.join(parts)}. "
            f"Profiles won: {ranking} (of {len(profiles)}).{note}")


def drop(args: dict, rows: list[dict]) -> str:
    metric = args.get("metric", "f1")
    labels = [args["label"]] if args.get("label") else list(dict.fromkeys(r["label"] for r in rows))
    out = []
    for label in labels:
        mine = [r for r in rows if r["label"] == label and r.get(metric) is not None]
        if not mine:
            out.append(f"(drop {metric}: no results for {label})")
            continue
        ref_name = args.get("reference")
        ref = next((r for r in mine if r["profile"] == ref_name), None) if ref_name else \
            max(mine, key=lambda r: r.get("avg_w_bits") or 0)
        if ref is None:
            out.append(f"(drop {metric}: {label} has no {ref_name} result)")
            continue
        others = sorted((r for r in mine if r is not ref), key=lambda r: -(r.get("avg_w_bits") or 0))
        changes = ", ".join(f"{r['profile']} {signed(r[metric] - ref[metric])}" for r in others)
        name = f"{label}: " if len(labels) > 1 or args.get("label") else ""
        out.append(f"{name}{metric} against {ref['profile']} ({fmt(ref[metric])}): {changes or 'no other profile'}.")
    return " ".join(out)


RULES = {"compare": compare, "drop": drop}


def paired_se(ra: dict, rb: dict, metric: str) -> float | None:
    """Standard error of the mean per-question difference, when both rows kept their predictions
    (``_pred``: a predictions-*.jsonl of SQuAD eval) and share question ids."""
    pa, pb = ra.get("_pred"), rb.get("_pred")
    if metric not in ("em", "f1") or not pa or not pb:
        return None
    a, b = _per_question(pa, metric), _per_question(pb, metric)
    return se_of_mean(100.0 * (a[i] - b[i]) for i in a if i in b)


def mean_se(path: str | None, metric: str) -> float | None:
    """Standard error of a SQuAD metric over its questions (percentage points)."""
    if not path or metric not in ("em", "f1"):
        return None
    return se_of_mean(100.0 * x for x in _per_question(path, metric).values())


_CACHE: dict[tuple, dict] = {}


def _per_question(path: str, metric: str) -> dict[str, float]:
    p = Path(path)
    key = (str(path), metric, p.stat().st_mtime_ns if p.is_file() else 0)
    if key not in _CACHE:
        out = {}
        if p.is_file():
            for line in p.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    out[r["id"]] = float(r[metric])
        _CACHE[key] = out
    return _CACHE[key]
