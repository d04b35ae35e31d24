"""``bitswitch search``: a mixed-precision profile under a budget (or a drop), verified by measuring it.

One model load. Per-unit damages come from a proxy (default ``fisher``), a measured sweep, or a
``bitswitch sensitivity`` result, computed on the *calibration* questions (``--calib-offset`` /
``--calib-limit``; default the evaluation questions themselves); the search (``budget``: exact
knapsack; ``greedy``) picks bits per unit, with ``--below-penalty`` factors on the damages of units
lowered below the widest uniform profile within the budget (several: each solution is measured on
the calibration data and the best kept, the other budgets' solutions that fit competing too);
every resulting profile is measured on the evaluation data and written to ``OUT/results.json``
(``"kind": "search"``), ``OUT/results.md`` and, in the profile grammar's JSON form,
``OUT/profiles/<label>.json`` (``bitswitch eval --profiles FILE``).
``--pareto`` adds the uniform profiles, the front and ``OUT/pareto.png``.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from ..accounting import profile_report
from ..errors import BitswitchError
from ..io import atomic_write_json, atomic_write_text
from ..loading import is_exported, load_switchable
from ..plots import pareto_plot
from ..profiles import profile_to_mapping
from ..quant.config import WEIGHT_BITS
from ..results import higher_is_better, markdown_table, run_metadata
from ..switching import set_profile
from . import metrics as M
from .budget import InfeasibleBudget, solve_budget
from .config import SearchConfig, previous_records, settings_hash
from .greedy import greedy_search
from .pareto import pareto_front
from .proxies import PROXIES, proxy_scores
from .sensitivity import measure_sensitivity
from .space import SearchSpace, build_space, noise_energy
from .table import damage_table, known_from_records, load_sensitivity, penalize, predicted


def write_profile_file(path: Path, record: dict) -> str:
    keys = ("label", "avg_w_bits", "weight_bytes", "fp16_weight_bytes", "fp32_weight_bytes", "f1", "em",
            "answer_ppl", "ppl", "predicted_damage", "bits")
    atomic_write_json(path, {"profile": profile_to_mapping(record["profile"]), "profile_string": record["profile"],
                             **{k: record[k] for k in keys if k in record}})
    return str(path)


def _costs(space: SearchSpace, kind: str) -> dict[str, dict[int, int]]:
    if kind == "max_bytes":
        return {u: dict(uc.bytes) for u, uc in space.units.items()}
    return {u: {b: uc.params * b for b in space.candidates} for u, uc in space.units.items()}


def _budget(space: SearchSpace, kind: str, value) -> int:
    return value - space.fixed_bytes if kind == "max_bytes" else space.avg_bits_budget(value)


def _reference(space: SearchSpace, kind: str, value) -> int | None:
    """The bits of the widest uniform profile within the budget: ``--below-penalty`` scales the
    damage of lowering a unit below it (None when no uniform candidate fits)."""
    costs, cap = _costs(space, kind), _budget(space, kind, value)
    fits = [b for b in space.candidates if sum(c[b] for c in costs.values()) <= cap]
    return max(fits) if fits else None


def _label(kind: str, value) -> str:
    return {"avg_bits": f"search-avg{value:g}", "max_bytes": f"search-bytes{value}",
            "max_drop": f"search-drop{value:g}"}[kind]


def _infeasible(space: SearchSpace, kind: str, value) -> BitswitchError:
    low = space.uniform(space.candidates[0])
    cands = ",".join(map(str, space.candidates))
    if kind == "max_bytes":
        return BitswitchError(f"--max-bytes {value} is below the smallest reachable {space.weight_bytes(low):,} bytes "
                              f"with --candidates {cands}: raise it or add lower candidates")
    return BitswitchError(f"--avg-bits {value:g} is below the lowest reachable average {space.avg_bits(low):.3f} "
                          f"with --candidates {cands}: raise it or add lower candidates")


def sensitivity_table(model, tok, cfg: SearchConfig, space: SearchSpace, calib: M.MetricData, out: Path, log,
                      source=None):
    """``(table, info)``: the damage table of the searched units from ``source`` (default
    ``cfg.sensitivity``; an ``--alt-sensitivity`` entry) and where it came from."""
    source = cfg.sensitivity if source is None else source
    info = {"source": source, "metric": None, "n": calib.size, "offset": calib.offset}
    t0 = time.perf_counter()
    if source in PROXIES:
        scored = proxy_scores(model, tok, calib, cfg.base, space.candidates, source, cfg.proxy_batches,
                              cfg.batch_size, units=space.units, seed=cfg.seed)
        known, info["metric"] = scored["scores"], "nll (proxy)"
        energy = None
    else:
        if source == "measured":
            probe = next(iter(space.units.values())).specs[space.candidates[0]]
            path, settings = out / "sensitivity.json", settings_hash(cfg)
            done = {r["name"]: r for r in previous_records(path, "sensitivity", settings)}
            doc = {"kind": "sensitivity", "source": "measured", "granularity": "unit", "base": cfg.base,
                   "probe": probe, "metric": calib.metric, "settings": settings, "records": list(done.values())}

            def save(base_record, record):
                doc["base_record"] = base_record
                doc["records"].append(record)
                atomic_write_json(path, doc)

            doc["base_record"], doc["records"] = measure_sensitivity(model, tok, calib, cfg.base, probe, "unit",
                                                                     done=done, on_record=save)
            atomic_write_json(path, doc)
            info.update(metric=calib.metric, file=str(path))
        else:  # one or several sweeps (their probes merge: e.g. w3a8 and w8a8 around a w4a8 base)
            files = [source] if isinstance(source, str) else list(source)
            docs = [load_sensitivity(f) for f in files]
            for f, d in zip(files, docs):
                if d.get("base") != cfg.base:
                    log(f"note: {f} was measured from base {d.get('base')!r}, the search starts at {cfg.base!r}")
            doc = {"records": [r for d in docs for r in d["records"]]}
            info.update(source=files if len(files) > 1 else files[0], metric=docs[0].get("metric"),
                        n=docs[0].get("n"), offset=docs[0].get("offset"), probes=[d.get("probe") for d in docs])
        known = known_from_records(doc["records"])
        probe_bits = {b for row in known.values() for b in row}
        energy = noise_energy(model, space, probe_bits)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    info["fit"] = cfg.damage_fit if energy is not None else None   # proxies come energy-scaled: no fit
    return damage_table(space, known, energy, info["fit"] or "side"), info


def run_search(cfg: SearchConfig, argv: list[str] | None = None, log=print) -> dict:
    """Search, verify and (with ``--pareto``) compare; returns the dict written to results.json."""
    out = Path(cfg.out)
    settings = settings_hash(cfg)
    cache = {r["profile"]: r for r in previous_records(out / "results.json", "search", settings)}
    calib_done = previous_records(out / "results.json", "search", settings, key="calibration")
    model, tok = load_switchable(cfg.model, cfg.adapters, cfg.options, cfg.device, cfg.dtype, cfg.seed, cfg.keying)
    if is_exported(model):
        raise BitswitchError(f"{cfg.model!r} is an export fixed at one profile: search the source model")
    space = build_space(model, cfg.base, cfg.candidates)
    for kind, value in cfg.budgets:  # an impossible budget fails before any measuring
        if kind != "max_drop" and _budget(space, kind, value) < sum(min(c.values())
                                                                     for c in _costs(space, kind).values()):
            raise _infeasible(space, kind, value)
    md = M.prepare(model, tok, cfg.metric, cfg.data, cfg.limit, cfg.offset, cfg.max_tokens, cfg.batch_size,
                   cfg.max_new_tokens, cfg.window)
    held_out = cfg.calib_offset is not None or cfg.calib_limit is not None
    calib = M.prepare(model, tok, cfg.sens_metric, cfg.data, cfg.calib_limit or cfg.limit,
                      cfg.offset if cfg.calib_offset is None else cfg.calib_offset, cfg.max_tokens,
                      cfg.batch_size, cfg.max_new_tokens, cfg.window) if held_out else dataclasses.replace(
                          md, metric=cfg.sens_metric)
    if not held_out and (cfg.sensitivity in PROXIES or cfg.sensitivity == "measured"):
        log("note: sensitivities use the evaluation data itself; pass --calib-offset/--calib-limit for held-out ones")
    results = {"kind": "search", "method": cfg.method, "task": cfg.task, "metric": cfg.metric,
               "model": cfg.model, "adapters": cfg.adapters, "data": cfg.data, "offset": cfg.offset,
               "limit": cfg.limit, "n": md.size, "candidates": list(space.candidates), "base": cfg.base,
               "budgets": [{k: v} for k, v in cfg.budgets], "settings": settings,
               **run_metadata(argv, cfg.seed, device=str(next(model.parameters()).device), dtype=cfg.dtype),
               "config": dataclasses.asdict(cfg), "sensitivity": None, "records": [], "searched": [],
               "calibration": calib_done, "pareto": None}

    def save():
        atomic_write_json(out / "results.json", results)

    def measure(profile: str, label: str, kind: str, data: M.MetricData = md, extra=None,
                metric: str | None = None) -> dict:
        """Measure ``metric`` (default ``cfg.metric``) of one profile on ``data`` (evaluation records
        are cached by profile text, so a rerun or a searched profile equal to a uniform one is not
        measured twice)."""
        metric = metric or cfg.metric
        if data is md and profile in cache:
            return {**cache[profile], "label": label, "kind": kind, **(extra or {})}
        set_profile(model, profile)
        t0 = time.perf_counter()
        with tqdm(total=data.size, desc=f"{metric} {label}", leave=False, dynamic_ncols=True) as bar:
            values = M.measure(model, tok, data, metric, progress=bar)
        rep = profile_report(model, profile)
        return {"label": label, "kind": kind, "profile": profile, **values,
                "avg_w_bits": round(rep["avg_w_bits"], 4), "weight_bytes": rep["weight_bytes"],
                "fp16_weight_bytes": rep["fp16_weight_bytes"], "fp32_weight_bytes": rep["fp32_weight_bytes"],
                "vs_fp16": round(rep["weight_bytes"] / rep["fp16_weight_bytes"], 4),
                "vs_fp32": round(rep["weight_bytes"] / rep["fp32_weight_bytes"], 4),
                "seconds": round(time.perf_counter() - t0, 3), **(extra or {})}

    def add(rec: dict) -> dict:
        rec["drop"] = M.drop(cfg.metric, rec[cfg.metric], base_rec[cfg.metric])
        results["records"].append(rec)
        cache[rec["profile"]] = rec
        save()
        log(f"[{rec['label']}] {cfg.metric}={rec[cfg.metric]:.4g} avg_w_bits={rec['avg_w_bits']:.3f} "
            f"weight_bytes={rec['weight_bytes']:,}")
        return rec

    base_rec = measure(cfg.base, "base", "base")
    base_rec = add(base_rec)
    # the damage tables: --sensitivity's, then one per --alt-sensitivity source, keyed by source
    tables, infos = {}, []
    for source in (cfg.sensitivity, *cfg.alt_sensitivity):
        tbl, info = sensitivity_table(model, tok, cfg, space, calib, out, log, source)
        info["table"] = {u: {str(b): d for b, d in row.items()} for u, row in tbl.items()}
        tables[_source_key(source)] = tbl
        infos.append(info)
    table = next(iter(tables.values()))
    # with several tables, records and calibration labels name the table a solution came from
    tags = {key: f"-alt{i}" if i else "" for i, key in enumerate(tables)} if len(tables) > 1 else {}
    results["sensitivity"], results["alt_sensitivity"] = infos[0], infos[1:]
    save()

    def searched(assign: dict[str, int], label: str, extra: dict) -> dict:
        profile = space.profile(assign)
        extra = {**extra, "predicted_damage": predicted(tables.get(extra.get("table"), table), assign),
                 "bits": {str(b): n for b, n in sorted(Counter(assign.values()).items())},
                 "predicted_weight_bytes": space.weight_bytes(assign),
                 "predicted_avg_w_bits": round(space.avg_bits(assign), 4)}
        rec = add(measure(profile, label, "searched", extra=extra))
        rec["file"] = write_profile_file(out / "profiles" / f"{label}.json", rec)
        results["searched"].append(label)
        save()
        return rec

    def solve(kind: str, value, tbl) -> tuple[dict[str, int], dict]:
        if cfg.method == "greedy":
            assign, history = greedy_search(tbl, _costs(space, kind), budget=_budget(space, kind, value))
            return assign, {"steps": len(history)}
        try:
            sol = solve_budget(tbl, _costs(space, kind), _budget(space, kind, value), cfg.max_states)
        except InfeasibleBudget:
            raise _infeasible(space, kind, value) from None
        return sol.assign, {"exact": sol.exact, "gap": sol.gap, "bound": sol.bound}

    solved: dict[tuple[str, float], list[tuple[str, float, dict[str, int], dict]]] = {}

    def solutions(kind: str, value) -> list[tuple[str, float, dict[str, int], dict]]:
        """``(table, factor, assignment, extra)`` per damage table and ``--below-penalty`` factor at
        one budget (solved once)."""
        if (kind, value) not in solved:
            ref = _reference(space, kind, value)
            solved[kind, value] = [(key, f, *solve(kind, value, penalize(tbl, space, f, ref)))
                                   for key, tbl in tables.items() for f in cfg.below_penalty]
            for key, _, _, extra in solved[kind, value]:
                extra["penalty_ref_bits"] = ref
                if tags:
                    extra["table"] = key
        return solved[kind, value]

    def calibrated(kind: str, value, label: str) -> tuple[dict[str, int], dict]:
        """One solution per damage table and ``--below-penalty`` factor (on lowering a unit below
        the widest uniform profile the budget allows); with several, each is measured on the
        calibration data (``sens_metric``) and the best is kept (the trials go in the record). The
        solutions of the run's other budgets that fit this one compete too: a budget is a ceiling, so
        a cheaper profile that calibrates better is the better answer (it is marked ``picked_from``)."""
        own = solutions(kind, value)
        if len(own) == 1:
            _, f, assign, extra = own[0]
            return assign, {**extra, "below_penalty": f}
        costs, cap = _costs(space, kind), _budget(space, kind, value)
        pool = [(label, *sol) for sol in own]
        for k, v in cfg.budgets:
            if v != value:
                pool += [(_label(k, v), *sol) for sol in solutions(k, v)
                         if sum(costs[u][b] for u, b in sol[2].items()) <= cap]
        better, trials, best = higher_is_better(cfg.sens_metric), [], None
        seen = {r["profile"]: r[cfg.sens_metric] for r in results["calibration"]}   # this run's and a resumed one's
        for origin, key, f, assign, extra in pool:
            profile = space.profile(assign)
            if profile not in seen:   # several factors often give one assignment: measure it once
                rec = measure(profile, f"{origin}{tags.get(key, '')}-penalty{f:g}", "calib", calib,
                              metric=cfg.sens_metric)
                seen[profile] = rec[cfg.sens_metric]
                results["calibration"].append({k: rec[k] for k in ("label", "profile", cfg.sens_metric, "avg_w_bits",
                                                                   "weight_bytes")})
                save()
            trial = {**({"table": key} if tags else {}), "below_penalty": f, cfg.sens_metric: seen[profile],
                     "predicted_damage": predicted(tables[key], assign),
                     "bits": {str(b): n for b, n in sorted(Counter(assign.values()).items())},
                     **({"from": origin} if origin != label else {})}
            trials.append(trial)
            where = "" if origin == label else f"{origin} "
            where += f"table {key} " if tags else ""
            log(f"[{label}] {where}below-penalty {f:g}: calibration {cfg.sens_metric}={seen[profile]:.4g} "
                f"bits={trial['bits']}")
            score = seen[profile] if not better else -seen[profile]
            if best is None or score < best[0]:   # ties keep this budget's own, lower factor first
                best = (score, assign, {**extra, "below_penalty": f,
                                        **({"picked_from": origin} if origin != label else {})})
        _, assign, extra = best
        return assign, {**extra, "penalty_trials": trials, "calib": {"offset": calib.offset, "n": calib.size}}

    for kind, value in cfg.budgets:
        label = _label(kind, value)
        extra = {"budget": {kind: value}, "method": cfg.method}
        if kind == "max_drop":
            assign, steps = _search_drop(cfg, model, tok, space, penalize(table, space, cfg.below_penalty[0]),
                                         calib, value, measure)
            extra.update(steps=steps, below_penalty=cfg.below_penalty[0])
        else:
            assign, more = calibrated(kind, value, label)
            extra.update(more)
        searched(assign, label, extra)

    if cfg.pareto:
        uniform_bits = sorted(set(space.candidates) | {int(v) for k, v in cfg.budgets
                                                        if k == "avg_bits" and float(v).is_integer()
                                                        and int(v) in WEIGHT_BITS})
        for b in uniform_bits:
            profile = _uniform_profile(space, b)
            if any(r["profile"] == profile for r in results["records"]):
                continue  # e.g. the base profile itself
            add(measure(profile, f"uniform-w{b}", "uniform"))
        recs, better = results["records"], higher_is_better(cfg.metric)
        fronts = {x: pareto_front(recs, x, cfg.metric, better) for x in ("avg_w_bits", "weight_bytes")}
        results["pareto"] = {x: [recs[i]["label"] for i in f] for x, f in fronts.items()}
        title = f"{cfg.metric} vs size ({cfg.model}, {md.size} {'questions' if md.task == 'squad' else 'tokens'})"
        results["artifacts"] = [pareto_plot(recs, cfg.metric, out / "pareto.png", fronts, title)]
        for r in recs:
            r["on_front"] = r["label"] in results["pareto"]["avg_w_bits"]
    save()
    columns = ["label", "kind", cfg.metric, *(["em", "answer_ppl"] if cfg.metric == "f1" else []), "drop",
               "avg_w_bits", "weight_bytes", "vs_fp16", "vs_fp32", "predicted_damage", "seconds"]
    table_md = markdown_table(results["records"], columns)
    profiles = "\n".join(f"- `{r['label']}`: `{r['profile']}`" for r in results["records"] if r["kind"] == "searched")
    atomic_write_text(out / "results.md", f"# search on {cfg.model} ({cfg.task}, {cfg.metric})\n\n"
                                          f"`{results['command']}`\n\n{table_md}\n\n{profiles}\n")
    results["table"] = table_md
    return results


def _source_key(source) -> str:
    """A table's key in records: the proxy name or file path (several merged files joined by '+')."""
    return source if isinstance(source, str) else "+".join(source)


def _uniform_profile(space: SearchSpace, bits: int) -> str:
    """Every searched unit at ``bits`` (also for a width that is not a candidate)."""
    import dataclasses as dc

    from ..profiles import table_to_string
    from ..quant.config import UnitPrecision

    table = dict(space.base_table)
    for u, uc in space.units.items():
        q = dc.replace(next(iter(uc.quantizers.values())), bits=bits)
        table[u] = UnitPrecision(q, space.base_table[u].act)
    return table_to_string(table)


def _search_drop(cfg, model, tok, space, table, calib, max_drop, measure):
    """``--max-drop``: greedy measures each move on the calibration data; budget bisects the
    average-bits budget (eighths of a bit) for the smallest whose solution stays within the drop."""
    base_value = measure(cfg.base, "calib-base", "calib", calib)[cfg.metric]

    def drop_of(assign):  # the drop in --metric, measured on the calibration data
        rec = measure(space.profile(assign), "calib-step", "calib", calib)
        return M.drop(cfg.metric, rec[cfg.metric], base_value)

    if cfg.method == "greedy":
        assign, history = greedy_search(table, _costs(space, "max_bytes"), drop_of, max_drop, chunk=cfg.chunk)
        return assign, len(history)
    lo, hi = 8 * space.candidates[0], 8 * space.candidates[-1]
    best = space.uniform(space.candidates[-1])
    steps = 0
    while lo <= hi:
        mid = (lo + hi) // 2
        sol = solve_budget(table, _costs(space, "avg_bits"), space.avg_bits_budget(mid / 8), cfg.max_states)
        steps += 1
        if drop_of(sol.assign) <= max_drop:
            best, hi = sol.assign, mid - 1
        else:
            lo = mid + 1
    return best, steps
