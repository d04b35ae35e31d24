"""``bitswitch eval --dynamic threshold|request --budget B [--widths w4g32,w8]``: a task's metrics
under a dynamic controller (fake quantization, one sequence at a time whatever ``--batch-size``), with the realized average
weight bits and weight bytes read per token beside them.

``threshold`` is fitted first on the task's calibration inputs (SQuAD: prompts of ``--train-data``,
never the evaluated questions; wikitext: the first ``--calib-batches`` windows of the evaluated
text, so only the threshold's one scalar sees it). One record per run, keyed by the controller.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time

from tqdm.auto import tqdm

from ..errors import BitswitchError
from ..jobs import Job
from ..loading import is_exported
from ..results import peak_rss_mb
from .request import RequestController
from .threshold import ThresholdController
from .usage import Usage
from .widths import WidthSet

COLUMNS = {"squad": ["profile", "em", "f1", "answer_ppl", "n", "avg_w_bits", "bytes_per_token", "calib_avg_w_bits",
                     "seconds"],
           "wikitext": ["profile", "ppl", "tokens", "avg_w_bits", "bytes_per_token", "calib_avg_w_bits", "seconds"]}


def run_dynamic_eval(cfg, argv: list[str] | None = None, log=print) -> dict:
    from ..evaluate.runner import prepare_model, record_key
    from ..evaluate.tasks import make_task

    cfg = dataclasses.replace(cfg, engine="fake")
    if cfg.task not in COLUMNS:
        raise BitswitchError(f"--dynamic evaluates wikitext or squad, not {cfg.task!r}")
    cfg = dataclasses.replace(cfg, batch_size=1)   # one sequence at a time: pads are never accounted
    task = make_task(cfg)
    job = Job(cfg, f"eval-{cfg.task}", argv, key=record_key, log=log)
    model, tok = prepare_model(cfg)
    if is_exported(model):
        raise BitswitchError(f"{cfg.model!r} is a single-profile export: --dynamic needs the switchable model")
    widths = WidthSet.from_model(model, cfg.widths)
    widths.check_budget(cfg.budget, cfg.budget_by)
    name = f"dynamic-{cfg.dynamic}-{cfg.budget:g}{'' if cfg.budget_by == 'bits' else 'B'}"
    pid = "dyn-" + hashlib.sha1(f"{cfg.dynamic}|{cfg.budget}|{cfg.budget_by}|{widths.widths}".encode()).hexdigest()[:12]
    task.setup(model, tok)
    job.describe(model, task=cfg.task, model=cfg.model, data=cfg.data, adapters=cfg.adapters, engine="fake",
                 dynamic=cfg.dynamic, widths=list(widths.widths))
    if pid in job.previous:
        log(f"[{name}] already measured in {job.path}: skipped")
        job.add(job.previous[pid])
    else:
        job.add(_measure(cfg, task, model, tok, widths, name, pid, job, log))
    table = job.finish(COLUMNS[cfg.task], f"{cfg.task} on {cfg.model}, dynamic widths {','.join(widths.widths)}")
    return {**job.doc, "table": table}


def _measure(cfg, task, model, tok, widths, name, pid, job, log) -> dict:
    usage = Usage(widths)
    extra = {}
    if cfg.dynamic == "threshold":
        ctl = ThresholdController.from_model(model, widths)
        t0 = time.perf_counter()
        got = ctl.fit(model, task.calibration_batches(), cfg.budget, cfg.budget_by)
        extra = {"threshold": ctl.threshold, f"calib_{'avg_w_bits' if cfg.budget_by == 'bits' else 'bytes_per_token'}":
                 round(got, 4), "calib_seconds": round(time.perf_counter() - t0, 2)}
        log(f"[{name}] threshold {ctl.threshold:.4g}: {got:.4f} {cfg.budget_by} per token on calibration data")
    else:
        ctl = RequestController(widths, cfg.budget, cfg.budget_by)
    t0 = time.perf_counter()
    with ctl.install(model, usage), tqdm(total=task.total(), desc=f"{cfg.task} {name}",
                                         unit=getattr(task, "unit", "tok"), leave=False) as bar:
        metrics = task.evaluate(model, tok, name, job.out, bar)
    seconds = time.perf_counter() - t0
    summary = usage.summary()
    return {"profile": name, "profile_id": pid, **metrics, "seconds": round(seconds, 3),
            "avg_w_bits": summary["avg_w_bits"], "bytes_per_token": summary["bytes_per_token"],
            "budget": cfg.budget, "budget_by": cfg.budget_by, "widths": list(widths.widths), **extra,
            "width_share": summary["width_share"], "sequences": summary["sequences"], "tokens": summary["tokens"],
            "units": summary["units"], "peak_rss_mb": round(peak_rss_mb(), 1)}
