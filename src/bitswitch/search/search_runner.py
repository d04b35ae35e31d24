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
``--pareto`` adds the uniform profiles, the front and ``OUT/pareto.png``. The job
(``bitswitch.jobs.Job``) keeps ``results.json``: a rerun with the same settings measures nothing
twice. :class:`Search` holds one run (model, space, data, tables, job); :func:`run_search` runs it.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from ..accounting import profile_report
from ..errors import BitswitchError
from ..io import atomic_write_json
from ..jobs import Job
from ..loading import is_exported, load_switchable
from ..plots import pareto_plot
from ..profiles import profile_to_mapping
from ..quant.config import WEIGHT_BITS
from ..results import higher_is_better
from ..switching import set_profile
from . import metrics as M
from .budget import InfeasibleBudget, solve_budget
from .config import SearchConfig
from .greedy import greedy_search
from .pareto import pareto_front
from .proxies import PROXIES, proxy_scores
from .sensitivity_runner import measured_sweep
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


class Search:
    """One search run: the model loaded once, the search space, the evaluation (``md``) and
    calibration (``calib``) data, the damage tables and the job that keeps ``OUT/results.json``."""

    def __init__(self, cfg: SearchConfig, argv: list[str] | None = None, log=print):
        self.cfg, self.argv, self.log = cfg, argv, log
        self.job = Job(cfg, "search", argv, key="label", log=log)
        # evaluation records by profile text: a rerun or a searched profile equal to a uniform one is not measured twice
        self.cache = {r["profile"]: r for r in self.job.previous.values()}
        self.model, self.tok = load_switchable(cfg.model, cfg.adapters, cfg.options, cfg.device, cfg.dtype, cfg.seed,
                                               cfg.keying)
        if is_exported(self.model):
            raise BitswitchError(f"{cfg.model!r} is an export fixed at one profile: search the source model")
        self.space = space = build_space(self.model, cfg.base, cfg.candidates)
        for kind, value in cfg.budgets:  # an impossible budget fails before any measuring
            if kind != "max_drop" and _budget(space, kind, value) < sum(min(c.values())
                                                                         for c in _costs(space, kind).values()):
                raise _infeasible(space, kind, value)
        self.md = M.prepare(self.model, self.tok, cfg.metric, cfg.data, cfg.limit, cfg.offset, cfg.max_tokens,
                            cfg.batch_size, cfg.max_new_tokens, cfg.window, order=cfg.order,
                            sample_seed=cfg.sample_seed)
        held_out = cfg.calib_offset is not None or cfg.calib_limit is not None
        self.calib = M.prepare(self.model, self.tok, cfg.sens_metric, cfg.data, cfg.calib_limit or cfg.limit,
                               cfg.offset if cfg.calib_offset is None else cfg.calib_offset, cfg.max_tokens,
                               cfg.batch_size, cfg.max_new_tokens, cfg.window, order=cfg.order,
                               sample_seed=cfg.sample_seed) if held_out else dataclasses.replace(
                                   self.md, metric=cfg.sens_metric)
        if not held_out and (cfg.sensitivity in PROXIES or cfg.sensitivity == "measured"):
            log("note: sensitivities use the evaluation data itself; pass --calib-offset/--calib-limit for held-out "
                "ones")
        self.job.describe(self.model, method=cfg.method, task=cfg.task, metric=cfg.metric, model=cfg.model,
                          adapters=cfg.adapters, data=cfg.data, offset=cfg.offset, limit=cfg.limit, n=self.md.size,
                          candidates=list(space.candidates), base=cfg.base,
                          budgets=[{k: v} for k, v in cfg.budgets], sensitivity=None, searched=[],
                          calibration=self.job.reuse("calibration"), pareto=None)
        self.base_rec: dict = {}
        self.tables: dict[str, dict[str, dict[int, float]]] = {}   # by source (load_tables)
        self.table: dict[str, dict[int, float]] = {}                # --sensitivity's
        self.tags: dict[str, str] = {}                              # record/label tag per table, when several
        self.solved: dict[tuple[str, float], list[tuple[str, float, dict[str, int], dict]]] = {}

    def run(self) -> dict:
        """Search every budget, verify, (with ``--pareto``) compare; returns the results dict."""
        cfg, job = self.cfg, self.job
        self.base_rec = self.measure(cfg.base, "base", "base")
        self.add(self.base_rec)
        self.load_tables()
        for kind, value in cfg.budgets:
            label = _label(kind, value)
            extra = {"budget": {kind: value}, "method": cfg.method}
            if kind == "max_drop":
                assign, steps = self.search_drop(penalize(self.table, self.space, cfg.below_penalty[0]), value)
                extra.update(steps=steps, below_penalty=cfg.below_penalty[0])
            else:
                assign, more = self.calibrated(kind, value, label)
                extra.update(more)
            self.searched(assign, label, extra)
        if cfg.pareto:
            self.pareto()
        columns = ["label", "kind", cfg.metric, *(["em", "answer_ppl"] if cfg.metric == "f1" else []), "drop",
                   "avg_w_bits", "weight_bytes", "vs_fp16", "vs_fp32", "predicted_damage", "seconds"]
        profiles = "\n".join(f"- `{r['label']}`: `{r['profile']}`" for r in job.doc["records"]
                             if r["kind"] == "searched")
        table = job.finish(columns, f"search on {cfg.model} ({cfg.task}, {cfg.metric})", profiles)
        return {**job.doc, "table": table}

    def measure(self, profile: str, label: str, kind: str, data: M.MetricData | None = None, extra=None,
                metric: str | None = None) -> dict:
        """Measure ``metric`` (default ``cfg.metric``) of one profile on ``data`` (default the
        evaluation data, whose records are cached by profile text)."""
        metric, data = metric or self.cfg.metric, self.md if data is None else data
        if data is self.md and profile in self.cache:
            return {**self.cache[profile], "label": label, "kind": kind, **(extra or {})}
        set_profile(self.model, profile)
        t0 = time.perf_counter()
        with tqdm(total=data.size, desc=f"{metric} {label}", leave=False, dynamic_ncols=True) as bar:
            values = M.measure(self.model, self.tok, data, metric, progress=bar)
        rep = profile_report(self.model, profile)
        return {"label": label, "kind": kind, "profile": profile, **values,
                "avg_w_bits": round(rep["avg_w_bits"], 4), "weight_bytes": rep["weight_bytes"],
                "fp16_weight_bytes": rep["fp16_weight_bytes"], "fp32_weight_bytes": rep["fp32_weight_bytes"],
                "vs_fp16": round(rep["weight_bytes"] / rep["fp16_weight_bytes"], 4),
                "vs_fp32": round(rep["weight_bytes"] / rep["fp32_weight_bytes"], 4),
                "seconds": round(time.perf_counter() - t0, 3), **(extra or {})}

    def add(self, rec: dict) -> dict:
        """An evaluation record, with its drop from the base, into results.json."""
        metric = self.cfg.metric
        rec["drop"] = M.drop(metric, rec[metric], self.base_rec[metric])
        self.cache[rec["profile"]] = rec
        return self.job.add(rec, f"[{rec['label']}] {metric}={rec[metric]:.4g} avg_w_bits={rec['avg_w_bits']:.3f} "
                                 f"weight_bytes={rec['weight_bytes']:,}")

    def load_tables(self) -> None:
        """The damage tables: --sensitivity's, then one per --alt-sensitivity source, keyed by source."""
        infos = []
        for source in (self.cfg.sensitivity, *self.cfg.alt_sensitivity):
            tbl, info = self.sensitivity_table(source)
            info["table"] = {u: {str(b): d for b, d in row.items()} for u, row in tbl.items()}
            self.tables[_source_key(source)] = tbl
            infos.append(info)
        self.table = next(iter(self.tables.values()))
        # with several tables, records and calibration labels name the table a solution came from
        if len(self.tables) > 1:
            self.tags = {key: f"-alt{i}" if i else "" for i, key in enumerate(self.tables)}
        self.job.doc["sensitivity"], self.job.doc["alt_sensitivity"] = infos[0], infos[1:]
        self.job.save()

    def sensitivity_table(self, source) -> tuple[dict[str, dict[int, float]], dict]:
        """``(table, info)``: the damage table of the searched units from ``source`` (``cfg.sensitivity``
        or an ``--alt-sensitivity`` entry) and where it came from."""
        cfg, space, calib = self.cfg, self.space, self.calib
        info = {"source": source, "metric": None, "n": calib.size, "offset": calib.offset}
        t0 = time.perf_counter()
        if source in PROXIES:
            scored = proxy_scores(self.model, self.tok, calib, cfg.base, space.candidates, source, cfg.proxy_batches,
                                  cfg.batch_size, units=space.units, seed=cfg.seed)
            known, info["metric"] = scored["scores"], "nll (proxy)"
            energy = None
        else:
            if source == "measured":   # OUT/sensitivity.json, resumed like results.json
                probe = next(iter(space.units.values())).specs[space.candidates[0]]
                sweep = Job(cfg, "sensitivity", self.argv, key="name", log=self.log, name="sensitivity.json")
                sweep.describe(source="measured", granularity="unit", base=cfg.base, probe=probe, metric=calib.metric)
                records = measured_sweep(sweep, self.model, self.tok, calib, cfg.base, probe, "unit")
                info.update(metric=calib.metric, file=str(sweep.path))
            else:  # one or several sweeps (their probes merge: e.g. w3a8 and w8a8 around a w4a8 base)
                files = [source] if isinstance(source, str) else list(source)
                docs = [load_sensitivity(f) for f in files]
                for f, d in zip(files, docs):
                    if d.get("base") != cfg.base:
                        self.log(f"note: {f} was measured from base {d.get('base')!r}, the search starts at "
                                 f"{cfg.base!r}")
                records = [r for d in docs for r in d["records"]]
                info.update(source=files if len(files) > 1 else files[0], metric=docs[0].get("metric"),
                            n=docs[0].get("n"), offset=docs[0].get("offset"), probes=[d.get("probe") for d in docs])
            known = known_from_records(records)
            probe_bits = {b for row in known.values() for b in row}
            energy = noise_energy(self.model, space, probe_bits)
        info["seconds"] = round(time.perf_counter() - t0, 3)
        info["fit"] = cfg.damage_fit if energy is not None else None   # proxies come energy-scaled: no fit
        return damage_table(space, known, energy, info["fit"] or "side"), info

    def searched(self, assign: dict[str, int], label: str, extra: dict) -> dict:
        """Measure a searched assignment on the evaluation data; its profile file in OUT/profiles."""
        space = self.space
        extra = {**extra, "predicted_damage": predicted(self.tables.get(extra.get("table"), self.table), assign),
                 "bits": _bits(assign), "predicted_weight_bytes": space.weight_bytes(assign),
                 "predicted_avg_w_bits": round(space.avg_bits(assign), 4)}
        rec = self.add(self.measure(space.profile(assign), label, "searched", extra=extra))
        rec["file"] = write_profile_file(self.job.out / "profiles" / f"{label}.json", rec)
        self.job.doc["searched"].append(label)
        self.job.save()
        return rec

    def solve(self, kind: str, value, tbl) -> tuple[dict[str, int], dict]:
        space = self.space
        if self.cfg.method == "greedy":
            assign, history = greedy_search(tbl, _costs(space, kind), budget=_budget(space, kind, value))
            return assign, {"steps": len(history)}
        try:
            sol = solve_budget(tbl, _costs(space, kind), _budget(space, kind, value), self.cfg.max_states)
        except InfeasibleBudget:
            raise _infeasible(space, kind, value) from None
        return sol.assign, {"exact": sol.exact, "gap": sol.gap, "bound": sol.bound}

    def solutions(self, kind: str, value) -> list[tuple[str, float, dict[str, int], dict]]:
        """``(table, factor, assignment, extra)`` per damage table and ``--below-penalty`` factor at
        one budget (solved once)."""
        if (kind, value) not in self.solved:
            ref = _reference(self.space, kind, value)
            self.solved[kind, value] = [(key, f, *self.solve(kind, value, penalize(tbl, self.space, f, ref)))
                                        for key, tbl in self.tables.items() for f in self.cfg.below_penalty]
            for key, _, _, extra in self.solved[kind, value]:
                extra["penalty_ref_bits"] = ref
                if self.tags:
                    extra["table"] = key
        return self.solved[kind, value]

    def calibrated(self, kind: str, value, label: str) -> tuple[dict[str, int], dict]:
        """One solution per damage table and ``--below-penalty`` factor (on lowering a unit below
        the widest uniform profile the budget allows); with several, each is measured on the
        calibration data (``sens_metric``) and the best is kept (the trials go in the record). The
        solutions of the run's other budgets that fit this one compete too: a budget is a ceiling, so
        a cheaper profile that calibrates better is the better answer (it is marked ``picked_from``)."""
        cfg, tags, metric = self.cfg, self.tags, self.cfg.sens_metric
        own = self.solutions(kind, value)
        if len(own) == 1:
            _, f, assign, extra = own[0]
            return assign, {**extra, "below_penalty": f}
        costs, cap = _costs(self.space, kind), _budget(self.space, kind, value)
        pool = [(label, *sol) for sol in own]
        for k, v in cfg.budgets:
            if v != value:
                pool += [(_label(k, v), *sol) for sol in self.solutions(k, v)
                         if sum(costs[u][b] for u, b in sol[2].items()) <= cap]
        better, trials, best = higher_is_better(metric), [], None
        calibration = self.job.doc["calibration"]   # this run's and a resumed one's
        seen = {r["profile"]: r[metric] for r in calibration}
        for origin, key, f, assign, extra in pool:
            profile = self.space.profile(assign)
            if profile not in seen:   # several factors often give one assignment: measure it once
                rec = self.measure(profile, f"{origin}{tags.get(key, '')}-penalty{f:g}", "calib", self.calib,
                                   metric=metric)
                seen[profile] = rec[metric]
                calibration.append({k: rec[k] for k in ("label", "profile", metric, "avg_w_bits", "weight_bytes")})
                self.job.save()
            trial = {**({"table": key} if tags else {}), "below_penalty": f, metric: seen[profile],
                     "predicted_damage": predicted(self.tables[key], assign), "bits": _bits(assign),
                     **({"from": origin} if origin != label else {})}
            trials.append(trial)
            where = "" if origin == label else f"{origin} "
            where += f"table {key} " if tags else ""
            self.log(f"[{label}] {where}below-penalty {f:g}: calibration {metric}={seen[profile]:.4g} "
                     f"bits={trial['bits']}")
            score = seen[profile] if not better else -seen[profile]
            if best is None or score < best[0]:   # ties keep this budget's own, lower factor first
                best = (score, assign, {**extra, "below_penalty": f,
                                        **({"picked_from": origin} if origin != label else {})})
        _, assign, extra = best
        return assign, {**extra, "penalty_trials": trials, "calib": {"offset": self.calib.offset, "n": self.calib.size}}

    def search_drop(self, table, max_drop) -> tuple[dict[str, int], int]:
        """``--max-drop``: greedy measures each move on the calibration data; budget bisects the
        average-bits budget (eighths of a bit) for the smallest whose solution stays within the drop."""
        cfg, space, calib = self.cfg, self.space, self.calib
        base_value = self.measure(cfg.base, "calib-base", "calib", calib)[cfg.metric]

        def drop_of(assign):  # the drop in --metric, measured on the calibration data
            rec = self.measure(space.profile(assign), "calib-step", "calib", calib)
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

    def pareto(self) -> None:
        """The uniform profiles (candidates and integral --avg-bits), the fronts and OUT/pareto.png."""
        cfg, space, job = self.cfg, self.space, self.job
        uniform_bits = sorted(set(space.candidates) | {int(v) for k, v in cfg.budgets
                                                        if k == "avg_bits" and float(v).is_integer()
                                                        and int(v) in WEIGHT_BITS})
        for b in uniform_bits:
            profile = _uniform_profile(space, b)
            if any(r["profile"] == profile for r in job.doc["records"]):
                continue  # e.g. the base profile itself
            self.add(self.measure(profile, f"uniform-w{b}", "uniform"))
        recs, better = job.doc["records"], higher_is_better(cfg.metric)
        fronts = {x: pareto_front(recs, x, cfg.metric, better) for x in ("avg_w_bits", "weight_bytes")}
        job.doc["pareto"] = {x: [recs[i]["label"] for i in f] for x, f in fronts.items()}
        unit = "questions" if self.md.task == "squad" else "tokens"
        title = f"{cfg.metric} vs size ({cfg.model}, {self.md.size} {unit})"
        job.doc["artifacts"] = [pareto_plot(recs, cfg.metric, job.out / "pareto.png", fronts, title)]
        for r in recs:
            r["on_front"] = r["label"] in job.doc["pareto"]["avg_w_bits"]


def run_search(cfg: SearchConfig, argv: list[str] | None = None, log=print) -> dict:
    """Search, verify and (with ``--pareto``) compare; returns the dict written to results.json."""
    return Search(cfg, argv, log).run()


def _bits(assign: dict[str, int]) -> dict[str, int]:
    """``{"4": units at 4 bits, ...}``."""
    return {str(b): n for b, n in sorted(Counter(assign.values()).items())}


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
