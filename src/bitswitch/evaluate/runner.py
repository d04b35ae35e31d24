"""``bitswitch eval``: load the model once, evaluate every profile on the same data, write results.

The job (``bitswitch.jobs.Job``) keeps ``OUT/results.json``: one record per profile, written after
every profile; a rerun with the same settings skips the profiles already measured and keeps the
others (an interrupted evaluation resumes; another profile list adds to the file).
"""

from __future__ import annotations

import time

from tqdm.auto import tqdm

from ..accounting import profile_report
from ..errors import BitswitchError
from ..jobs import Job
from ..loading import is_exported, load_switchable
from ..results import peak_rss_mb
from ..switching import (calibrate, clear_caches, needs_calibration, set_profile, set_weight_cache,
                         unit_modules)
from .config import EvalConfig
from .tasks import make_task


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
    kind = "eval-lm-eval" if cfg.task.startswith("lm-eval:") else f"eval-{cfg.task}"   # the report's section
    job = Job(cfg, kind, argv, key="profile", log=log)
    model, tok = prepare_model(cfg)
    exported = model.bitswitch_export if is_exported(model) else None
    profiles = cfg.profiles or ["fp"]
    if exported is not None:
        if cfg.profiles and cfg.profiles != [exported["profile"]]:
            raise BitswitchError(f"{cfg.model!r} was exported at profile {exported['profile']!r} and runs only at it: "
                                 "drop --profiles (or evaluate the source model with --profiles)")
        profiles = [exported["profile"]]
    task.setup(model, tok)
    job.describe(model, task=cfg.task, model=cfg.model, data=cfg.data, adapters=cfg.adapters)
    for profile in profiles:
        if profile in job.previous:
            log(f"[{profile}] already measured in {job.path}: skipped")
            job.add(job.previous[profile])
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
            metrics = task.evaluate(model, tok, profile, job.out, bar)
        seconds = time.perf_counter() - t0
        record = {"profile": name, **metrics, "seconds": round(seconds, 3),
                  "avg_w_bits": round(acct["avg_w_bits"], 4), "weight_bytes": acct["weight_bytes"],
                  "adapter": adapter, "peak_rss_mb": round(peak_rss_mb(), 1)}
        job.add(record, f"[{name}] " + ", ".join(f"{k}={v}" for k, v in record.items() if k in task.columns[1:3])
                + f", peak_rss_mb={record['peak_rss_mb']}")
    job.doc["artifacts"] = task.finish(job.doc["records"], job.out)
    table = job.finish(task.columns, f"{cfg.task} on {cfg.model}")
    return {**job.doc, "table": table}
