"""Keep finished runs' results without their weights, so that a report can be rebuilt later.

    archive_runs(["runs/accuracy-medium", "runs/cpt-medium"], "benchmarks/results/medium")
    # -> medium/accuracy-medium/run.json, medium/cpt-medium/run.json, medium/cache/<step>/...

Run directories and their cache are scratch space (adapters and checkpoints take megabytes per step);
what a report reads is small: each run's ``run.json`` and, per step, its records (JSON, JSONL,
markdown, YAML, plots). Those are copied into ``OUT/<run name>`` and ``OUT/cache/<step dir>``, with
each step's ``out`` rewritten relative to the run directory (``../cache/<step dir>``), so that
``bitswitch report OUT/<run name>`` renders the same tables and answers from anywhere. The steps'
completion markers come along: ``bitswitch run --out OUT/<run name> --cache OUT/cache`` then finds
the archived steps cached (a step that needs an archived step's weights, e.g. a new eval of its
adapters, must rerun that step first).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import BitswitchError
from ..io import atomic_write_json
from .runner import RUN_FILE, load_run, step_dir

KEEP = {".json", ".jsonl", ".md", ".png", ".yaml", ".csv", ".txt"}   # records, never weights
SKIP_DIR = "adapters"                                                # weights; checkpoint*: resume state


def _records(step_dir: Path):
    """Every record file under ``step_dir``, outside weight folders and lock files."""
    for p in sorted(step_dir.rglob("*")):
        rel = p.relative_to(step_dir)
        if p.is_file() and p.suffix.lower() in KEEP and not p.name.startswith(".") and \
                not any(part == SKIP_DIR or part.startswith("checkpoint") for part in rel.parts[:-1]):
            yield p, rel


def archive_runs(run_dirs: list[str | Path], out: str | Path) -> list[Path]:
    """Copy each run's record and its steps' results (no weights) into ``out``; returns the archived
    run directories. A step without an output directory (never run) is kept as it is, pending."""
    out = Path(out)
    cache = out / "cache"
    done = []
    for d in map(Path, run_dirs):
        run = load_run(d)
        dest = out / d.name
        if dest.resolve() == d.resolve():
            raise BitswitchError(f"{d} is already in {out}: archive into another folder")
        steps = []
        for step in run.get("steps", []):
            step = dict(step)
            src = step_dir(step["out"], d)
            if src.is_dir():
                for p, rel in _records(src):
                    target = cache / src.name / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(p, target)
                marker = src.parent / f"{src.name}.json"
                if marker.is_file():
                    cache.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(marker, cache / marker.name)
                step["out"] = f"../cache/{src.name}"
            steps.append(step)
        dest.mkdir(parents=True, exist_ok=True)
        atomic_write_json(dest / RUN_FILE, {**run, "steps": steps})
        done.append(dest)
    return done
