"""Evaluation tasks behind ``bitswitch eval --task``: one interface, so every task shares the
model loading, profile switching, calibration, progress and results writing of the runner.

A task has ``name`` and ``columns`` (for the markdown table) and implements ``setup`` (load and
tokenize data once), ``calibration_batches`` (inputs for static activation observers),
``evaluate`` (metrics of the model at its current profile) and ``finish`` (plots, once).
"""

from __future__ import annotations

from ..errors import BitswitchError
from .config import EvalConfig
from .scorers import load_text_ids, score_text


class WikitextTask:
    name = "wikitext"
    columns = ["profile", "ppl", "tokens", "avg_w_bits", "weight_bytes", "seconds", "peak_rss_mb"]

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        self.ids = None

    def setup(self, model, tokenizer) -> None:
        self.ids, self.window = load_text_ids(model, tokenizer, self.cfg.data, self.cfg.max_tokens, self.cfg.offset,
                                              self.cfg.window)

    def calibration_batches(self):
        n = self.cfg.calib_batches
        return [self.ids[:, i * self.window:(i + 1) * self.window] for i in range(n)
                if i * self.window < self.ids.shape[1]]

    def total(self) -> int:
        return self.ids.shape[1]

    def evaluate(self, model, tokenizer, profile: str, out_dir, progress=None) -> dict:
        return score_text(model, self.ids, self.window, self.cfg.stride, progress)

    def finish(self, records, out_dir) -> list[str]:
        return []


def make_task(cfg: EvalConfig):
    """The task object for ``cfg.task``; an unknown task is a one-line error."""
    if cfg.task == "wikitext":
        return WikitextTask(cfg)
    if cfg.task == "squad":
        from .squad import SquadTask

        return SquadTask(cfg)
    if cfg.task.startswith("lm-eval:"):
        from .lm_eval import LmEvalTask

        return LmEvalTask(cfg)
    raise BitswitchError(f"unknown task {cfg.task!r}: use wikitext, squad or lm-eval:TASK[,TASK...]")
