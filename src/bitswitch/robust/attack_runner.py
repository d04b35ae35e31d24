"""``bitswitch attack``: craft adversarial SQuAD questions at each craft setting, replay them at every
evaluation setting, and write clean / adversarial EM, F1, answer perplexity, attack success rates,
the transferability matrix and the RPI trade-off.

A *setting* is a fixed profile or the RPI mode (named ``rpi``). Crafting against RPI is adaptive:
the attacker averages loss and gradient over ``eot`` precision draws (EOT), so the defence faces
an attacker that knows it. Evaluation at ``rpi`` uses a seeded draw sequence.

Outputs under ``OUT``: ``adv-<attack>-<setting>.jsonl`` (one header line, then one replayable
example per line; embedding attacks add ``.safetensors`` with the deltas), ``cells/<key>.json``
(per-question predictions of every replay), ``results.json`` (``"kind": "attack"``, kept by a
:class:`~bitswitch.jobs.Job`: one record per attack, row and column), ``results.md`` and
``transfer-<attack>.png``. Everything is written atomically as it is made; a rerun with the same
settings reuses finished adversarial files and cells (an interrupted run resumes). The files and
cells hash only what they depend on (:meth:`AttackConfig.question_settings`, the questions, and
their own attack, setting and replay knobs), so a run with another column list or batch size still
reuses the crafted files. :class:`AttackRun` holds one run's state; the config is in :mod:`.config`.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..data.squad import DEFAULT_TEMPLATE, PromptConfig, fit_contexts, load_squad
from ..errors import BitswitchError
from ..evaluate.generate import answer_token_ids
from ..evaluate.scorers import FALLBACK_CONTEXT, context_length
from ..io import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..jobs import Job
from ..loading import load_switchable
from ..profiles import safe_key
from ..results import markdown_table, se_of_mean
from ..switching import resolve_profile, use_profile
from .config import AttackConfig
from .embed import embed_attack
from .examples import read_adv_jsonl, write_adv_jsonl
from .hotflip import hotflip
from .loss import frozen
from .replay import replay
from .rpi import DrawSampler
from .transfer import cell_key, transfer_matrix
from .typo import typo

__all__ = ["AttackConfig", "AttackRun", "craft_examples", "render_markdown", "rpi_summary", "run_attack"]


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _describe(setting) -> str:
    return setting if isinstance(setting, str) else setting.describe()


def craft_examples(model, tok, examples, prompt_cfg, attack: str, setting, params: dict, cfg: AttackConfig,
                   name: str, log=print):
    """Adversarial examples for every question at ``setting``; ``(records, deltas or None)``."""
    sampler = DrawSampler(model, setting, cfg.eot, cfg.seed)
    advs, deltas = [], []
    start = setting if isinstance(setting, str) else setting.profiles[0]
    with frozen(model), use_profile(model, start), tqdm(examples, desc=f"craft {attack} @ {name}", unit="q",
                                                        dynamic_ncols=True, leave=False) as bar:
        for ex in bar:
            if attack == "typo":
                adv = typo(model, tok, ex, prompt_cfg, sampler, params["budget"], params["candidates"],
                           params["context"], cfg.seed, context_length(model, FALLBACK_CONTEXT), craft=name)
            elif attack == "hotflip":
                adv = hotflip(model, tok, ex, prompt_cfg, sampler, params["budget"], params["candidates"],
                              params["context"], craft=name)
            else:
                adv, delta = embed_attack(model, tok, ex, prompt_cfg, sampler, attack.split("-", 1)[1],
                                          params["eps"], params["norm"], params["steps"], params["context"], name)
                deltas.append((adv.extra["positions"], delta))
            advs.append(adv)
    return advs, (deltas if attack.startswith("embed") else None)


def _strip(res: dict) -> dict:
    return {k: v for k, v in res.items() if k != "rows"}


def _per_question_f1(res: dict) -> dict[str, float]:
    """Question id -> F1 in points (0-100) from a replay's rows."""
    return {r["id"]: 100.0 * r["f1"] for r in res.get("rows", [])}


def _paired_se(plus: list[dict], minus: list[dict]) -> float | None:
    """Standard error of mean(plus) - mean(minus) per question, where each side is the mean of its
    replays (so the question-to-question spread that every setting shares cancels)."""
    sides = [[_per_question_f1(r) for r in side] for side in (plus, minus)]
    tables = sides[0] + sides[1]
    if not sides[0] or not sides[1] or not all(tables):
        return None
    ids = sorted(set.intersection(*map(set, tables)))
    return se_of_mean(_mean([d[i] for d in sides[0]]) - _mean([d[i] for d in sides[1]]) for i in ids)


def rpi_summary(clean: dict, matrix: dict, cfg: AttackConfig) -> dict | None:
    """Clean F1 RPI costs and attacked F1 it recovers, against the fixed profiles of its set, each
    with its paired standard error over the questions (``*_se``, F1 points; None without rows)."""
    if not cfg.rpi:
        return None
    fixed = [p for p in cfg.rpi if p in matrix and p in clean and p in matrix[p]]
    if not fixed or "rpi" not in matrix:
        return None
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    clean_fixed = mean([clean[p]["f1"] for p in fixed])
    attacked_fixed = mean([matrix[p][p]["f1"] for p in fixed])
    adaptive = matrix["rpi"]["rpi"]["f1"]
    transfers = [matrix[p]["rpi"] for p in fixed if "rpi" in matrix[p]]
    transfer = mean([t["f1"] for t in transfers]) if transfers else None
    attacked = [matrix[p][p] for p in fixed]
    return {"profiles": fixed, "clean_f1_fixed_mean": clean_fixed, "clean_f1_rpi": clean["rpi"]["f1"],
            "clean_cost": clean_fixed - clean["rpi"]["f1"],
            "clean_cost_se": _paired_se([clean[p] for p in fixed], [clean["rpi"]]),
            "attacked_f1_fixed_mean": attacked_fixed, "attacked_f1_rpi_adaptive": adaptive,
            "attacked_f1_rpi_transfer": transfer,
            "recovered_adaptive": adaptive - attacked_fixed,
            "recovered_adaptive_se": _paired_se([matrix["rpi"]["rpi"]], attacked),
            "recovered_transfer": None if transfer is None else transfer - attacked_fixed,
            "recovered_transfer_se": _paired_se(transfers, attacked) if transfers else None}


class AttackRun:
    """One run over loaded questions and model: crafts (or reuses) the adversarial files, replays
    them in cells (each reused when its settings hash matches) and adds the results to ``job``."""

    def __init__(self, cfg: AttackConfig, job: Job, model, tok, examples, log=print):
        self.cfg, self.job, self.model, self.tok, self.examples, self.log = cfg, job, model, tok, examples, log
        self.prompt_cfg = prompt_config(cfg)
        # what every adversarial file and cell depends on, down to the questions loaded
        self.base = _hash({**cfg.question_settings(), "questions": [ex.id for ex in examples]})
        self.named = {**cfg.craft_settings(), **cfg.eval_settings()}
        self.adv_hashes: dict = {}   # (attack, row) -> hash of its adversarial examples: a cell depends on them
        self.clean: dict = {}        # column -> clean replay (with rows)

    # -- cells: one replay each, under OUT/cells ---------------------------------------------------
    def cell_path(self, key: str) -> Path:
        return self.job.out / "cells" / f"{safe_key(key.replace('|', '__'))}.json"

    def cell_hash(self, key: str) -> str:
        attack, row, _ = key.split("|")
        return _hash([self.base, key, self.cfg.max_new_tokens, self.cfg.batch_size, self.adv_hashes.get((attack, row)),
                      [_describe(self.named[n]) for n in key.split("|")[1:] if n in self.named]])

    def load_cell(self, key: str) -> dict | None:
        """A finished replay (with rows) whose settings match, or None."""
        path = self.cell_path(key)
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("settings") == self.cell_hash(key):
                return old["result"]
        return None

    def save_cell(self, key: str, res: dict) -> None:
        atomic_write_json(self.cell_path(key), {"settings": self.cell_hash(key), "result": res})

    # -- the run -----------------------------------------------------------------------------------
    def replay_clean(self) -> None:
        """The unattacked questions at every evaluation setting (the columns' baselines)."""
        cfg = self.cfg
        for col, setting in cfg.eval_settings().items():
            key = cell_key("clean", "-", col)
            res = self.load_cell(key)
            if res is None:
                with tqdm(total=len(self.examples), desc=f"clean @ {col}", unit="q", dynamic_ncols=True,
                          leave=False) as bar:
                    res = replay(self.model, self.tok, self.examples, self.prompt_cfg, setting, cfg.max_new_tokens,
                                 cfg.batch_size, cfg.seed, progress=bar)
                self.save_cell(key, res)
            self.clean[col] = res
            self.job.doc["clean"][col] = _strip(res)
            self.log(f"[clean] {col}: EM {res['em']:.2f} F1 {res['f1']:.2f}")
            self.job.save()

    def adversarial(self, attack: str, name: str, setting):
        """``(examples, deltas or None, path)`` of ``attack`` crafted at ``setting``: the file of an
        earlier run with the same settings and questions, or crafted now and written."""
        cfg = self.cfg
        params = cfg.attack_params(attack)
        header = {"attack": attack, "craft": name, "setting": _describe(setting), "params": params,
                  "eot": cfg.eot if not isinstance(setting, str) else 1,
                  "settings": _hash([self.base, attack, _describe(setting), params, cfg.eot])}
        path = self.job.out / f"adv-{attack}-{safe_key(name)}.jsonl"
        dpath = path.with_suffix(".safetensors")
        if path.is_file():
            old_header, advs = read_adv_jsonl(path)
            same = [a.id for a in advs] == [e.id for e in self.examples]
            if old_header.get("settings") == header["settings"] and same:
                self.log(f"[{attack}] reusing {path}")
                deltas = None
                if attack.startswith("embed"):
                    from safetensors.torch import load_file

                    tensors = load_file(str(dpath))
                    deltas = [(a.extra["positions"], tensors[a.id]) for a in advs]
                return advs, deltas, path
        t0 = time.perf_counter()
        advs, deltas = craft_examples(self.model, self.tok, self.examples, self.prompt_cfg, attack, setting, params,
                                      cfg, name, self.log)
        header["seconds"] = round(time.perf_counter() - t0, 2)
        if deltas is not None:
            from safetensors.torch import save

            atomic_write_bytes(dpath, save({a.id: d.contiguous() for a, (_, d) in zip(advs, deltas)}))
        write_adv_jsonl(path, header, advs)
        self.log(f"[{attack}] crafted at {name} in {header['seconds']} s: {path}")
        return advs, deltas, path

    def attack(self, attack: str) -> None:
        """Craft ``attack`` at every row, replay at every column, record the matrix and its heatmap."""
        cfg, clean = self.cfg, self.clean
        adversarial, deltas, files, craft_stats = {}, {}, {}, {}
        for row, setting in cfg.craft_settings().items():
            advs, d, path = self.adversarial(attack, row, setting)
            adversarial[row], deltas[row], files[row] = advs, d, str(path)
            self.adv_hashes[(attack, row)] = _hash([(a.id, a.adv_question, a.adv_context, a.extra.get("eps_abs"),
                                                     a.loss_adv) for a in advs])
            craft_stats[row] = {"mean_edits": sum(a.n_edits for a in advs) / len(advs),
                                "max_edits": max(a.n_edits for a in advs),
                                "changed": sum(a.n_edits > 0 for a in advs),
                                "mean_loss_clean": _mean([a.loss_clean for a in advs]),
                                "mean_loss_adv": _mean([a.loss_adv for a in advs])}
        done = {cell_key(attack, r, c): self.load_cell(cell_key(attack, r, c))
                for r in adversarial for c in cfg.eval_settings()}
        matrix = transfer_matrix(
            self.model, self.tok, self.examples, attack, adversarial, cfg.eval_settings(), self.prompt_cfg, clean,
            {r: d for r, d in deltas.items() if d is not None} or None, cfg.max_new_tokens, cfg.batch_size,
            cfg.seed, done={k: v for k, v in done.items() if v is not None},
            on_cell=self.save_cell, log=self.log,
            skip=(lambda r, c: (r == "rpi") != (c == "rpi")) if cfg.rpi_matrix == "diagonal" else None)
        direct = {row: _strip(matrix[row][row]) for row in matrix if row in matrix[row]}
        summary = {r: {c: _strip(v) for c, v in cols.items()} for r, cols in matrix.items()}
        self.job.doc["results"][attack] = {"params": cfg.attack_params(attack), "adversarial": files,
                                           "craft_stats": craft_stats, "direct": direct, "matrix": summary,
                                           "rpi_summary": rpi_summary(clean, matrix, cfg)}
        for row, cols in summary.items():
            for col, res in cols.items():
                self.job.add({"attack": attack, "craft": row, "eval": col, **res, "clean_f1": clean[col]["f1"]})
        from ..plots import transfer_heatmap

        self.job.doc["artifacts"].append(transfer_heatmap(
            {r: {c: v["f1"] for c, v in cols.items()} for r, cols in summary.items()},
            self.job.out / f"transfer-{attack}.png", f"{attack}: F1 under attack ({len(self.examples)} questions)"))
        self.job.save()


def load_attacked_model(cfg: AttackConfig):
    """The switchable model and tokenizer; every profile of ``cfg`` resolved (a bad one fails now)."""
    model, tok = load_switchable(cfg.model, cfg.adapters, cfg.options, cfg.device, cfg.dtype, cfg.seed, cfg.keying)
    if not hasattr(model, "bitswitch"):
        raise BitswitchError(f"{cfg.model!r} is an export fixed at one profile: attack the source model with "
                             "--adapters instead")
    for p in {*cfg.craft, *cfg.eval, *(cfg.rpi or [])}:
        resolve_profile(model, p)  # a bad profile fails now, in one line
    return model, tok


def prompt_config(cfg: AttackConfig) -> PromptConfig:
    return PromptConfig(template=cfg.template or DEFAULT_TEMPLATE, seed=cfg.seed, chat=cfg.chat)


def run_attack(cfg: AttackConfig, argv: list[str] | None = None, log=print) -> dict:
    """Run every attack of ``cfg``; returns the dict written to ``OUT/results.json`` (plus ``table``)."""
    examples = load_squad(cfg.data, split="validation", **cfg.squad_selection())
    job = Job(cfg, "attack", argv, key=lambda r: cell_key(r["attack"], r["craft"], r["eval"]), log=log)
    model, tok = load_attacked_model(cfg)
    # attacks edit prompt text and score the answer after it: cut contexts as eval does, so a prompt,
    # the longest gold answer and the generated tokens fit the model's positions
    answer_room = max(len(answer_token_ids(tok, ex.answers[0])) for ex in examples)
    examples, truncated = fit_contexts(tok, examples, prompt_config(cfg), context_length(model, FALLBACK_CONTEXT),
                                       reserve=max(cfg.max_new_tokens, answer_room))
    if truncated:
        log(f"note: {truncated} of {len(examples)} questions had their context cut to fit the model's "
            f"{context_length(model, FALLBACK_CONTEXT)} positions")
    job.describe(model, model=cfg.model, adapters=cfg.adapters, data=cfg.data, n=len(examples), truncated=truncated,
                 attacks=cfg.attacks, craft=list(cfg.craft_settings()), eval=list(cfg.eval_settings()),
                 rpi=None if cfg.rpi is None else {"profiles": cfg.rpi, "p": cfg.rpi_p,
                                                   "granularity": cfg.rpi_granularity, "eot": cfg.eot},
                 clean={}, results={}, artifacts=[])
    run = AttackRun(cfg, job, model, tok, examples, log)
    run.replay_clean()
    for attack in cfg.attacks:
        run.attack(attack)
    job.save()
    table = render_markdown(job.doc)
    atomic_write_text(job.out / "results.md", table)
    return {**job.doc, "table": table}


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def render_markdown(results: dict) -> str:
    """results.md: clean table, then per attack the direct results, the F1 matrix and the RPI summary."""
    parts = [f"# attack on {results['model']} ({results['n']} questions)", f"`{results['command']}`",
             "## clean", markdown_table([{"setting": k, **v} for k, v in results["clean"].items()],
                                        ["setting", "em", "f1", "answer_ppl", "n"])]
    for attack, r in results["results"].items():
        cols = results["eval"]
        parts.append(f"## {attack} ({', '.join(f'{k}={v}' for k, v in r['params'].items())})")
        parts.append(markdown_table([{"craft": k, **v, **r["craft_stats"].get(k, {})} for k, v in r["direct"].items()],
                                    ["craft", "em", "f1", "answer_ppl", "success_rate", "f1_drop", "mean_edits"]))
        parts.append("F1, crafted at row, evaluated at column:")
        parts.append(markdown_table([{"craft": row, **{c: v["f1"] for c, v in m.items()}} for row, m in r["matrix"].items()],
                                    ["craft", *cols]))
        if r["rpi_summary"]:
            s = r["rpi_summary"]
            parts.append(markdown_table([{"what": k, "value": v} for k, v in s.items() if k != "profiles"],
                                        ["what", "value"]))
    return "\n\n".join(parts) + "\n"
