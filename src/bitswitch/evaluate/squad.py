"""``bitswitch eval --task squad``: SQuAD v1.1 EM / F1 and answer perplexity of each profile.

Every profile sees the same examples and the same prompts (encoded once in ``setup``);
predictions are written per profile as JSONL. EM and F1 are percentages, as the official script
reports them; ``answer_ppl`` is the teacher-forced perplexity of the first gold answer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..data.squad import DEFAULT_TEMPLATE, PromptConfig, calibration_batches, encode_prompts, load_squad
from ..errors import BitswitchError
from ..io import atomic_write_text
from ..plots import metric_vs_bits
from ..profiles import safe_key
from .config import EvalConfig
from .scorers import FALLBACK_CONTEXT, context_length, score_squad


class SquadTask:
    name = "squad"
    unit = "q"
    columns = ["profile", "em", "f1", "answer_ppl", "n", "truncated", "avg_w_bits", "weight_bytes",
               "seconds", "questions_per_s", "peak_rss_mb"]

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg

    def setup(self, model, tokenizer) -> None:
        cfg = self.cfg
        self._tokenizer = tokenizer
        self.examples = load_squad(cfg.data or "squad", split="validation", **cfg.squad_selection())
        self.train = None
        if cfg.train_data or cfg.shots:
            if not cfg.train_data and cfg.data not in (None, "squad"):
                raise BitswitchError(f"--shots {cfg.shots} needs --train-data (a SQuAD training file) to draw "
                                     "examples from when --data is a local file")
            self.train = load_squad(cfg.train_data or "squad", split="train")
        prompt_cfg = PromptConfig(template=cfg.template or DEFAULT_TEMPLATE, shots=cfg.shots,
                                  shot_source=self.train, seed=cfg.seed, chat=cfg.chat)
        ctx = context_length(model, FALLBACK_CONTEXT)
        self.prompts, self.truncated = encode_prompts(tokenizer, self.examples, prompt_cfg, ctx,
                                                      reserve=cfg.max_new_tokens)
        self.prompt_cfg = prompt_cfg

    def total(self) -> int:
        return len(self.examples)

    def calibration_batches(self):
        """Prompts of training examples (never the evaluated ones), one batch per calibration step."""
        if self.train is None:
            raise BitswitchError("static activation ranges are calibrated on training examples: pass "
                                 "--train-data (a SQuAD training file) or use --act-mode token")
        return calibration_batches(self._tokenizer, self.train, self.cfg.calib_batches * self.cfg.batch_size,
                                   self.prompt_cfg.template, self.prompt_cfg.chat)

    def evaluate(self, model, tokenizer, profile: str, out_dir, progress=None) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        scores = score_squad(model, tokenizer, self.prompts, self.examples, cfg.max_new_tokens, cfg.batch_size,
                             progress=progress)
        seconds = time.perf_counter() - t0
        rows = [{"id": r["id"], "question": ex.question, "prediction": r["prediction"], "answers": list(ex.answers),
                 "em": r["em"], "f1": r["f1"]} for ex, r in zip(self.examples, scores["rows"])]
        # ``profile``: the display name the runner records (distinct within a results file)
        atomic_write_text(Path(out_dir) / f"predictions-{safe_key(profile)}.jsonl",
                          "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        n = scores["n"]
        return {"em": scores["em"], "f1": scores["f1"], "answer_ppl": scores["answer_ppl"], "n": n,
                "truncated": self.truncated, "questions_per_s": n / seconds}

    def finish(self, records, out_dir) -> list[str]:
        return [metric_vs_bits(records, ["em", "f1"], Path(out_dir) / "squad.png",
                               f"SQuAD v1.1 ({records[0]['n'] if records else 0} questions)")]
