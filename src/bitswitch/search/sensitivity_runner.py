"""``bitswitch sensitivity``: one model load, a measured sweep or a proxy, results files.

The job (``bitswitch.jobs.Job``) keeps ``OUT/results.json`` (``"kind": "sensitivity"``): the run
metadata, the base record and one record per unit or layer; it is rewritten after every record, and
a rerun with the same settings reuses the records already measured. ``OUT/results.md`` is the table,
``OUT/sensitivity.png`` the heatmap (units: layers x roles) or bar chart (layers).
"""

from __future__ import annotations

import time

from ..jobs import Job
from ..loading import load_switchable
from ..plots import sensitivity_bars, sensitivity_heatmap
from ..results import higher_is_better, spearman
from . import metrics as M
from .config import SensitivityConfig
from .proxies import proxy_scores
from .sensitivity import check_probe, layer_role, measure_sensitivity, probe_groups
from .table import load_sensitivity

MEASURED_COLUMNS = ["name", "value", "delta", "damage", "seconds"]
PROXY_COLUMNS = ["name", "damage"]


def proxy_records(scores: dict[str, dict[int, float]], probe_bits: int, groups) -> list[dict]:
    """Proxy scores in the measured layout: per group (unit or layer, summed over its units) a
    record with ``damage`` at the probe bits and ``by_bits`` at every scored bit-width."""
    records = []
    for name, selector in groups.items():
        members = [u for u in scores if u == name or (selector.endswith(".*") and u.startswith(name + "."))]
        by_bits = {b: sum(scores[u][b] for u in members) for b in sorted(next(iter(scores.values())))}
        layer, role = layer_role(name)
        records.append({"name": name, "layer": layer, "role": role, "probe_bits": probe_bits,
                        "damage": by_bits[probe_bits], "by_bits": {str(b): v for b, v in by_bits.items()}})
    return records


def compare(records: list[dict], against: str) -> dict:
    """Spearman rank correlation of ``damage`` with another sensitivity result over common names."""
    other = {r["name"]: r for r in load_sensitivity(against, granularity=None)["records"]}
    names = [r["name"] for r in records if r["name"] in other and other[r["name"]].get("damage") is not None]
    mine = {r["name"]: r for r in records}
    rho = spearman([mine[n]["damage"] for n in names], [other[n]["damage"] for n in names]) if len(names) > 1 else None
    bits = {r.get("probe_bits") for r in records} | {other[n].get("probe_bits") for n in names}
    return {"against": str(against), "rho": rho, "n": len(names), "same_probe_bits": len(bits) <= 1}


def measured_sweep(job: Job, model, tok, md: M.MetricData, base: str, probe: str, granularity: str,
                   prefix: bool = True) -> list[dict]:
    """A measured sweep into ``job`` (its ``base_record`` and one record per group, each written as it
    is measured); the records an earlier run with the same settings left are reused."""
    if job.previous:
        job.log(f"{len(job.previous)} records already measured in {job.path}: reused")

    def save(base_record, record):
        job.doc["base_record"] = base_record
        job.add(record)

    job.doc["base_record"], job.doc["records"] = measure_sensitivity(model, tok, md, base, probe, granularity,
                                                                     done=job.previous, on_record=save, prefix=prefix)
    job.save()
    return job.doc["records"]


def run_sensitivity(cfg: SensitivityConfig, argv: list[str] | None = None, log=print) -> dict:
    """Measure (or score with a proxy) every unit or layer; returns the dict written to results.json."""
    job = Job(cfg, "sensitivity", argv, key="name", log=log)
    model, tok = load_switchable(cfg.model, cfg.adapters, cfg.options, cfg.device, cfg.dtype, cfg.seed, cfg.keying)
    M.fast_weight_cache(model)
    md = M.prepare(model, tok, cfg.metric, cfg.data, cfg.limit, cfg.offset, cfg.max_tokens, cfg.batch_size,
                   cfg.max_new_tokens, cfg.window, order=cfg.order, sample_seed=cfg.sample_seed)
    probe_bits = check_probe(cfg.probe)
    job.describe(model, source=cfg.proxy or "measured", model=cfg.model, adapters=cfg.adapters, data=cfg.data,
                 offset=cfg.offset, limit=cfg.limit, n=md.size, base=cfg.base, probe=cfg.probe, probe_bits=probe_bits,
                 granularity=cfg.granularity, metric=cfg.metric, base_record=None, spearman=None)
    t0 = time.perf_counter()
    groups = probe_groups(model, cfg.granularity)
    if cfg.proxy is None:
        measured_sweep(job, model, tok, md, cfg.base, cfg.probe, cfg.granularity, cfg.prefix)
        columns, label = MEASURED_COLUMNS, f"damage ({'points lost' if higher_is_better(cfg.metric) else 'ln ratio'})"
    else:
        bits = sorted({probe_bits, *cfg.proxy_bits})
        scored = proxy_scores(model, tok, md, cfg.base, bits, cfg.proxy, cfg.proxy_batches, cfg.batch_size,
                              seed=cfg.seed)
        job.doc["proxy"] = {"method": cfg.proxy, "batches": scored["batches"], "bits": bits}
        job.doc["records"] = proxy_records(scored["scores"], probe_bits, groups)
        columns, label = PROXY_COLUMNS, f"{cfg.proxy} score (nats/token)"
    records = job.doc["records"]
    if cfg.against:
        job.doc["spearman"] = compare(records, cfg.against)
    job.doc["seconds"] = round(time.perf_counter() - t0, 3)
    title = (f"{cfg.proxy or cfg.metric} sensitivity: {cfg.base} -> {cfg.probe} ({cfg.model}, {md.size} "
             f"{'questions' if md.task == 'squad' else 'tokens'})")
    plot = (sensitivity_heatmap if cfg.granularity == "unit" else sensitivity_bars)(
        records, job.out / "sensitivity.png", "damage", title, label)
    job.doc["artifacts"] = [plot]
    rho = job.doc["spearman"]
    note = (f"Spearman rank correlation with {rho['against']}: {rho['rho']:.3f} over {rho['n']} records"
            if rho and rho["rho"] is not None else "")
    table = job.finish(columns, title, note)
    return {**job.doc, "table": table}
