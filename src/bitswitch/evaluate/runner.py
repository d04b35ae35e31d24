"""``bitswitch eval``: load the model once, evaluate every profile on the same data, write results.

The job (``bitswitch.jobs.Job``) keeps ``OUT/results.json``: one record per profile, written after
every profile; a rerun with the same settings skips the profiles already measured and keeps the
others (an interrupted evaluation resumes; another profile list adds to the file).

Profiles are identified by content, not name: a record's ``profile_id``
(:func:`bitswitch.switching.profile_id`: a digest of every unit's precision and active adapter) is
its key, so a rerun reuses a record only for a profile that runs exactly the same. ``profile`` is
the display name: the profile's own (a file's stem), with the short id appended when profiles of
other ids share it in this run or in the records kept from earlier ones (``search-avg4-1a2b3c``);
SQuAD predictions are written per display name. A profile listed twice under two names (``w8a8``
and a file holding ``{"default": "w8a8"}``) is measured once, under the first name, the others
noted as its ``aliases``. Every profile is resolved before the first is measured, so a bad one
fails at once.
"""

from __future__ import annotations

import dataclasses
import time

from tqdm.auto import tqdm

from ..accounting import profile_report
from ..errors import BitswitchError
from ..jobs import Job
from ..loading import is_exported, load_switchable
from ..profiles import distinct_names, table_id
from ..results import peak_rss_mb
from ..switching import (calibrate, clear_caches, needs_calibration, profile_id, resolve_profile, set_profile,
                         set_weight_cache, unit_modules)
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


def resolve_engine(cfg: EvalConfig) -> str:
    """``fake`` or ``runtime``: ``auto`` runs a nested checkpoint on the runtime, anything else fake."""
    if cfg.engine != "auto":
        return cfg.engine
    from ..export.nested_format import is_nested_dir

    return "runtime" if is_nested_dir(cfg.model) else "fake"


def build_runtime(cfg: EvalConfig, model, tok, plan: list[dict]):
    """The runtime holding every planned profile (packed once); refuses what it cannot run."""
    from ..runtime import Runtime

    if is_exported(model):
        raise BitswitchError(f"{cfg.model!r} is a single-profile export: the runtime loads models, adapters and "
                             "nested checkpoints (bitswitch export --nested); use --engine fake")
    if cfg.options.act_mode != "token":
        raise BitswitchError("the runtime quantizes activations per token: drop --act-mode tensor or use --engine fake")
    # eager: an eval's batches differ in rows and lengths, and each new shape set costs torch.compile
    # minutes on a CPU, more than the short answers it would speed up
    return Runtime.from_model(model, tok, [it["spec"] for it in plan], compile="off")


def record_key(record: dict) -> str:
    """A record's key in ``results.json``: its profile id (records from before ids: ``name:<profile>``).
    KeyError / TypeError for a record eval cannot have written (the job reports it in one line)."""
    name, pid = record["profile"], record.get("profile_id")
    if not isinstance(name, str) or not isinstance(pid, (str, type(None))):
        raise TypeError("'profile' and 'profile_id' must be strings")
    return pid or f"name:{name}"


def plan_profiles(model, profiles: list[str], job: Job, log=print) -> list[dict]:
    """``[{"spec", "name", "id", "aliases"}]``: every profile resolved now (a bad one fails before any
    is measured), one entry per id, under distinct display names."""
    exported = model.bitswitch_export if is_exported(model) else None
    items: dict[str, dict] = {}
    for spec in profiles:
        if exported is not None:
            name, pid = spec, table_id(exported["units"])
        else:
            name, pid = resolve_profile(model, spec)[0].name, profile_id(model, spec)
        if pid in items:
            items[pid]["aliases"].append(name)
        else:
            items[pid] = {"spec": spec, "name": name, "id": pid, "aliases": []}
    plan = list(items.values())
    # records from before profile ids: one whose name is measured now is measured again, not reused
    for name in dict.fromkeys(it["name"] for it in plan):
        if f"name:{name}" in job.previous:
            job.drop(f"name:{name}")
            log(f"note: the record of {name!r} in {job.path} predates profile ids: measuring it again")
    taken = [(r["profile"], k) for k, r in job.previous.items()]   # kept (or reused) records keep their names
    for it, display in zip(plan, distinct_names([(it["name"], it["id"]) for it in plan], taken)):
        if display != it["name"]:
            log(f"note: other profiles named {it['name']!r} run at other precisions: {it['spec']!r} is "
                f"recorded as {display!r}")
        it["name"] = display
        if it["aliases"]:
            log(f"note: {', '.join(map(repr, it['aliases']))} run{'s' if len(it['aliases']) == 1 else ''} exactly as "
                f"{it['spec']!r} (profile id {it['id']}): measured once, as {display!r}")
    return plan


def run_eval(cfg: EvalConfig, argv: list[str] | None = None, log=print) -> dict:
    """Evaluate every profile of ``cfg``; returns the results dict written to ``OUT/results.json``."""
    if cfg.dynamic:   # the dynamic package builds on this one, not the other way round
        raise BitswitchError("dynamic widths are evaluated by bitswitch.dynamic.eval.run_dynamic_eval")
    cfg = dataclasses.replace(cfg, engine=resolve_engine(cfg))
    task = make_task(cfg)
    kind = "eval-lm-eval" if cfg.task.startswith("lm-eval:") else f"eval-{cfg.task}"   # the report's section
    job = Job(cfg, kind, argv, key=record_key, log=log)
    model, tok = prepare_model(cfg)
    exported = model.bitswitch_export if is_exported(model) else None
    profiles = cfg.profiles or ["fp"]
    if exported is not None:
        if cfg.profiles and cfg.profiles != [exported["profile"]]:
            raise BitswitchError(f"{cfg.model!r} was exported at profile {exported['profile']!r} and runs only at it: "
                                 "drop --profiles (or evaluate the source model with --profiles)")
        profiles = [exported["profile"]]
    plan = plan_profiles(model, profiles, job, log)
    task.setup(model, tok)
    job.describe(model, task=cfg.task, model=cfg.model, data=cfg.data, adapters=cfg.adapters, engine=cfg.engine)
    runtime = None
    if cfg.engine == "runtime":
        accounts = {it["id"]: profile_report(model, it["spec"]) for it in plan if it["id"] not in job.previous}
        adapters = {}
        for it in plan:
            set_profile(model, it["spec"])
            adapters[it["id"]] = next(m for _, _, m in unit_modules(model)).active_adapter
        runtime = build_runtime(cfg, model, tok, plan)
        del model   # the runtime holds its own packed weights: the float model is not needed again
    for item in plan:
        profile, name, pid = item["spec"], item["name"], item["id"]
        if pid in job.previous:
            earlier = job.previous[pid]
            log(f"[{name}] already measured in {job.path}"
                + (f" (as {earlier['profile']!r}, the same profile id)" if earlier["profile"] != name else "")
                + ": skipped")
            job.add(earlier)
            continue
        if runtime is not None:
            runtime.set_profile(profile)
            acct, adapter = accounts[pid], adapters[pid]
        elif exported is None:
            clear_caches(model)   # the previous profile's quantized weights are not needed again
            set_profile(model, profile)
            if needs_calibration(model, profile):
                calibrate(model, task.calibration_batches())
            acct = profile_report(model, profile)
            adapter = next(m for _, _, m in unit_modules(model)).active_adapter
        else:
            acct, adapter = exported, "merged" if exported["merge"] == "before" else "exported"
        t0 = time.perf_counter()
        with tqdm(total=task.total(), desc=f"{cfg.task} {name}", unit=getattr(task, "unit", "tok"),
                  dynamic_ncols=True, leave=False) as bar:
            metrics = task.evaluate(model if runtime is None else runtime, tok, name, job.out, bar)
        seconds = time.perf_counter() - t0
        record = {"profile": name, "profile_id": pid, **metrics, "seconds": round(seconds, 3),
                  "avg_w_bits": round(acct["avg_w_bits"], 4), "weight_bytes": acct["weight_bytes"],
                  "adapter": adapter, "peak_rss_mb": round(peak_rss_mb(), 1)}
        if item["aliases"]:
            record["aliases"] = item["aliases"]
        job.add(record, f"[{name}] " + ", ".join(f"{k}={v}" for k, v in record.items() if k in task.columns[1:3])
                + f", peak_rss_mb={record['peak_rss_mb']}")
    job.doc["artifacts"] = task.finish(job.doc["records"], job.out)
    table = job.finish(task.columns, f"{cfg.task} on {cfg.model}")
    return {**job.doc, "table": table}
