"""``bitswitch eval``: load the model once, evaluate every profile on the same data, write results.

``OUT/results.json`` holds the run metadata (command, versions, seed) and one record per profile;
it is rewritten atomically after every profile, and a rerun with the same settings skips the
profiles already measured (an interrupted evaluation resumes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..accounting import profile_report
from ..adapters import load_adapters, read_adapter_config
from ..io import atomic_write_json, atomic_write_text
from ..models import load_model
from ..results import markdown_table, peak_rss_mb, run_metadata
from ..switching import calibrate, make_switchable, needs_calibration, set_profile
from .config import EvalConfig
from .tasks import make_task


def _settings_hash(cfg: EvalConfig) -> str:
    """What must match for an earlier record to be reused (everything but profiles and out)."""
    d = dataclasses.asdict(cfg)
    for k in ("profiles", "out", "device"):
        d.pop(k)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prepare_model(cfg: EvalConfig):
    """Load, wrap and (optionally) load adapters: the shared first step of eval, search and attack."""
    keying = cfg.keying
    if cfg.adapters:
        keying = read_adapter_config(cfg.adapters)["keying"]
    model, tok = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, seed=cfg.seed)
    make_switchable(model, cfg.options, keying)
    if cfg.adapters:
        load_adapters(model, cfg.adapters)
    return model, tok


def run_eval(cfg: EvalConfig, argv: list[str] | None = None, log=print) -> dict:
    """Evaluate every profile of ``cfg``; returns the results dict written to ``OUT/results.json``."""
    task = make_task(cfg)
    out = Path(cfg.out)
    settings = _settings_hash(cfg)
    previous = {}
    if (out / "results.json").is_file():
        try:
            old = json.loads((out / "results.json").read_text())
            if old.get("settings") == settings and old.get("task") == cfg.task:
                previous = {r["profile"]: r for r in old.get("records", [])}
        except (json.JSONDecodeError, KeyError):
            previous = {}
    model, tok = prepare_model(cfg)
    task.setup(model, tok)
    results = {"task": cfg.task, "model": cfg.model, "data": cfg.data, "adapters": cfg.adapters,
               "settings": settings, **run_metadata(argv, cfg.seed, device=str(next(model.parameters()).device),
                                                   dtype=cfg.dtype),
               "config": dataclasses.asdict(cfg), "records": []}
    for profile in cfg.profiles:
        if profile in previous:
            log(f"[{profile}] already measured in {out / 'results.json'}: skipped")
            results["records"].append(previous[profile])
            continue
        prof = set_profile(model, profile)
        if needs_calibration(model, profile):
            calibrate(model, task.calibration_batches())
        acct = profile_report(model, profile)
        t0 = time.perf_counter()
        with tqdm(total=task.total(), desc=f"{cfg.task} {prof.name}", unit=getattr(task, "unit", "tok"),
                  dynamic_ncols=True, leave=False) as bar:
            metrics = task.evaluate(model, tok, profile, out, bar)
        seconds = time.perf_counter() - t0
        record = {"profile": prof.name, **metrics, "seconds": round(seconds, 3),
                  "avg_w_bits": round(acct["avg_w_bits"], 4), "weight_bytes": acct["weight_bytes"],
                  "adapter": model.get_submodule(next(iter(model.bitswitch.units.values()))[0]).active_adapter,
                  "peak_rss_mb": round(peak_rss_mb(), 1)}
        results["records"].append(record)
        atomic_write_json(out / "results.json", results)
        log(f"[{prof.name}] " + ", ".join(f"{k}={v}" for k, v in record.items() if k in task.columns[1:3]))
    results["artifacts"] = task.finish(results["records"], out)
    atomic_write_json(out / "results.json", results)
    table = markdown_table(results["records"], task.columns)
    atomic_write_text(out / "results.md", f"# {cfg.task} on {cfg.model}\n\n`{results['command']}`\n\n{table}\n")
    results["table"] = table
    return results
