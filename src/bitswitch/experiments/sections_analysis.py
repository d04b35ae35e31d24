"""Report sections of the analysis commands, whose results.json carry a top-level ``"kind"``:
``attack`` (transferability heatmap, RPI), ``sensitivity`` (heatmap, most and least sensitive,
rank agreement between measures) and ``search`` (searched profiles against uniform ones, Pareto
front, exact bytes)."""

from __future__ import annotations

import math

from ..results import higher_is_better, markdown_table, spearman
from . import figures
from .answers import fmt, significant, signed
from .registry import Context, Section, StepResult, register


# -- attack: transferability and RPI --------------------------------------------------------------
def attack_rows(items: list[StepResult]) -> list[dict]:
    """One row per (attack, crafted at, evaluated at): label = where it was crafted, profile = where replayed."""
    rows = []
    for it in items:
        for r in it.data.get("records", []):
            label = r["craft"] if len(items) == 1 else f"{it.label}: {r['craft']}"
            rows.append({"label": label, "profile": r["eval"], "attack": r.get("attack"), "em": r.get("em"),
                         "f1": r.get("f1"), "f1_drop": r.get("f1_drop"), "success_rate": r.get("success_rate"),
                         "clean_f1": r.get("clean_f1")})
    return rows


@register("attack", "Adversarial robustness: transferability between precisions and RPI", order=40,
          rows=attack_rows)
def render_attack(items: list[StepResult], ctx: Context) -> Section:
    parts, answers = [], []
    for k, it in enumerate(items):
        d = it.data
        name = "" if len(items) == 1 else f"{it.label}: "
        rpi = d.get("rpi") or {}
        parts.append(f"{name}{d.get('n')} questions; crafted at {', '.join(map(str, d.get('craft', [])))}; "
                     f"replayed at {', '.join(map(str, d.get('eval', [])))}"
                     + (f"; RPI over {', '.join(rpi.get('profiles', []))} with p={rpi.get('p')} "
                        f"({rpi.get('granularity')}, attacker averages {rpi.get('eot')} draws)" if rpi else "") + ".")
        clean = [{"setting": s, **v} for s, v in (d.get("clean") or {}).items()]
        parts.append("Clean accuracy per setting:\n\n" + markdown_table(clean, ["setting", "em", "f1", "answer_ppl", "n"]))
        for attack, r in (d.get("results") or {}).items():
            params = ", ".join(f"{a}={b}" for a, b in (r.get("params") or {}).items())
            direct = [{"craft": row, **v, **(r.get("craft_stats") or {}).get(row, {}),
                       "clean_f1": (d.get("clean") or {}).get(row, {}).get("f1")}
                      for row, v in (r.get("direct") or {}).items()]
            parts.append(f"**{attack}** ({params}), attacked at the setting it was crafted at:\n\n" + markdown_table(
                direct, ["craft", "clean_f1", "f1", "f1_drop", "success_rate", "mean_edits"]))
            matrix = r.get("matrix") or {}
            rows = list(matrix)
            cols = list(dict.fromkeys(c for m in matrix.values() for c in m))
            parts.append("F1 drop (clean F1 minus attacked F1), crafted at row, replayed at column:\n\n" + markdown_table(
                [{"crafted at": row, **{c: matrix[row].get(c, {}).get("f1_drop") for c in cols}} for row in rows],
                ["crafted at", *cols]))
            if rows and cols:
                fig = figures.heatmap([[matrix[row].get(c, {}).get("f1_drop") for c in cols] for row in rows], rows,
                                      cols, ctx.figure(f"transfer-{k}-{attack}"),
                                      f"{attack}: F1 drop, crafted at row, replayed at column", "F1 drop",
                                      fmt="{:.1f}")
                parts.append(ctx.image(fig, f"transferability heatmap of {attack}"))
            transfer = transfer_sentence(matrix)
            s = r.get("rpi_summary")
            if s and s.get("recovered_adaptive_se") is not None:   # the question's one line first
                answers.append(f"{name}{attack}: {rpi_verdict(s)}; {transfer}")
            answers.append(f"{name}{attack}: {transfer}")
            if s:
                parts.append("RPI against the fixed profiles of its set (means over them):\n\n" + markdown_table(
                    [{"what": a, "value": b} for a, b in s.items() if a != "profiles"], ["what", "value"]))
                answers.append(
                    f"{name}{attack}, RPI: "
                    + (f"costs {fmt(s['clean_cost'])}" if s["clean_cost"] >= 0 else f"gains {fmt(-s['clean_cost'])}")
                    + f" clean F1 ({fmt(s['clean_f1_fixed_mean'])} "
                    f"at fixed profiles, {fmt(s['clean_f1_rpi'])} with RPI); under attack it "
                    f"{_gain(s['recovered_adaptive'])} against the adaptive (EOT) attacker "
                    f"({fmt(s['attacked_f1_rpi_adaptive'])} vs {fmt(s['attacked_f1_fixed_mean'])})"
                    # a diagonal matrix replays no fixed-profile examples under RPI: no transfer figure
                    + (" and was not measured against transferred examples."
                       if s.get("recovered_transfer") is None else
                       f" and {_gain(s['recovered_transfer'])} against examples crafted at fixed profiles."))
    return Section("", "\n\n".join(parts), answers)


def transfer_sentence(matrix: dict) -> str:
    """Mean F1 drop where the examples were crafted (diagonal) against at the other fixed profiles."""
    fixed = [r for r in matrix if r != "rpi"]
    diag = [matrix[r][r]["f1_drop"] for r in fixed if r in matrix[r] and matrix[r][r].get("f1_drop") is not None]
    off = [v["f1_drop"] for r in fixed for c, v in matrix[r].items()
           if c != r and c != "rpi" and v.get("f1_drop") is not None]
    if not diag or not off:
        return "not enough cells to compare crafted-at and transferred drops."
    md, mo = sum(diag) / len(diag), sum(off) / len(off)
    ratio = f" ({mo / md:.0%} of it transfers)" if md > 0 else ""
    return (f"examples lose {fmt(md)} F1 on average at the profile they were crafted at and {fmt(mo)} at the other "
            f"profiles{ratio}.")


def rpi_verdict(s: dict) -> str:
    """Does RPI defend? Its attacked-F1 recovery against the adaptive (EOT) attacker, paired over
    questions, against 2 standard errors."""
    d, se = s["recovered_adaptive"], s["recovered_adaptive_se"]
    word = ("yes" if d > 0 else "no, it hurts") if significant(d, se) else "not significant"
    return f"RPI defends: {word} ({signed(d)} \u00b1 {fmt(se)} attacked F1 against the adaptive attacker)"


def _gain(v: float) -> str:
    return f"recovers {fmt(v)} F1" if v >= 0 else f"loses a further {fmt(-v)} F1 ({signed(v)})"


# -- sensitivity: which layers / units lose most ----------------------------------------------------
def sensitivity_rows(items: list[StepResult]) -> list[dict]:
    return [{"label": it.label, "profile": r["name"], "damage": r.get("damage"), "value": r.get("value"),
             "delta": r.get("delta"), "layer": r.get("layer"), "role": r.get("role")}
            for it in items for r in it.data.get("records", [])]


@register("sensitivity", "Sensitivity of layers and units to lower precision", order=30, rows=sensitivity_rows)
def render_sensitivity(items: list[StepResult], ctx: Context) -> Section:
    parts, answers = [], []
    for k, it in enumerate(items):
        d, recs = it.data, [r for r in it.data.get("records", []) if r.get("damage") is not None]
        src = d.get("source", "measured")
        what = (f"{it.label}: {d.get('granularity')} granularity, {src}"
                + (f" on {d.get('metric')}" if src == "measured" else " proxy")
                + f", from {d.get('base')} with one {d.get('granularity')} at a time at {d.get('probe')}, "
                  f"{d.get('n')} {'tokens' if d.get('metric') == 'ppl' else 'questions'}")
        top = sorted(recs, key=lambda r: -r["damage"])
        cols = ["name", "value", "delta", "damage"] if src == "measured" else ["name", "damage"]
        parts.append(f"**{what}.** The ten most sensitive:\n\n" + markdown_table(top[:10], cols))
        layers = sorted({r["layer"] for r in recs if r.get("layer") is not None})
        # the grid is layers x roles; head has no layer, so it is in the table above, not the grid
        roles = list(dict.fromkeys(r["role"] for r in recs if r.get("role") and r.get("layer") is not None))
        if layers and roles:       # units: layers x roles
            cell = {(r["layer"], r["role"]): r["damage"] for r in recs if r.get("role")}
            matrix, rows, cols_ = [[cell.get((lay, ro)) for ro in roles] for lay in layers], [f"L{x}" for x in layers], roles
        else:                      # layers: one column
            matrix, rows, cols_ = [[r["damage"]] for r in recs], [r["name"] for r in recs], ["damage"]
        if matrix:
            fig = figures.heatmap(matrix, rows, cols_, ctx.figure(f"sensitivity-{k}"), f"damage: {what}", "damage")
            parts.append(ctx.image(fig, f"sensitivity heatmap ({it.label})"))
        if top:
            named = lambda rs: ", ".join(f"{r['name']} ({fmt(r['damage'])})" for r in rs)  # noqa: E731
            least = [r for r in top[-3:][::-1] if r not in top[:3]]
            answers.append(f"{it.label}: most sensitive {named(top[:3])}"
                           + (f"; least {named(least)}." if least else "."))
        rho = d.get("spearman")
        if rho and rho.get("rho") is not None:
            answers.append(f"{it.label} against {rho['against']}: Spearman rank correlation {rho['rho']:.2f} over "
                           f"{rho['n']} {d.get('granularity')}s.")
    for a, b in ((a, b) for i, a in enumerate(items) for b in items[i + 1:]):   # do the measures agree?
        if a.data.get("granularity") == b.data.get("granularity"):
            rho = _spearman(a.data.get("records", []), b.data.get("records", []))
            if rho is not None:
                answers.append(f"{a.label} and {b.label} rank the {a.data.get('granularity')}s with Spearman "
                               f"correlation {rho:.2f}.")
    return Section("", "\n\n".join(parts), answers)


def _spearman(ra: list[dict], rb: list[dict]) -> float | None:
    """Rank correlation of two sensitivity runs' damages over the units both measured; None for fewer
    than 3 shared units or a constant side."""
    a = {r["name"]: r["damage"] for r in ra if r.get("damage") is not None}
    b = {r["name"]: r["damage"] for r in rb if r.get("damage") is not None}
    names = [n for n in a if n in b]
    if len(names) < 3:
        return None
    rho = spearman([a[n] for n in names], [b[n] for n in names])
    return None if math.isnan(rho) else rho


# -- search: searched profiles, Pareto front, exact bytes -------------------------------------------
def search_rows(items: list[StepResult]) -> list[dict]:
    return [{**{k: v for k, v in r.items() if not isinstance(v, (dict, list))}, "label": it.label,
             "profile": r["label"], "profile_text": r.get("profile")}
            for it in items for r in it.data.get("records", [])]


@register("search", "Searched mixed-precision profiles and the Pareto front", order=35, rows=search_rows)
def render_search(items: list[StepResult], ctx: Context) -> Section:
    parts, answers = [], []
    for k, it in enumerate(items):
        d, recs = it.data, it.data.get("records", [])
        metric = d.get("metric") or "f1"
        up = higher_is_better(metric)
        rows = [{**r, "weight_mib": (r.get("weight_bytes") or 0) / 2**20} for r in recs]
        parts.append(f"**{it.label}**: {d.get('method')} search over weight bits {d.get('candidates')} from "
                     f"{d.get('base')}, budgets {d.get('budgets')}, {metric} on {d.get('n')} "
                     f"{'questions' if d.get('task') == 'squad' else 'tokens'}.\n\n" + markdown_table(
                         rows, ["label", "kind", metric, "drop", "avg_w_bits", "weight_mib", "vs_fp16",
                                "predicted_damage", "on_front"]))
        for r in recs:
            if r.get("kind") == "searched":
                parts.append(f"- `{r['label']}`: `{r.get('profile')}`")
        if d.get("pareto") and recs:
            pts = [{"avg_w_bits": r["avg_w_bits"], metric: r[metric], "pareto": r.get("on_front"), "name": r["label"]}
                   for r in recs if r.get(metric) is not None]
            fig = figures.pareto(pts, "avg_w_bits", metric, ctx.figure(f"pareto-{k}"),
                                 f"{it.label}: {metric} against average weight bits", higher_is_better=up)
            parts.append(ctx.image(fig, f"Pareto front ({it.label})"))
        uniform = sorted((r for r in recs if r.get("kind") == "uniform"), key=lambda r: r["avg_w_bits"])
        for r in (r for r in recs if r.get("kind") == "searched"):
            s = (f"{it.label}, {r['label']}: {fmt(r['avg_w_bits'])} average bits, "
                 f"{fmt((r.get('weight_bytes') or 0) / 2**20)} MiB of weights ({fmt(100 * (r.get('vs_fp16') or 0))}% "
                 f"of fp16), {metric} {fmt(r.get(metric))} ({'drop' if up else 'increase'} {fmt(r.get('drop'))} "
                 f"against {d.get('base')})")
            below = [u for u in uniform if u["avg_w_bits"] <= r["avg_w_bits"]]
            above = [u for u in uniform if u["avg_w_bits"] > r["avg_w_bits"]]
            near = ([below[-1]] if below else []) + ([above[0]] if above else [])
            if near:
                s += "; uniform: " + ", ".join(f"{u['label']} {fmt(u.get(metric))} at {fmt(u['avg_w_bits'])} bits"
                                               for u in near)
            if d.get("pareto"):
                s += "; on the Pareto front" if r.get("on_front") else "; not on the Pareto front"
            answers.append(s + ".")
    return Section("", "\n\n".join(parts), answers)
