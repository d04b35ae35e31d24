"""``bitswitch eval --dynamic threshold|gate|request --budget B [--widths w4g32,w8]``: a task's
metrics under a dynamic controller (fake quantization, one sequence at a time whatever
``--batch-size``), with the realized average weight bits and weight bytes read per token beside them.

``threshold`` is fitted first on the task's calibration inputs (SQuAD: prompts of ``--train-data``,
never the evaluated questions; wikitext: the first ``--calib-batches`` windows of the evaluated
text, so only the threshold's one scalar sees it). ``gate`` is trained (``--gate-steps``,
``--gate-penalty``) and its price fitted on ``--calib-batches`` prompts of ``--train-data`` for
either task (its weights must never see the evaluated text), then saved beside the results; with
``--gate-target answer`` it trains on those examples with their gold answers appended, the KL taken
at the answer's positions only;
``--gate FILE`` reuses a saved gate instead (only its price is fitted again, on the calibration
inputs the threshold uses). One record per run, keyed by the controller (a reused gate by the
sha256 of its tensors).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import BitswitchError
from ..jobs import Job
from ..loading import is_exported
from ..results import peak_rss_mb
from .gate import GateController, train_gate
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
    gate = ""
    if cfg.dynamic == "gate":
        target = "" if cfg.gate_target == "prompt" else f"|{cfg.gate_target}"   # the only target once
        gate = (f"|{cfg.gate_penalty}|{cfg.gate_steps}{target}" if cfg.gate is None
                else f"|{_saved_gate_digest(cfg.gate)}")
    pid = "dyn-" + hashlib.sha1(f"{cfg.dynamic}|{cfg.budget}|{cfg.budget_by}|{widths.widths}{gate}".encode()).hexdigest()[:12]
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
        extra = {"threshold": ctl.threshold, _calib_key(cfg): round(got, 4),
                 "calib_seconds": round(time.perf_counter() - t0, 2)}
        log(f"[{name}] threshold {ctl.threshold:.4g}: {got:.4f} {cfg.budget_by} per token on calibration data")
    elif cfg.dynamic == "gate" and cfg.gate is not None:
        ctl, extra = _saved_gate(cfg, task, model, widths, name, log)
    elif cfg.dynamic == "gate":
        ctl, extra = _trained_gate(cfg, task, model, tok, widths, name, pid, job.out, log)
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


def _calib_key(cfg) -> str:
    return f"calib_{'avg_w_bits' if cfg.budget_by == 'bits' else 'bytes_per_token'}"


def _trained_gate(cfg, task, model, tok, widths, name, pid, out, log) -> tuple[GateController, dict]:
    """Train a gate on calibration prompts (SQuAD training examples, for wikitext too), fit its price
    to the budget on them, and save it (gate-<id>.safetensors) beside the results."""
    from ..data.squad import DEFAULT_TEMPLATE, answer_batches, calibration_batches, load_squad

    if cfg.task == "squad":
        batches = task.calibration_batches()
        train = task.train
    else:
        train = load_squad(cfg.train_data, split="train")
        batches = calibration_batches(tok, train, cfg.calib_batches)
    # the target "answer" trains on the same examples with their gold answers appended, the KL on the
    # answer's positions; the price is fitted on the bare prompts either way, as the threshold's is
    examples = batches if cfg.gate_target == "prompt" else answer_batches(
        tok, train, len(batches), cfg.template or DEFAULT_TEMPLATE, cfg.chat)
    gate = GateController.from_model(model, widths)
    t0 = time.perf_counter()
    with tqdm(total=cfg.gate_steps, desc=f"gate penalty {cfg.gate_penalty:g}", unit="step", leave=False) as bar:
        history = train_gate(model, gate, examples, cfg.gate_penalty, cfg.gate_steps, seed=cfg.seed, progress=bar)
    got = gate.fit(model, batches, cfg.budget, cfg.budget_by)
    path = gate.save(Path(out) / f"gate-{pid}.safetensors")
    log(f"[{name}] gate trained {cfg.gate_steps} steps (last KL {history[-1]['kl']:.4f}, expected bits "
        f"{history[-1]['bits']:.3f}); price {gate.price:.4g}: {got:.4f} {cfg.budget_by} per token on calibration data")
    return gate, {"price": gate.price, _calib_key(cfg): round(got, 4), "calib_prompts": len(batches),
                  "gate_penalty": cfg.gate_penalty, "gate_steps": cfg.gate_steps, "gate_target": cfg.gate_target,
                  "gate_file": path.name,
                  "gate_history": {"kl": [round(h["kl"], 5) for h in history],
                                   "bits": [round(h["bits"], 4) for h in history]},
                  "calib_seconds": round(time.perf_counter() - t0, 2)}


def _saved_gate_digest(path) -> str:
    """The sha256 of a saved gate's tensors (from its metadata; load() checks it)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            digest = (f.metadata() or {}).get("sha256")
    except Exception as exc:     # safetensors raises several types for a bad file
        raise BitswitchError(f"--gate {path} cannot be read ({type(exc).__name__}): pass a gate file that "
                             f"bitswitch eval --dynamic gate saved (gate-*.safetensors)") from None
    if not digest:
        raise BitswitchError(f"--gate {path} has no sha256 in its metadata: pass a gate file that bitswitch eval "
                             f"--dynamic gate saved (gate-*.safetensors)")
    return digest


def _saved_gate(cfg, task, model, widths, name, log) -> tuple[GateController, dict]:
    """Load ``--gate`` (its widths must be ``--widths``) and fit its price to the budget on the task's
    calibration inputs."""
    gate = GateController.load(cfg.gate, model)
    if gate.widths.widths != widths.widths:
        raise BitswitchError(f"--gate {cfg.gate} chooses among {','.join(gate.widths.widths)}, not --widths "
                             f"{','.join(widths.widths)}: pass --widths {','.join(gate.widths.widths)}")
    t0 = time.perf_counter()
    got = gate.fit(model, task.calibration_batches(), cfg.budget, cfg.budget_by)
    log(f"[{name}] gate {Path(cfg.gate).name}: price {gate.price:.4g}: {got:.4f} {cfg.budget_by} per token on "
        f"calibration data")
    return gate, {"price": gate.price, _calib_key(cfg): round(got, 4), "gate_file": Path(cfg.gate).name,
                  "calib_seconds": round(time.perf_counter() - t0, 2)}
