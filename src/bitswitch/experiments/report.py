"""``bitswitch report``: one markdown file from finished runs, with tables, PNG plots and answers.

For every run directory (``RUN_DIR/run.json`` of :mod:`.runner`) the report states the research
question, the answer the numbers give (the experiment's ``answers:`` rules, else each section's
own summary, always computed), the model and data they come from (with the SmolLM2 caveat when
it applies), the size and device, and the command that reproduces them; then one section per
result kind (:mod:`.sections`). Plots go to ``<report stem>-plots/`` beside the report.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from ..errors import BitswitchError
from ..io import atomic_write_text
from .answers import evaluate_rule, verdict
from .runner import load_run
from .sections import Context, Section, StepResult, load_step, renderer

SMOLLM2_CAVEAT = ("`smollm2-135m` was distributed with its linear weights as Q4_1 (4-bit, blocks of 32): "
                  "they already lie on a 4-bit grid, so 8-bit results on it are near-lossless by construction "
                  "and 4-bit results with groups of 32 are optimistic.")
FINISHED = ("done", "cached", "skipped")   # "skipped": what run.json files from before call cached


def status_text(status) -> str:
    """A step's status as the report prints it: a step computed before reads as cached."""
    return "cached" if status in ("cached", "skipped") else str(status or "pending")


def write_report(run_dirs: list[str], out: str | Path, title: str = "bitswitch experiments",
                 argv: list[str] | None = None) -> tuple[Path, int]:
    """Render ``run_dirs`` into ``out``; returns (path, number of result sections)."""
    out = Path(out)
    if out.suffix.lower() != ".md":
        raise BitswitchError(f"--out {str(out)!r} must be a markdown file ending in .md, e.g. report.md")
    plot_dir = out.parent / f"{out.stem}-plots"
    runs = []
    for d in run_dirs:
        run = load_run(d)
        run["_dir"] = str(d)
        runs.append(run)
    cmd = "bitswitch " + shlex.join(argv) if argv else f"bitswitch report {' '.join(map(str, run_dirs))} --out {out}"
    blocks, glance, count, prefixes = [], [], 0, set()
    for run in runs:
        prefix = f"{run['experiment']}-{run['size']}"
        while prefix in prefixes:
            prefix += "-2"
        prefixes.add(prefix)
        ctx = Context(plot_dir, plot_dir.name, prefix)
        text, answers, n = render_run(run, ctx)
        blocks.append(text)
        count += n
        question = run.get("short") or run["question"]
        glance.append(f"| {run['experiment']} | {question} | {answers[0] if answers else 'no results yet'} |")
    head = [f"# {title}", "",
            f"Generated {time.strftime('%Y-%m-%d %H:%M')} by `{cmd}` from {len(runs)} run(s). Every answer "
            "below is computed from the tables under it; every section says which model, data and command "
            "produced it.", "", "## Answers at a glance", "",
            "One line per question, computed from its first answer rule: *yes* / *no* when a paired difference "
            "exceeds 2 standard errors, *not significant* when every difference is within 2 SE (no effect at "
            "this sample size). Details, every difference with its SE, are in each section.", "",
            "| experiment | question | answer |", "|---|---|---|", *glance, ""]
    atomic_write_text(out, "\n".join(head) + "\n" + "\n\n".join(blocks) + "\n")
    return out, count


def render_run(run: dict, ctx: Context) -> tuple[str, list[str], int]:
    """One experiment's part of the report: (markdown, answer sentences, sections rendered)."""
    items: dict[str, list[StepResult]] = {}
    missing = []
    for step in run["steps"]:
        res = load_step(run, step) if step.get("status") in FINISHED else None
        if res is None:
            missing.append(f"{step['id']} ({status_text(step.get('status'))})")
            continue
        items.setdefault(res.kind, []).append(res)
    rules = run.get("answers") or []
    ctx.ruled = {(r[next(iter(r))] or {}).get("kind", "eval-squad") for r in rules
                 if isinstance(r, dict) and len(r) == 1 and isinstance(r[next(iter(r))], dict)}
    kinds = sorted(items, key=lambda k: (renderer(k).order, k))
    sections: list[tuple[str, Section]] = []
    for kind in kinds:
        r = renderer(kind)
        sec = r.render(items[kind], ctx)
        sections.append((sec.title or r.title, sec))
    rows_by_kind = {k: (renderer(k).rows or (lambda _: []))(items[k]) for k in kinds}
    verdicts = [verdict(rule, rows_by_kind) for rule in rules]
    details = [evaluate_rule(rule, rows_by_kind) for rule in rules]
    details += [a for _, sec in sections for a in sec.answers]
    if not verdicts and details:
        verdicts = [first_sentence(details[0])]

    lines = [f"## {run['experiment']}: {run['question']}", ""]
    lines += ["**Answer (computed from the numbers below):**", ""]
    lines += [f"- **{v}**" for v in verdicts] or ["- No results yet: run the experiment first."]
    lines += [""]
    if details:
        lines += ["Details:", ""] + [f"- {a}" for a in details] + [""]
    if missing:
        lines += [f"*Not included (no finished results): {', '.join(missing)}; the answer covers the rest.*", ""]
    lines += provenance(run, items)
    if run.get("notes"):
        lines += [" ".join(str(run["notes"]).split()), ""]
    for title, sec in sections:
        lines += [f"### {title}", "", sec.body, ""]
    lines += ["<details><summary>The commands of every step</summary>", "", "```"]
    lines += [f"# {s['id']} [{status_text(s.get('status'))}, {s.get('seconds')} s]\nbitswitch {shlex.join(s['argv'])}"
              for s in run["steps"]]
    lines += ["```", "", "</details>", ""]
    return "\n".join(lines), verdicts, len(sections)


def first_sentence(text: str, limit: int = 160) -> str:
    """The first sentence of a section's computed summary, cut to ``limit`` characters."""
    head = text.split(". ")[0].rstrip(".")
    return head if len(head) <= limit else head[:limit - 1].rstrip() + "\u2026"


def provenance(run: dict, items: dict[str, list[StepResult]]) -> list[str]:
    """Model, data, size, device, versions and the reproducing command of a run."""
    models, data = _flag_values(run, "--model"), _flag_values(run, "--data", "--train-data", "--calib-data")
    meta = next((it.data for its in items.values() for it in its if isinstance(it.data.get("versions"), dict)), None)
    if meta is None:
        meta = next((it.data["summary"] for it in items.get("train", []) if it.data.get("summary")), {}) or {}
    versions = meta.get("versions") or {}
    seconds = sum(s.get("seconds") or 0 for s in run["steps"])
    out = [f"**Model:** {', '.join(f'`{m}`' for m in models) or '-'}. "
           f"**Data:** {', '.join(f'`{d}`' for d in data) or '-'}.", ""]
    if any("smollm2" in m.lower() for m in models):
        out += [f"**Caveat:** {SMOLLM2_CAVEAT}", ""]
    dev = meta.get("device")
    out += [f"**Size:** `{run['size']}` ({', '.join(f'{k}={v}' for k, v in (run.get('vars') or {}).items()) or '-'}); "
            f"{seconds / 60:.1f} min of step time"
            + (f" on {dev}" if dev else "")
            + (f"; torch {versions.get('torch')}, transformers {versions.get('transformers')}" if versions else "")
            + ".", "",
            f"**Reproduce:** `{run['command']}` then `bitswitch report {run.get('_dir', 'RUN_DIR')} --out report.md`.",
            ""]
    return out


def _flag_values(run: dict, *flags: str) -> list[str]:
    """Distinct values of ``flags`` over the steps' argv, leaving out the runner's own step directories."""
    cache = str(run.get("cache") or "\0")
    seen = []
    for s in run["steps"]:
        argv = s["argv"]
        for i, a in enumerate(argv[:-1]):
            v = argv[i + 1]
            if a in flags and not v.startswith(cache) and v not in seen:
                seen.append(v)
    return seen
