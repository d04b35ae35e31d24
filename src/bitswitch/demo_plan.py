"""The demo's recipe, chosen to fit a time budget: time what each stage costs on this machine, then
take the best recipe whose estimate fits.

Recipes, best first where ``auto`` chooses (SmolLM2-135M, 400 dev questions, docs/results.md
"Low-bit quality"): ``gguf`` where the base's block weights already lie on llama.cpp's Q4_1 grid
(as SmolLM2's do, bit for bit: :func:`native_grid`), ``gptq`` (the frozen base rounded by GPTQ at
every width before the same LoRA training: +3.5 F1 at w4a8 over ``lora``, 1.99x fp WikiText PPL
against 2.16x), then ``lora`` (round-to-nearest base). ``learn-clip`` and ``full`` cost 2-2.3x a
``lora`` step and did not beat it after 60 steps, so they run only when named.

``gguf`` trains and evaluates on llama.cpp's block formats (weight_grid gguf, asymmetric: w8 is
Q8_0, w5 Q5_1, w4 Q4_1; a8 is llama.cpp's q8_0 activation blocks), so every profile exports to
llama.cpp as it was measured. On a base shipped as Q4_1 its w4 weights *are* the base's weights; the
profiles lose only what a8 and the wider formats' own rounding lose. Widths without a format move to
the next lower one that has one (w6a8 -> w5a8, :func:`gguf_profiles`).

The estimate of a recipe, in seconds (each term measured here by :func:`probe`)::

    prepare (GPTQ: one block timed, times the blocks, plus a model load)
    + steps * train_step_s          (three steps of the first candidate timed after a warm-up
                                     step, scaled by the padded tokens of every step's batch)
    + questions * profiles * eval_s (one batch of questions timed at the first and the last profile)
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BitswitchError


@dataclass(frozen=True)
class Recipe:
    """``train``: TrainConfig overrides; ``gptq``: the base is rounded by GPTQ first."""

    name: str
    train: dict = field(default_factory=dict)
    gptq: bool = False


RECIPES = {"gguf": Recipe("gguf", {"weight_grid": "gguf", "weight_symmetric": False}),
           "gptq": Recipe("gptq", gptq=True), "lora": Recipe("lora"),
           "learn-clip": Recipe("learn-clip", {"learn_clip": True}), "full": Recipe("full", {"train_base": "full"})}
AUTO = ("gguf", "gptq", "lora")   # best first; the last is run even when nothing fits
NATIVE = "Q4_1"   # the grid a base must lie on for auto to consider ``gguf`` (the recipe's 4-bit format)


def native_grid(model) -> str | None:
    """The llama.cpp format every block weight of ``model`` lies on exactly (re-quantizing it gives
    back the same floats, bit for bit), or None. Checks the 4-, then 5-, then 8-bit formats."""
    import torch

    from .quant.gguf_grid import BLOCK, TYPES, dequantize_blocks, quantize_blocks
    from .units import block_list

    weights = []   # (out, in); GPT-2's Conv1D stores (in, out)
    for block in block_list(model)[1]:
        for mod in block.modules():
            if isinstance(mod, torch.nn.Linear):
                weights.append(mod.weight.detach())
            elif type(mod).__name__ == "Conv1D":
                weights.append(mod.weight.detach().t())
    if not weights or any(w.shape[1] % BLOCK for w in weights):
        return None
    for (bits, symmetric), name in sorted(TYPES.items()):
        if all(torch.equal(dequantize_blocks(*quantize_blocks(w, bits, symmetric)), w.float()) for w in weights):
            return name
    return None


def gguf_profiles(profiles) -> list[str]:
    """``profiles`` on the gguf recipe's formats (w8, w5, w4): a uniform ``wN...`` spec with no format
    of its own takes the next lower width that has one (w6a8 -> w5a8); duplicates are dropped."""
    import re

    out = []
    for spec in profiles:
        m = re.fullmatch(r"w(\d+)(.*)", spec)
        if m and int(m.group(1)) < 4:
            raise BitswitchError(f"the gguf recipe has no format below 4 bits: drop {spec} or name another --recipe")
        if m and int(m.group(1)) <= 8:
            bits = max(b for b in (4, 5, 8) if b <= int(m.group(1)))
            spec = f"w{bits}{m.group(2)}"
        if spec not in out:
            out.append(spec)
    return out


@dataclass(frozen=True)
class Probe:
    """Seconds measured on this machine: a training step, GPTQ of the whole base (None: not timed),
    one question at one profile, and what probing itself cost."""

    train_step_s: float
    gptq_s: float | None
    eval_s: float
    probe_s: float


def estimate(recipe: Recipe, probe: Probe, steps: int, questions: int, profiles: int) -> float:
    """Seconds ``recipe`` is expected to take after probing (module docstring); a recipe whose
    preparation was not timed gets ``inf``."""
    if recipe.gptq and probe.gptq_s is None:
        return float("inf")
    prepare = probe.gptq_s if recipe.gptq else 0.0
    return prepare + steps * probe.train_step_s + questions * profiles * probe.eval_s


def choose(probe: Probe, budget_s: float, steps: int, questions: int, profiles: int,
           candidates=AUTO) -> tuple[str, dict[str, float], bool]:
    """``(recipe, estimates, fits)``: the first of ``candidates`` whose estimate fits what is left of
    ``budget_s`` after probing; when none fits, the last (the cheapest) with ``fits`` False."""
    left = budget_s - probe.probe_s
    est = {name: estimate(RECIPES[name], probe, steps, questions, profiles) for name in candidates}
    for name in candidates:
        if est[name] <= left:
            return name, est, True
    return candidates[-1], est, False


def check_budget(minutes: float) -> float:
    if not minutes > 0 or minutes == float("inf"):
        raise BitswitchError(f"--time-budget must be a positive number of minutes, got {minutes}")
    return minutes * 60.0


def probe(train_cfg, eval_cfg, gptq_options: dict | None, budget_s: float = float("inf"), log=print) -> Probe:
    """Time three training steps of ``train_cfg`` (after a warm-up step; scaled to every step by its
    padded tokens) and one batch of dev questions at the first and the last profile; then, when
    ``gptq_options`` are given and lora alone still fits ``budget_s``, GPTQ of the first block
    (times the blocks, plus the model load). Writes only to a temporary directory."""
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bitswitch-probe-") as tmp:
        train_s = _time_train(dataclasses.replace(train_cfg, out=str(Path(tmp) / "train")))
        step_s = train_s / train_cfg.steps
        log(f"timing: training should take {train_s:.0f} s ({step_s:.1f} s a step)")
        eval_s = _time_eval(eval_cfg, Path(tmp) / "eval")
        log(f"timing: a dev question takes {eval_s:.2f} s")
    gptq_s = None
    lora = Probe(step_s, None, eval_s, time.perf_counter() - t_start)
    left = budget_s - lora.probe_s
    if gptq_options is not None and estimate(RECIPES["lora"], lora, train_cfg.steps, eval_cfg.limit,
                                             len(eval_cfg.profiles)) < left:
        gptq_s = _time_gptq(train_cfg, gptq_options)
        log(f"timing: GPTQ of the base would take {gptq_s:.0f} s")
    return Probe(step_s, gptq_s, eval_s, time.perf_counter() - t_start)


def _time_train(cfg) -> float:
    from .train.trainer import Trainer

    return Trainer(cfg, log=lambda m: None).estimate_seconds()


def _time_eval(cfg, out: Path) -> float:
    """Seconds a question takes, the mean of the first and the last profile (answers at the lowest
    profile run longer) over one full batch each: the per-question cost the real run sees."""
    from .evaluate.runner import run_eval

    n = min(cfg.limit or cfg.batch_size, cfg.batch_size)
    ends = list(dict.fromkeys([cfg.profiles[0], cfg.profiles[-1]]))
    res = run_eval(dataclasses.replace(cfg, profiles=ends, limit=n, out=str(out)), log=lambda m: None)
    return sum(float(r["seconds"]) for r in res["records"]) / (n * len(ends))


def _time_gptq(cfg, options: dict) -> float:
    from .loading import load
    from .prepare.gptq import calibration_ids, gptq_round
    from .profiles import QuantOptions
    from .switching import make_switchable
    from .units import block_list

    t0 = time.perf_counter()
    model, tok = load(cfg.model, device=cfg.device, dtype=cfg.dtype, seed=cfg.seed)
    batches = calibration_ids(tok, options["calib_data"], options["calib_questions"])
    make_switchable(model, QuantOptions())
    load_s = time.perf_counter() - t0
    n_blocks = len(block_list(model)[1])
    t0 = time.perf_counter()
    gptq_round(model, options["profiles"], batches, sequential=options["hessians"] == "sequential",
               progress=False, max_blocks=1)
    return load_s + n_blocks * (time.perf_counter() - t0)
