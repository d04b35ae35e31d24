"""Report sections, one renderer per result *kind*, kept in a registry so new commands plug in.

A step's kind comes from its output directory (:func:`load_step`): a ``results.json`` with a
top-level ``"kind"`` (sensitivity, search, attack, ...) names it; ``eval`` gives
``eval-<task>`` (``eval-squad``, ``eval-wikitext``, ``eval-lm-eval``); ``train`` and ``export``
are read from their own files. A renderer gets every step of its kind in one run (so rows of
several steps, e.g. the switchable model and the dedicated ones, share one table and one plot)
and returns a :class:`Section` (the registry and its types are in :mod:`.registry`, re-exported
here). ``rows`` turns results into the flat rows that answer rules
(:mod:`.answers`) compare. Register a new kind with::

    @register("sensitivity", title="Sensitivity", order=30, rows=my_rows)
    def render_sensitivity(items, ctx) -> Section: ...
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..profiles import safe_key
from ..results import markdown_table
from . import figures
from . import sections_analysis  # noqa: F401 - the analysis commands' renderers register on import
from .answers import drop, fmt, mean_se
from .runner import step_dir
from .registry import RENDERERS, Context, Renderer, Section, StepResult, register


def renderer(kind: str) -> Renderer:
    return RENDERERS.get(kind) or Renderer(kind, kind, 90, render_generic, generic_rows)


# -- loading --------------------------------------------------------------------------------------
def load_step(run: dict, step: dict) -> StepResult | None:
    """The results of a finished step, or None when it has none (pending, failed, deleted)."""
    d = step_dir(step["out"], run.get("_dir"))
    res = _read_json(d / "results.json")
    if isinstance(res, dict) and res.get("kind"):
        return StepResult(run, step, str(res["kind"]), res, d)
    cmd = step["command"]
    if cmd == "eval" and isinstance(res, dict):
        task = str(res.get("task", ""))
        return StepResult(run, step, "eval-lm-eval" if task.startswith("lm-eval:") else f"eval-{task}", res, d)
    if cmd == "train" and (d / "summary.json").is_file():
        metrics = [json.loads(line) for line in _read_text(d / "metrics.jsonl").splitlines() if line.strip()]
        config = yaml.safe_load(_read_text(d / "config.yaml")) or {}
        return StepResult(run, step, "train", {"summary": _read_json(d / "summary.json"), "metrics": metrics,
                                                "config": config}, d)
    if cmd == "export" and (d / "quant_map.json").is_file():
        return StepResult(run, step, "export", _read_json(d / "quant_map.json"), d)
    if isinstance(res, dict):
        return StepResult(run, step, f"{cmd}", res, d)
    return None


def _read_json(p: Path):
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except ValueError:
        return None


def _read_text(p: Path) -> str:
    return p.read_text() if p.is_file() else ""


def _mib(v) -> float | None:
    return None if v is None else v / 2**20


def _one_label(rows) -> bool:
    return len({r["label"] for r in rows}) <= 1


# -- eval: SQuAD ----------------------------------------------------------------------------------
def squad_rows(items: list[StepResult]) -> list[dict]:
    rows = []
    for it in items:
        for r in it.data.get("records", []):
            rows.append({"label": it.label, "profile": r["profile"], "em": r.get("em"), "f1": r.get("f1"),
                         "answer_ppl": r.get("answer_ppl"), "n": r.get("n"), "avg_w_bits": r.get("avg_w_bits"),
                         "weight_bytes": r.get("weight_bytes"), "questions_per_s": r.get("questions_per_s"),
                         "_pred": str(it.dir / f"predictions-{safe_key(r['profile'])}.jsonl")})
    return rows


@register("eval-squad", "SQuAD v1.1: EM / F1 and answer perplexity per profile", order=10, rows=squad_rows)
def render_squad(items: list[StepResult], ctx: Context) -> Section:
    rows = squad_rows(items)
    for r in rows:
        r["f1_se"] = mean_se(r["_pred"], "f1")
        r["em_se"] = mean_se(r["_pred"], "em")
        r["weight_mib"] = _mib(r["weight_bytes"])
    cols = ["profile", "avg_w_bits", "weight_mib", "em", "f1", "f1_se", "answer_ppl", "n", "questions_per_s"]
    parts = [markdown_table(rows, cols if _one_label(rows) else ["label", *cols])]
    if not _one_label(rows):
        parts.append("F1 side by side (rows: profiles, columns: runs):\n\n" + pivot(rows, "f1"))
    fig = figures.metrics_vs_bits(rows, ["em", "f1"], ctx.figure("squad-vs-bits"), "SQuAD")
    parts.append(ctx.image(fig, "SQuAD EM and F1 against average weight bits"))
    if not _one_label(rows):
        bars = figures.grouped_bars(rows, "f1", ctx.figure("squad-f1-bars"), "SQuAD F1 per profile")
        parts.append(ctx.image(bars, "SQuAD F1 per profile and run"))
    n = sorted({r["n"] for r in rows if r.get("n")})
    parts.append(f"`f1_se`: standard error of F1 over the {', '.join(map(str, n))} questions (error bars in the "
                 "plots: one SE); differences smaller than about twice it are noise.")
    if not _one_label(rows):
        parts.append(paired_table(rows, "f1"))
    answers = [] if "eval-squad" in ctx.ruled else [drop({"metric": "f1"}, rows)]
    return Section("", "\n\n".join(parts), answers)


def paired_table(rows: list[dict], metric: str) -> str:
    """Every pair of runs at every profile they share: the paired difference, its SE and whether it
    exceeds 2 SE (per-question scores of the same questions)."""
    from .answers import paired_se, significant

    labels = list(dict.fromkeys(r["label"] for r in rows))
    idx = {(r["label"], r["profile"]): r for r in rows if r.get(metric) is not None}
    profiles = list(dict.fromkeys(r["profile"] for r in sorted(rows, key=lambda r: -(r.get("avg_w_bits") or 0))))
    out = []
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            for p in profiles:
                if (a, p) in idx and (b, p) in idx:
                    d = idx[(a, p)][metric] - idx[(b, p)][metric]
                    se = paired_se(idx[(a, p)], idx[(b, p)], metric)
                    out.append({"A": a, "B": b, "profile": p, f"{metric} A-B": d, "paired_se": se,
                                "beyond_2se": None if se is None else ("yes" if significant(d, se) else "no")})
    if not out:
        return ""
    return (f"Paired differences of {metric} (A minus B over the same questions):\n\n"
            + markdown_table(out, ["A", "B", "profile", f"{metric} A-B", "paired_se", "beyond_2se"]))


def pivot(rows: list[dict], metric: str) -> str:
    labels = list(dict.fromkeys(r["label"] for r in rows))
    profiles = list(dict.fromkeys(r["profile"] for r in sorted(rows, key=lambda r: -(r.get("avg_w_bits") or 0))))
    value = {(r["label"], r["profile"]): r.get(metric) for r in rows}
    table = [{"profile": p, **{lab: value.get((lab, p)) for lab in labels}} for p in profiles]
    return markdown_table(table, ["profile", *labels])


# -- eval: perplexity -----------------------------------------------------------------------------
def ppl_rows(items: list[StepResult]) -> list[dict]:
    return [{"label": it.label, "profile": r["profile"], "ppl": r.get("ppl"), "tokens": r.get("tokens"),
             "avg_w_bits": r.get("avg_w_bits"), "weight_bytes": r.get("weight_bytes")}
            for it in items for r in it.data.get("records", [])]


@register("eval-wikitext", "WikiText perplexity per profile", order=15, rows=ppl_rows)
def render_ppl(items: list[StepResult], ctx: Context) -> Section:
    rows = ppl_rows(items)
    for r in rows:
        r["weight_mib"] = _mib(r["weight_bytes"])
    cols = ["profile", "avg_w_bits", "weight_mib", "ppl", "tokens"]
    parts = [markdown_table(rows, cols if _one_label(rows) else ["label", *cols])]
    fig = figures.metrics_vs_bits(rows, ["ppl"], ctx.figure("ppl-vs-bits"), "WikiText")
    parts.append(ctx.image(fig, "perplexity against average weight bits"))
    answers = [] if "eval-wikitext" in ctx.ruled else [drop({"metric": "ppl"}, rows)]
    return Section("", "\n\n".join(parts), answers)


# -- eval: lm-eval --------------------------------------------------------------------------------
_META = {"profile", "avg_w_bits", "weight_bytes", "seconds", "peak_rss_mb", "adapter"}


def lm_eval_rows(items: list[StepResult]) -> list[dict]:
    return [{"label": it.label, **{k: v for k, v in r.items() if not isinstance(v, (dict, list))}}
            for it in items for r in it.data.get("records", [])]


@register("eval-lm-eval", "Zero-shot tasks (lm-evaluation-harness)", order=20, rows=lm_eval_rows)
def render_lm_eval(items: list[StepResult], ctx: Context) -> Section:
    rows = lm_eval_rows(items)
    metrics = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in _META and k != "label"
               and all(isinstance(r.get(k), (int, float, type(None))) for r in rows)]
    parts = [markdown_table(rows, ["label", "profile", "avg_w_bits", *metrics])]
    if metrics:
        fig = figures.metrics_vs_bits(rows, metrics[:3], ctx.figure("lm-eval-vs-bits"), "lm-eval")
        parts.append(ctx.image(fig, "lm-eval metrics against average weight bits"))
    answers = [] if "eval-lm-eval" in ctx.ruled or not metrics else [drop({"metric": metrics[0]}, rows)]
    return Section("", "\n\n".join(parts), answers)


# -- train ----------------------------------------------------------------------------------------
def train_rows(items: list[StepResult]) -> list[dict]:
    rows = []
    for it in items:
        c, m = it.data["config"], it.data["metrics"]
        tail = m[-max(1, len(m) // 10):] if m else []
        mean = lambda k: sum(r[k] for r in tail if k in r) / len(tail) if tail and k in tail[0] else None  # noqa: E731
        rows.append({"label": it.label, "schedule": c.get("schedule"), "keying": c.get("keying"),
                     "profiles": " ".join(c.get("profiles") or []), "steps": c.get("steps"),
                     "batch_size": c.get("batch_size"), "lr": c.get("lr"), "distill": c.get("distill"),
                     "consistency": c.get("consistency"), "final_ce": mean("ce"), "final_loss": mean("loss"),
                     "s_per_step": (sum(r["seconds"] for r in m) / len(m)) if m else None,
                     "tokens_per_s": (sum(r["tokens_per_s"] for r in m) / len(m)) if m else None})
    return rows


@register("train", "Training runs", order=70, rows=train_rows)
def render_train(items: list[StepResult], ctx: Context) -> Section:
    rows = train_rows(items)
    parts = [markdown_table(rows, ["label", "schedule", "keying", "profiles", "steps", "batch_size", "lr",
                                   "distill", "consistency", "final_ce", "final_loss", "s_per_step",
                                   "tokens_per_s"]),
             "`final_ce` / `final_loss`: mean over the last tenth of the steps (the loss adds the distillation "
             "and consistency terms); `s_per_step` is wall time on the run's device."]
    curves = {it.label: [(r["step"], r.get("ce", r["loss"])) for r in it.data["metrics"]] for it in items}
    if any(curves.values()):
        fig = figures.loss_curves(curves, ctx.figure("train-loss"), "training cross-entropy")
        parts.append(ctx.image(fig, "training cross-entropy against step"))
    return Section("", "\n\n".join(parts), [])


# -- export ---------------------------------------------------------------------------------------
def export_rows(items: list[StepResult]) -> list[dict]:
    rows = []
    for it in items:
        b = it.data.get("bytes", {})
        rows.append({"label": it.label, "profile": it.data.get("profile"), "merge": it.data.get("merge"),
                     "avg_w_bits": it.data.get("avg_w_bits"),
                     "quantized_mib": _mib(sum(b.get(k, 0) for k in ("codes", "scales", "zeros"))),
                     "unquantized_mib": _mib(b.get("unquantized")), "lora_mib": _mib(b.get("lora")),
                     "file_bytes": it.data.get("weights_file_bytes"),
                     "file_mib": _mib(it.data.get("weights_file_bytes"))})
    return rows


@register("export", "Exported models: exact bytes on disk", order=60, rows=export_rows)
def render_export(items: list[StepResult], ctx: Context) -> Section:
    rows = export_rows(items)
    parts = [markdown_table(rows, ["label", "profile", "merge", "avg_w_bits", "quantized_mib", "unquantized_mib",
                                   "lora_mib", "file_mib"]),
             "Bytes of `model.safetensors` as written by `bitswitch export` (packed codes, scales, zero points; "
             "embeddings and norms unquantized; LoRA factors kept apart with merge `after`)."]
    answers = []
    if "export" not in ctx.ruled and rows:
        big = max(rows, key=lambda r: r["file_bytes"] or 0)
        answers.append("Exact weight files: " + ", ".join(
            f"{r['profile']} {fmt(r['file_mib'])} MiB"
            + (f" ({r['file_bytes'] / big['file_bytes']:.0%} of {big['profile']})" if r is not big else "")
            for r in rows) + ".")
    return Section("", "\n\n".join(parts), answers)


# -- anything else --------------------------------------------------------------------------------
def generic_rows(items: list[StepResult]) -> list[dict]:
    rows = []
    for it in items:
        for r in it.data.get("records", []) if isinstance(it.data.get("records"), list) else []:
            if isinstance(r, dict):
                rows.append({"label": it.label, **{k: v for k, v in r.items() if not isinstance(v, (dict, list))}})
    return rows


def render_generic(items: list[StepResult], ctx: Context) -> Section:
    """Kinds without a renderer: their records as a table (or the top-level numbers), said plainly."""
    rows = generic_rows(items)
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))[:12]
        body = markdown_table(rows, cols)
    else:
        rows = [{"label": it.label, **{k: v for k, v in it.data.items() if isinstance(v, (int, float, str))
                                       and k not in ("command", "started", "host")}} for it in items]
        body = markdown_table(rows, list(dict.fromkeys(k for r in rows for k in r))[:12])
    kind = items[0].kind
    return Section("", body + f"\n\n(No renderer is registered for kind `{kind}` yet: the raw numbers are shown.)",
                   [])
