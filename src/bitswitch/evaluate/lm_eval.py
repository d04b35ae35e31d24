"""``--task lm-eval:boolq,hellaswag,...``: lm-evaluation-harness on the in-memory model.

The harness wraps the already switched model (``HFLM(pretrained=model)``), so every profile is
evaluated without reloading; it needs the optional extra ``pip install 'bitswitch[lm-eval]'`` and
the task data (hub access or the datasets cache).
"""

from __future__ import annotations

import logging

from ..errors import BitswitchError
from .config import EvalConfig


class LmEvalTask:
    name = "lm-eval"
    unit = "task"

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        self.tasks = [t.strip() for t in cfg.task.split(":", 1)[1].split(",") if t.strip()]
        if not self.tasks:
            raise BitswitchError(f"--task {cfg.task!r} names no lm-eval task: use lm-eval:boolq,hellaswag")
        self.columns = ["profile", *self.tasks, "avg_w_bits", "weight_bytes", "seconds", "peak_rss_mb"]

    def setup(self, model, tokenizer) -> None:
        try:
            import lm_eval  # noqa: F401
            from lm_eval.tasks import TaskManager

            logging.getLogger("lm_eval").setLevel(logging.ERROR)  # task-config chatter, not errors
        except ImportError as exc:
            raise BitswitchError("lm-eval tasks need the optional extra: pip install 'bitswitch[lm-eval]'") from exc
        self.manager = TaskManager()
        unknown = [t for t in self.tasks if t not in self.manager.all_tasks]
        if unknown:
            raise BitswitchError(f"unknown lm-eval task(s) {', '.join(unknown)}: see `lm-eval ls tasks`")
        from ..hub import hub_reachable

        hub_reachable()  # offline: read the datasets cache only, fail fast
        try:  # load the task data once now, so a missing dataset fails before any profile runs
            from lm_eval.tasks import get_task_dict

            get_task_dict(self.tasks, self.manager)
        except Exception as exc:  # noqa: BLE001 - offline hub, missing cache, ...
            raise BitswitchError(f"the data of lm-eval task(s) {', '.join(self.tasks)} cannot be had here "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}); "
                                 "run with hub access once to fill the datasets cache") from exc
        self.tokenizer = tokenizer

    def total(self) -> int:
        return len(self.tasks)

    def calibration_batches(self):
        raise BitswitchError("static activation ranges are not calibrated for lm-eval tasks: calibrate on "
                             "SQuAD or WikiText first, or use --act-mode token")

    def evaluate(self, model, tokenizer, profile: str, out_dir, progress=None) -> dict:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.cfg.batch_size,
                  device=str(next(model.parameters()).device))
        res = lm_eval.simple_evaluate(model=lm, tasks=self.tasks, limit=self.cfg.limit, task_manager=self.manager,
                                      random_seed=self.cfg.seed, log_samples=False)
        out = {}
        for task in self.tasks:
            metrics = res["results"].get(task, {})
            acc = metrics.get("acc,none", next((v for k, v in metrics.items()
                                                if isinstance(v, float) and "stderr" not in k), None))
            out[task] = None if acc is None else 100 * acc
        if progress is not None:
            progress.update(len(self.tasks))
        return out

    def finish(self, records, out_dir) -> list[str]:
        return []
