"""``bitswitch run``: run an experiment's steps in order, skipping what is already done.

Each step writes into its content-addressed directory ``CACHE/<command>-<hash>`` (see
:mod:`.spec`). When the command returns 0 the runner writes the marker ``CACHE/<command>-<hash>.json``
(status ``complete``) beside it; a step whose marker is there is *cached* (not run again), so a second run, or
another experiment with a step of the same configuration, costs nothing. A step without a marker
(never run, failed, interrupted) runs again through the command's own resume: ``train --resume``
when its checkpoint exists, while ``eval`` reuses the profiles already in its results.json.

``RUN_DIR/run.json`` (rewritten atomically after every change) records the experiment, its
variables, the command that reproduces it, and for each step its argv, hash, output directory,
status (pending, running, done, cached, failed, interrupted; run.json files from before say
``skipped`` for cached), exit code and seconds; it is what
``bitswitch report`` reads. ``RUN_DIR/<step id>`` is a symbolic link to the step's directory.
"""

from __future__ import annotations

import fcntl
import gc
import os
import re
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import BitswitchError
from ..io import atomic_write_json, atomic_write_text
from .spec import Experiment, Step, resolve_steps

RUN_FILE = "run.json"


def default_dirs(exp: Experiment, out: str | None, cache: str | None) -> tuple[Path, Path]:
    """``runs/<name>-<size>`` and a cache shared by every run beside it (``runs/cache``)."""
    run_dir = Path(out) if out else Path("runs") / f"{exp.name}-{exp.size}"
    return run_dir, Path(cache) if cache else run_dir.parent / "cache"


def marker_path(step: Step) -> Path:
    return step.out.parent / f"{step.out.name}.json"


def is_complete(step: Step) -> bool:
    import json

    m = marker_path(step)
    if not (m.is_file() and step.out.is_dir()):
        return False
    try:
        rec = json.loads(m.read_text())
    except (OSError, ValueError):
        return False
    return rec.get("status") == "complete" and rec.get("hash") == step.hash


def resume_argv(step: Step) -> list[str] | None:
    """The argv that continues an interrupted step, when the command has its own resume."""
    from ..train.checkpoint import find_checkpoint   # also the one kept by a save cut between its renames

    if step.command == "train" and find_checkpoint(step.out) is not None:
        return ["train", "--resume", str(step.out)]
    return None


def run_experiment(exp: Experiment, run_dir: Path, cache: Path, *, dry_run: bool = False, isolate: bool = False,
                   only: list[str] | None = None, execute=None, log=print) -> int:
    """Run (or skip) every step (or those named in ``only``: ids or foreach groups); returns 0, or
    the exit code of the step that failed. ``execute(argv) -> exit code`` runs one step in this
    process (the CLI hands in its own ``main``; experiments import nothing of the CLI); ``isolate``
    runs each in a fresh ``python -m bitswitch.cli`` instead."""
    steps = resolve_steps(exp, cache)
    if only:
        unknown = [o for o in only if not any(o in (s.id, s.group) for s in steps)]
        if unknown:
            raise BitswitchError(f"--only {', '.join(unknown)}: {exp.path} has no such step: use one of "
                                 f"{', '.join(dict.fromkeys(s.group for s in steps))}")
    record = _run_record(exp, steps, run_dir, cache)
    if dry_run:
        for i, s in enumerate(steps, 1):
            state = "cached, would not run" if is_complete(s) else "not selected" if only and not (
                s.id in only or s.group in only) else "would run"
            log(f"[{i}/{len(steps)}] {s.id} ({state}): bitswitch {shlex.join(s.full_argv())}")
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "experiment.yaml", exp.text)
    _save(run_dir, record)
    t_run = time.perf_counter()
    for i, (step, rec) in enumerate(zip(steps, record["steps"]), 1):
        _link(run_dir / re.sub(r"[^A-Za-z0-9_.=-]+", "_", step.id), step.out)
        head = f"[{i}/{len(steps)}] {step.id} ({step.command})"
        if only and step.id not in only and step.group not in only:
            rec["status"] = "cached" if is_complete(step) else "pending"   # not selected: left as it is
            continue
        with _lock(cache / f".{step.key}.lock", log, head):
            if is_complete(step):
                rec.update(status="cached", seconds=_marker_seconds(step))
                log(f"{head}: cached, computed before ({step.out})")
                _save(run_dir, record)
                continue
            argv = resume_argv(step) or step.full_argv()
            rec.update(status="running", resumed=argv != step.full_argv(), started=_now())
            _save(run_dir, record)
            log(f"{head}: {'resuming' if rec['resumed'] else 'running'} -> {step.out}")
            t0 = time.perf_counter()
            try:
                code = _execute(argv, isolate, execute)
            except KeyboardInterrupt:
                code = 130
            seconds = round(time.perf_counter() - t0, 1)
            if code == 0:
                rec.update(status="done", exit_code=0, seconds=seconds, finished=_now())
                atomic_write_json(marker_path(step), {"status": "complete", "hash": step.hash,
                                                      "command": step.command, "argv": step.full_argv(),
                                                      "seconds": seconds, "finished": _now()})
                _save(run_dir, record)
                continue
            rec.update(status="interrupted" if code in (130, 143) else "failed", exit_code=code, seconds=seconds)
            record["seconds"] = round(time.perf_counter() - t_run, 1)
            _save(run_dir, record)
            # one line naming the step; the command has already printed its own reason above
            print(f"bitswitch: error: step {step.id!r} ({step.command}) of {exp.path} "
                  f"{'was interrupted' if rec['status'] == 'interrupted' else f'failed with exit code {code}'}; "
                  f"finished steps are kept: rerun `{exp.command}` to continue", file=sys.stderr)
            return code
    record["seconds"] = round(time.perf_counter() - t_run, 1)
    record["finished"] = _now()
    _save(run_dir, record)
    ran = sum(r["status"] == "done" for r in record["steps"])
    pending = sum(r["status"] == "pending" for r in record["steps"])
    log(f"{exp.name} ({exp.size}): {ran} step(s) ran, {len(steps) - ran - pending} cached"
        + (f", {pending} not selected" if pending else "") + f"; {run_dir / RUN_FILE}; "
        f"report: bitswitch report {run_dir} --out {run_dir / 'report.md'}")
    return 0


def _execute(argv: list[str], isolate: bool, execute) -> int:
    """Run one bitswitch command: in this process (the CLI's own code path) or in a fresh one."""
    if isolate:   # a fresh process: its own peak memory, nothing left behind between steps
        return subprocess.call([sys.executable, "-m", "bitswitch.cli", *argv])
    try:
        return execute(argv)
    finally:
        gc.collect()   # the step's model is garbage now; free it before the next one loads
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()


def _run_record(exp: Experiment, steps: list[Step], run_dir: Path, cache: Path) -> dict:
    """run.json's content; statuses of an earlier run of the same experiment are replaced as steps go."""
    return {"experiment": exp.name, "question": exp.question, "spec": exp.path, "size": exp.size,
            "sets": exp.sets, "vars": exp.vars, "command": exp.command, "answers": exp.answers,
            "notes": exp.notes, "short": exp.short, "cache": str(cache), "started": _now(),
            "steps": [{"id": s.id, "group": s.group, "item": s.item, "command": s.command, "label": s.label,
                       "argv": s.full_argv(), "hash": s.hash, "out": str(s.out), "status": "pending",
                       "seconds": None} for s in steps]}


def _marker_seconds(step: Step):
    import json

    try:
        return json.loads(marker_path(step).read_text()).get("seconds")
    except (OSError, ValueError):
        return None


def _save(run_dir: Path, record: dict) -> None:
    record["updated"] = _now()
    atomic_write_json(run_dir / RUN_FILE, record)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _link(link: Path, target: Path) -> None:
    """RUN_DIR/<step id> -> the cache directory, for people browsing a run (best effort)."""
    try:
        if link.is_symlink() or link.exists():
            if not link.is_symlink():
                return   # something real is there: leave it alone
            link.unlink()
        os.symlink(os.path.relpath(target.resolve(), link.parent.resolve()), link)
    except OSError:
        pass


@contextmanager
def _lock(path: Path, log, head: str):
    """One runner per cache entry at a time: a second one waits, then finds the step done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"{head}: another run is computing it; waiting")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def step_dir(out: str | Path, run_dir: str | Path | None = None) -> Path:
    """A step's output directory as run.json records it; a relative one that is not there is read from
    the run directory (a run moved together with its cache, e.g. an archive's ``../cache/<step>``)."""
    d = Path(out)
    if not d.is_absolute() and not d.exists() and run_dir is not None:
        d = Path(run_dir) / d
    return d


def load_run(run_dir: str | Path) -> dict:
    """run.json of a run directory (one-line error when it is not one)."""
    import json

    p = Path(run_dir) / RUN_FILE
    if not p.is_file():
        raise BitswitchError(f"{str(run_dir)!r} is not a run directory (no {RUN_FILE}): pass the --out of "
                             "bitswitch run, e.g. runs/accuracy-small")
    try:
        return json.loads(p.read_text())
    except ValueError as exc:
        raise BitswitchError(f"{p} is not valid JSON ({exc}): rerun bitswitch run to rewrite it") from exc
