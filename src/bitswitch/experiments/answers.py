"""Answer sentences computed from result rows, never written by hand.

A *row* is one measurement: ``{"label", "profile", "avg_w_bits", <metrics>...}`` (renderers turn
each kind's results into rows). An experiment's ``answers:`` list names rules:

- ``compare: {kind, metric, labels: [A, B, ...], profiles: [...], better: higher|lower}``: the
  labels side by side at every profile they share; with two labels, the difference A - B per
  profile and, for SQuAD EM/F1, its paired standard error over the same questions;
- ``drop: {kind, metric, label, reference}``: each profile's change against ``reference`` (default:
  the label's highest-bit profile);
- ``top: {kind, metric, label, n}``: the ``n`` rows of ``label`` with the largest ``metric`` (e.g.
  the most sensitive units by damage), and the smallest.
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
        raise BitswitchError(f"answer rule {rule!r} must be one of compare: {{...}}, drop: {{...}} or top: {{...}}")
    (name, args), = rule.items()
    if name not in RULES or not isinstance(args, dict):
        raise BitswitchError(f"unknown answer rule {name!r}: use compare, drop or top")
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


def top(args: dict, rows: list[dict]) -> str:
    metric, n = args.get("metric", "damage"), int(args.get("n", 3))
    label = args.get("label") or rows[0]["label"]
    mine = sorted((r for r in rows if r["label"] == label and r.get(metric) is not None), key=lambda r: -r[metric])
    if not mine:
        return f"(top {metric}: no results for {label})"
    named = lambda rs: ", ".join(f"{r['profile']} ({fmt(r[metric])})" for r in rs)  # noqa: E731
    least = [r for r in mine[-n:][::-1] if r not in mine[:n]]
    return (f"{label}: largest {metric} {named(mine[:n])} of {len(mine)}"
            + (f"; smallest {named(least)}" if least else "") + ".")


RULES = {"compare": compare, "drop": drop, "top": top}


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


# -- one-line verdicts ----------------------------------------------------------------------------
SIG = 2.0   # a difference counts when it exceeds SIG standard errors


def differences(args: dict, rows: list[dict]) -> tuple[str, str, list[tuple[str, float, float | None]]]:
    """``(A, B, [(profile, A - B, paired SE or None)])`` of a two-label ``compare`` rule."""
    metric = args.get("metric", "f1")
    idx = _index(rows, metric)
    labels = [str(x) for x in args.get("labels") or dict.fromkeys(r["label"] for r in rows)]
    labels = [lab for lab in labels if any(k[0] == lab for k in idx)]
    if len(labels) < 2:
        return "", "", []
    a, b = labels[:2]
    profiles = _profiles([r for r in rows if r.get(metric) is not None], args.get("profiles"), [a, b])
    return a, b, [(p, idx[(a, p)][metric] - idx[(b, p)][metric], paired_se(idx[(a, p)], idx[(b, p)], metric))
                  for p in profiles]


def significant(d: float, se: float | None) -> bool:
    """Whether ``d`` exceeds :data:`SIG` standard errors (never, without a standard error; a nonzero
    difference with a zero SE, every question moved alike, always)."""
    return se is not None and abs(d) > SIG * se


def _strength(t: tuple) -> float:
    """|difference| in standard errors (infinite for a nonzero difference with SE 0)."""
    _, d, se = t
    return abs(d) / se if se else (float("inf") if d else 0.0)


def delta_text(metric: str, p: str, d: float, se: float | None) -> str:
    return f"\u0394{metric} = {signed(d)}" + (f" \u00b1 {fmt(se)}" if se is not None else "") + f" at {p}"


def verdict(rule: dict, rows_by_kind: dict[str, list[dict]]) -> str:
    """The one-line answer of one rule: ``yes`` / ``no`` / ``not significant`` / ``mixed`` with the key
    number, computed from the same rows as the rule's sentence.

    ``compare`` with two labels A, B (the first two listed): with ``test: better`` (default) "yes"
    means A is better than B beyond 2 paired standard errors at some profile and worse at none,
    "no" the reverse, "mixed" both, "not significant" no difference beyond 2 SE (the key number is
    then the largest difference in SE units). With ``test: equal`` (can A replace B?) "yes" means
    no difference beyond 2 SE at any profile (no effect at this sample size), "no" that one exists.
    ``drop``: the largest loss against the reference, and whether it exceeds 2 SE. Three or more
    labels: the label best at most profiles (no standard error: see the pairwise rules).
    """
    if not isinstance(rule, dict) or len(rule) != 1:
        return "not answered: the rule is malformed"
    (name, args), = rule.items()
    args = args if isinstance(args, dict) else {}
    rows = rows_by_kind.get(args.get("kind", "eval-squad"), [])
    metric = args.get("metric", "f1")
    up = higher_is_better(metric, args.get("better"))
    if not rows:
        return "no results yet"
    if name == "drop":
        return _drop_verdict(args, rows, metric, up)
    if name == "top":
        return top(args, rows).rstrip(".")
    labels = [str(x) for x in args.get("labels") or []]
    if len(labels) > 2:
        idx = _index(rows, metric)
        present = [lab for lab in labels if any(k[0] == lab for k in idx)]
        profiles = _profiles([r for r in rows if r.get(metric) is not None], args.get("profiles"), present)
        if len(present) < 2 or not profiles:
            return "no results yet"
        wins = {lab: 0 for lab in present}
        for p in profiles:
            wins[max(present, key=lambda lab: idx[(lab, p)][metric] * (1 if up else -1))] += 1
        best = max(wins, key=wins.get)
        return f"{best} best at {wins[best]} of {len(profiles)} profiles by {metric} (no SE across 3+ runs: see the pairs)"
    a, b, diffs = differences(args, rows)
    if not diffs:
        return "no results yet"
    tested = [(p, d, se) for p, d, se in diffs if se is not None]
    if not tested:
        p, d, se = max(diffs, key=lambda t: abs(t[1]))
        return f"not testable: no per-question {metric} to pair ({a} \u2212 {b}: {delta_text(metric, p, d, se)})"
    better = [t for t in tested if significant(t[1], t[2]) and (t[1] > 0) == up]
    worse = [t for t in tested if significant(t[1], t[2]) and (t[1] > 0) != up]
    key = max(tested, key=_strength)
    n = f"{len(tested)} profile" + ("s" if len(tested) != 1 else "")
    at_all = f"at all {n}" if len(tested) != 1 else f"at its {n}"
    if args.get("test") == "equal":
        if better or worse:
            k = max(better + worse, key=_strength)
            return f"no: {a} differs from {b} beyond 2 SE at {len(better + worse)} of {n} ({delta_text(metric, *k)})"
        return f"yes, no effect at this sample size: {a} within 2 SE of {b} {at_all} (largest {delta_text(metric, *key)})"
    if better and worse:
        return f"mixed: {a} better than {b} beyond 2 SE at {len(better)}, worse at {len(worse)} of {n} ({delta_text(metric, *key)})"
    if better:
        k = max(better, key=_strength)
        return f"yes: {a} beats {b} beyond 2 SE at {len(better)} of {n} ({delta_text(metric, *k)})"
    if worse:
        k = max(worse, key=_strength)
        return f"no: {a} is worse than {b} beyond 2 SE at {len(worse)} of {n} ({delta_text(metric, *k)})"
    return f"not significant: {a} vs {b} within 2 SE {at_all} (largest {delta_text(metric, *key)})"


def _drop_verdict(args: dict, rows: list[dict], metric: str, up: bool) -> str:
    label = args.get("label") or rows[0]["label"]
    mine = [r for r in rows if r["label"] == label and r.get(metric) is not None]
    ref_name = args.get("reference")
    ref = next((r for r in mine if r["profile"] == ref_name), None) if ref_name else \
        max(mine, key=lambda r: r.get("avg_w_bits") or 0, default=None)
    others = [r for r in mine if r is not ref]
    if ref is None or not others:
        return "no results yet"
    worst = min(others, key=lambda r: (r[metric] - ref[metric]) * (1 if up else -1))
    d, se = worst[metric] - ref[metric], paired_se(worst, ref, metric)
    lost = (d < 0) == up and d != 0
    if not lost:
        return f"no loss: no profile of {label} is below {ref['profile']} by {metric}"
    state = "beyond 2 SE" if significant(d, se) else "within 2 SE (not significant)" if se else "no SE"
    return f"largest loss against {ref['profile']}: {delta_text(metric, worst['profile'], d, se)}, {state}"
