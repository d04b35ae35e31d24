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
from ..io import atomic_write_json, atomic_write_text
from ..loading import is_exported, load_switchable
from ..results import markdown_table, peak_rss_mb, run_metadata
from ..errors import BitswitchError
from ..switching import (calibrate, clear_caches, needs_calibration, set_profile, set_weight_cache,
                         unit_modules)
from .config import EvalConfig
from .tasks import make_task


def _settings_hash(cfg: EvalConfig) -> str:
    """What must match for an earlier record to be reused (everything but profiles and out)."""
    d = dataclasses.asdict(cfg)
    for k in ("profiles", "out", "device", "weight_cache"):  # noqa: B007 - settings that may differ between resumed runs
        d.pop(k)
    if not d["offset"]:  # added later: offset 0 hashes as before, so earlier runs still resume
        d.pop("offset")
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def prepare_model(cfg: EvalConfig):
    model, tok = load_switchable(cfg.model, cfg.adapters, cfg.options, cfg.device, cfg.dtype, cfg.seed, cfg.keying)
    if is_exported(model):
        if cfg.adapters:
            raise BitswitchError(f"{cfg.model!r} is an export: its adapters are already in it; drop --adapters")
    else:
        set_weight_cache(model, cfg.weight_cache)
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
    exported = model.bitswitch_export if is_exported(model) else None
    profiles = cfg.profiles or ["fp"]
    if exported is not None:
        if cfg.profiles and cfg.profiles != [exported["profile"]]:
            raise BitswitchError(f"{cfg.model!r} was exported at profile {exported['profile']!r} and runs only at it: "
                                 "drop --profiles (or evaluate the source model with --profiles)")
        profiles = [exported["profile"]]
    task.setup(model, tok)
    results = {"task": cfg.task, "model": cfg.model, "data": cfg.data, "adapters": cfg.adapters,
               "settings": settings, **run_metadata(argv, cfg.seed, device=str(next(model.parameters()).device),
                                                   dtype=cfg.dtype),
               "config": dataclasses.asdict(cfg), "records": []}
    for profile in profiles:
        if profile in previous:
            log(f"[{profile}] already measured in {out / 'results.json'}: skipped")
            results["records"].append(previous[profile])
            continue
        if exported is None:
            clear_caches(model)   # the previous profile's quantized weights are not needed again
            name = set_profile(model, profile).name
            if needs_calibration(model, profile):
                calibrate(model, task.calibration_batches())
            acct = profile_report(model, profile)
            adapter = next(m for _, _, m in unit_modules(model)).active_adapter
        else:
            name, acct, adapter = profile, exported, "merged" if exported["merge"] == "before" else "exported"
        t0 = time.perf_counter()
        with tqdm(total=task.total(), desc=f"{cfg.task} {name}", unit=getattr(task, "unit", "tok"),
                  dynamic_ncols=True, leave=False) as bar:
            metrics = task.evaluate(model, tok, profile, out, bar)
        seconds = time.perf_counter() - t0
        record = {"profile": name, **metrics, "seconds": round(seconds, 3),
                  "avg_w_bits": round(acct["avg_w_bits"], 4), "weight_bytes": acct["weight_bytes"],
                  "adapter": adapter, "peak_rss_mb": round(peak_rss_mb(), 1)}
        results["records"].append(record)
        atomic_write_json(out / "results.json", results)
        log(f"[{name}] " + ", ".join(f"{k}={v}" for k, v in record.items() if k in task.columns[1:3])
            + f", peak_rss_mb={record['peak_rss_mb']}")
    results["artifacts"] = task.finish(results["records"], out)
    atomic_write_json(out / "results.json", results)
    table = markdown_table(results["records"], task.columns)
    atomic_write_text(out / "results.md", f"# {cfg.task} on {cfg.model}\n\n`{results['command']}`\n\n{table}\n")
    results["table"] = table
    return results
