"""``bitswitch eval --rpi P1 P2 ...``: a task's metrics under random precision inference (RPI).

One setting, recorded as profile ``rpi``: the model draws its precision from the set with seeded
draws (:func:`~bitswitch.robust.rpi.rpi`) while the task runs, so SQuAD's per-question predictions
(``predictions-rpi.jsonl``) pair with any other run's over the same questions. Activation ranges
are dynamic per token (``--rpi-calib dynamic``, the default) or static per tensor (the model's
activation mode is switched to ``tensor`` after its adapters load: adapters are trained with
per-token ranges), calibrated on the task's calibration inputs either per profile
(``--rpi-calib per-profile``: each profile of the set calibrated at that profile, used whenever it
is drawn) or once for all profiles while the precision switches at random (``--rpi-calib shared``:
one observer per unit, :func:`~bitswitch.switching.share_observers`), the calibration that stays
consistent when the precision changes at random.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time

from tqdm.auto import tqdm

from ..accounting import profile_report
from ..errors import BitswitchError
from ..jobs import Job
from ..loading import is_exported
from ..results import peak_rss_mb
from ..switching import calibrate, needs_calibration, set_options, share_observers, state
from .rpi import RPIConfig, rpi

SHARED_KEY = "rpi-shared"


def run_rpi_eval(cfg, argv: list[str] | None = None, log=print) -> dict:
    from ..evaluate.runner import prepare_model, record_key
    from ..evaluate.tasks import make_task

    cfg = dataclasses.replace(cfg, engine="fake")
    task = make_task(cfg)
    job = Job(cfg, f"eval-{cfg.task}", argv, key=record_key, log=log)
    model, tok = prepare_model(cfg)
    if is_exported(model):
        raise BitswitchError(f"{cfg.model!r} is a single-profile export: --rpi needs the switchable model")
    rcfg = RPIConfig(tuple(cfg.rpi), cfg.rpi_p, cfg.rpi_granularity, cfg.seed)
    if cfg.rpi_calib != "dynamic" and state(model).options.act_mode != "tensor":
        set_options(model, dataclasses.replace(state(model).options, act_mode="tensor"))
    static = any(needs_calibration(model, p) for p in rcfg.profiles)
    calib = cfg.rpi_calib if static else "dynamic"
    pid = "rpi-" + hashlib.sha1(f"{rcfg.describe()}|{rcfg.seed}|{calib}".encode()).hexdigest()[:12]
    task.setup(model, tok)
    job.describe(model, task=cfg.task, model=cfg.model, data=cfg.data, adapters=cfg.adapters, engine="fake",
                 rpi=rcfg.describe(), rpi_calib=calib)
    if pid in job.previous:
        log(f"[rpi] already measured in {job.path}: cached")
        job.add(job.previous[pid])
    else:
        job.add(_measure(cfg, rcfg, calib, task, model, tok, pid, job, log))
    table = job.finish(task.columns, f"{cfg.task} on {cfg.model}, {rcfg.describe()}, ranges {calib}")
    return {**job.doc, "table": table}


def _measure(cfg, rcfg: RPIConfig, calib: str, task, model, tok, pid: str, job, log) -> dict:
    t0 = time.perf_counter()
    if calib == "per-profile":
        for p in rcfg.profiles:
            calibrate(model, task.calibration_batches(), p)
    elif calib == "shared":
        share_observers(model, SHARED_KEY)
        with rpi(model, rcfg):                      # the draws of calibration: the same law as evaluation
            calibrate(model, task.calibration_batches())
    calib_seconds = time.perf_counter() - t0
    reports = [profile_report(model, p) for p in rcfg.profiles]
    t0 = time.perf_counter()
    with rpi(model, rcfg), tqdm(total=task.total(), desc=f"{cfg.task} rpi", unit=getattr(task, "unit", "tok"),
                                dynamic_ncols=True, leave=False) as bar:
        metrics = task.evaluate(model, tok, "rpi", job.out, bar)
    seconds = time.perf_counter() - t0
    log(f"[rpi] {rcfg.describe()}, ranges {calib}: " + ", ".join(
        f"{k}={v}" for k, v in metrics.items() if k in task.columns[1:3]))
    # for p > 0 a forward runs at a uniform draw from the set (the draws' stationary law)
    return {"profile": "rpi", "profile_id": pid, **metrics, "seconds": round(seconds, 3),
            "avg_w_bits": round(sum(r["avg_w_bits"] for r in reports) / len(reports), 4),
            "weight_bytes": max(r["weight_bytes"] for r in reports), "rpi": rcfg.describe(), "rpi_calib": calib,
            "calib_seconds": round(calib_seconds, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
