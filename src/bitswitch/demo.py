"""``bitswitch demo``, the main job: train switchable LoRA adapters on SQuAD with the ``random``
schedule over the profiles, then evaluate every profile on dev questions from the same model.

The recipe (``gguf``, ``gptq``, ``lora``, ``learn-clip``, ``full``; :mod:`bitswitch.demo_plan`) is named, or
``auto``: the best one whose estimate, timed on this machine, fits ``time_budget`` minutes. The
choice is written to ``OUT/plan.json`` first, so an interrupted demo resumes with the same recipe.
Sized by default for about 20 minutes on 2 CPU cores with SmolLM2-135M; raise ``steps`` and
``eval_limit`` on a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from .demo_plan import AUTO, NATIVE, RECIPES, check_budget, choose, gguf_profiles, native_grid, probe
from .errors import BitswitchError
from .evaluate.config import EvalConfig
from .evaluate.runner import run_eval
from .io import atomic_write_json
from .models import resolve_device
from .train.checkpoint import find_checkpoint
from .train.config import TrainConfig
from .train.trainer import train

GPTQ_QUESTIONS = 64   # calibration prompts (training text) for the gptq recipe, as its benchmark used


def run_demo(model: str = "smollm2-135m", train_data: str = "squad", dev_data: str = "squad",
             profiles=("fp", "w8a8", "w6a8", "w4a8"), steps: int = 60, batch_size: int = 8, lr: float = 1e-3,
             eval_limit: int = 50, device: str = "auto", out: str = "runs/demo", recipe: str = "auto",
             time_budget: float = 20.0, argv=None, log=print) -> dict:
    if recipe != "auto" and recipe not in RECIPES:
        raise BitswitchError(f"--recipe must be auto or one of {', '.join(RECIPES)}, got {recipe!r}")
    budget_s = check_budget(time_budget)
    resolve_device(device)   # a device this machine lacks fails now, not after training fell back to the CPU
    t0 = time.perf_counter()
    out_dir = Path(out)
    # one adapter shared by every profile: on SmolLM2 it beat per-profile adapters at every profile
    # (docs/results.md), since each profile's adapter would see only a quarter of the steps
    cfg = TrainConfig(model=model, data=train_data, profiles=list(profiles), schedule="random", keying="shared",
                      steps=steps,
                      batch_size=batch_size, lr=lr, warmup_steps=max(1, steps // 10), save_every=max(1, steps // 3),
                      device=device, out=str(out_dir / "train"), max_length=384)
    ev = EvalConfig(model=model, task="squad", data=dev_data, profiles=list(profiles), limit=eval_limit,
                    device=device, out=str(out_dir / "eval"), max_new_tokens=24)
    gptq = {"profiles": [p for p in profiles if p != "fp"], "calib_data": train_data,
            "calib_questions": GPTQ_QUESTIONS, "hessians": "fp"}
    plan = _plan(out_dir, recipe, budget_s, cfg, ev, gptq, log)
    chosen = RECIPES[plan["recipe"]]
    cfg, ev = _for_recipe(chosen, cfg, ev)
    stages = {}
    if chosen.gptq:
        t = time.perf_counter()
        model = _gptq_base(model, gptq, out_dir / "gptq-base", device, log)
        stages["prepare_s"] = round(time.perf_counter() - t, 1)
    cfg = dataclasses.replace(cfg, model=model)
    t = time.perf_counter()
    if (out_dir / "train" / "summary.json").is_file():
        log(f"training already finished in {out_dir / 'train'}: reusing its adapters")
    else:
        resume = find_checkpoint(out_dir / "train") is not None
        train(cfg, argv, resume=resume, log=log)
    stages["train_s"] = round(time.perf_counter() - t, 1)
    if chosen.train.get("train_base") == "full":
        model = str(out_dir / "train" / "model")   # the trained weights, with the adapters beside them
    t = time.perf_counter()
    res = run_eval(dataclasses.replace(ev, model=model, adapters=str(out_dir / "train" / "adapters")), argv, log=log)
    stages["eval_s"] = round(time.perf_counter() - t, 1)
    plan["profiles"] = list(ev.profiles)
    plan["this_run_s"] = {**stages, "total_s": round(time.perf_counter() - t0, 1)}
    atomic_write_json(out_dir / "plan.json", plan)
    return {"table": res["table"], "results": str(out_dir / "eval" / "results.json"), "recipe": plan["recipe"],
            "plan": str(out_dir / "plan.json"), "plot": res["artifacts"][0] if res.get("artifacts") else None}


def _plan(out_dir: Path, recipe: str, budget_s: float, cfg, ev, gptq: dict, log) -> dict:
    """The recipe of this output directory: the one written there before (a resumed demo keeps it),
    the one named, or what :func:`~.demo_plan.choose` picks from timings taken now."""
    path = out_dir / "plan.json"
    if path.is_file():
        plan = json.loads(path.read_text())
        if recipe not in ("auto", plan["recipe"]):
            raise BitswitchError(f"{out_dir} was started with --recipe {plan['recipe']}: resume it with that "
                                 f"recipe (or auto), or pass a new --out")
        log(f"recipe {plan['recipe']} (from {path})")
        return plan
    if recipe != "auto":
        if recipe == "gguf":
            gguf_profiles(cfg.profiles)   # a width it has no format for fails before anything is written
        plan = {"recipe": recipe, "chosen_by": "named"}
    else:
        native = _native_grid(cfg)
        candidates = tuple(r for r in AUTO if (r != "gguf" or (native == NATIVE and _gguf_fits(cfg.profiles)))
                           and (gptq["profiles"] or not RECIPES[r].gptq))
        grid = f"lie on llama.cpp's {native} grid" if native else "lie on no llama.cpp grid"
        log(f"the base's block weights {grid}: auto considers {', '.join(candidates)}")
        # timed on the settings of the recipe that runs if it fits
        cfg, ev = _for_recipe(RECIPES[candidates[0]], cfg, ev)
        p = probe(cfg, ev, gptq if "gptq" in candidates else None, budget_s, log=log)
        name, est, fits = choose(p, budget_s, cfg.steps, ev.limit, len(ev.profiles), candidates)
        plan = {"recipe": name, "chosen_by": "auto", "native_grid": native, "budget_s": budget_s, "fits": fits,
                "probe": {"train_step_s": round(p.train_step_s, 3), "gptq_s": None if p.gptq_s is None else round(p.gptq_s, 3),
                          "eval_question_s": round(p.eval_s, 3), "probe_s": round(p.probe_s, 1)},
                "estimates_s": {k: round(v, 3) for k, v in est.items()}}
        said = ", ".join(f"{k} {v / 60:.1f} min" for k, v in est.items())
        log(f"recipe {name}: estimates {said}; budget {budget_s / 60:.1f} min, {p.probe_s / 60:.1f} of it spent "
            "timing" + ("" if fits else f" (nothing fits: {name} runs anyway; lower --steps or --eval-limit)"))
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, plan)
    return plan


def _native_grid(cfg) -> str | None:
    from .loading import load

    model, _ = load(cfg.model, device=cfg.device, dtype=cfg.dtype, seed=cfg.seed)
    return native_grid(model)


def _gguf_fits(profiles) -> bool:
    try:
        gguf_profiles(profiles)
    except BitswitchError:   # a width below 4 bits: the recipe cannot run these profiles
        return False
    return True


def _for_recipe(recipe, cfg, ev):
    """The train and eval configs of ``recipe``: its training overrides, and for ``gguf`` its profiles
    (eval takes the grid from the adapters' saved options)."""
    profiles = gguf_profiles(cfg.profiles) if recipe.name == "gguf" else cfg.profiles
    return (dataclasses.replace(cfg, profiles=profiles, **recipe.train), dataclasses.replace(ev, profiles=profiles))


def _gptq_base(model: str, gptq: dict, out: Path, device: str, log) -> str:
    """``out``: ``model`` with GPTQ roundings at every width of the profiles (reused when there)."""
    from .prepare.steps import Step, prepare_model

    if (out / "config.json").is_file():
        log(f"GPTQ base already prepared in {out}: reusing it")
    else:
        prepare_model(model, [Step("gptq", {"profiles": gptq["profiles"], "calib_data": gptq["calib_data"],
                                             "calib_questions": gptq["calib_questions"],
                                             "hessians": gptq["hessians"]})], out, device=device)
    return str(out)
