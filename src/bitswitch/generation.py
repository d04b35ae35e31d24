"""``bitswitch generate``: text from prompts through the switchable runtime, one profile per request
or a per-token schedule of profiles.

:class:`GenerateConfig` is the validated request (model, adapters, profile or schedule, prompts or a
data file, decoding settings); :func:`run_generate` loads the runtime once, generates, and returns
(and optionally writes) the texts with their timings. Prompts come from ``--prompt`` or from a file:
a SQuAD JSON (rendered as ``bitswitch eval`` renders them, questions picked by the same
``--limit/--offset/--order``) or plain text, one prompt per line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .errors import BitswitchError
from .io import atomic_write_text
from .jobs import RunConfig


@dataclass(kw_only=True)
class GenerateConfig(RunConfig):
    out: str = ""                          # optional: a JSON file for the texts and timings
    profile: str = "fp"
    schedule: list[str] | None = None      # per-token profiles, cycled (step 0 = prefill)
    prompt: list[str] = field(default_factory=list)
    max_new_tokens: int = 64
    temperature: float = 0.0               # 0: greedy
    top_k: int | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    chat: bool = False
    compile: str = "auto"
    kv_dtype: str = "float32"              # the KV cache: float32 (fake quantization's) or bfloat16 (half)
    threads: int | None = None
    speculative: str | None = None         # LOW:HIGH: greedy at HIGH, drafted at LOW (bitswitch.dynamic)
    draft_k: int = 4
    draft_min_prob: float | None = None    # cut a draft before a token LOW gives less than this probability

    UNHASHED: ClassVar[tuple[str, ...]] = ("out", "device", "threads")

    def validate(self) -> None:
        super().validate()
        if not self.prompt and not self.data:
            raise BitswitchError("nothing to generate from: pass --prompt TEXT or --data FILE")
        if self.prompt and self.data:
            raise BitswitchError("pass --prompt or --data, not both")
        if self.max_new_tokens < 1:
            raise BitswitchError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise BitswitchError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise BitswitchError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise BitswitchError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.compile not in ("auto", "on", "off"):
            raise BitswitchError(f"--compile must be auto, on or off, got {self.compile!r}")
        if self.kv_dtype not in ("float32", "bfloat16"):
            raise BitswitchError(f"--kv-dtype must be float32 or bfloat16, got {self.kv_dtype!r}")
        if self.threads is not None and self.threads < 1:
            raise BitswitchError(f"--threads must be at least 1, got {self.threads}")
        if self.schedule is not None and not self.schedule:
            raise BitswitchError("--schedule needs at least one profile")
        if self.speculative is not None:
            speculative_pair(self.speculative)
            if self.schedule is not None or self.temperature > 0:
                raise BitswitchError("--speculative decodes greedily at one profile: drop --schedule / --temperature")
            if self.draft_k < 1:
                raise BitswitchError(f"--draft-k must be at least 1, got {self.draft_k}")
            if self.draft_min_prob is not None and not 0 <= self.draft_min_prob <= 1:
                raise BitswitchError(f"--draft-min-prob must be in 0..1, got {self.draft_min_prob:g}")
        elif self.draft_min_prob is not None:
            raise BitswitchError("--draft-min-prob cuts speculative drafts: add --speculative LOW:HIGH")

    def settings(self) -> dict:
        d = super().settings()
        if d.get("speculative") is None:   # plain generation's settings stay as they were
            d.pop("speculative", None)
            d.pop("draft_k", None)
        if d.get("draft_min_prob") is None:
            d.pop("draft_min_prob", None)
        return d

    def profiles(self) -> list[str]:
        """Every profile the runtime must hold resident: the request's, then the schedule's."""
        return list(dict.fromkeys([self.profile, *(self.schedule or [])]))


def speculative_pair(text: str) -> tuple[str, str]:
    """``--speculative "w4g32:w8"`` -> ("w4g32", "w8"); anything else is a one-line error."""
    parts = [p.strip() for p in text.split(":")]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise BitswitchError(f"--speculative {text!r}: give two different profiles as LOW:HIGH, e.g. w4g32:w8")
    return parts[0], parts[1]


def read_prompts(cfg: GenerateConfig, tokenizer) -> list[str]:
    """The prompt texts: ``--prompt`` as given, else the ``--data`` file's (see the module docstring)."""
    if cfg.prompt:
        texts = list(cfg.prompt)
    else:
        path = Path(cfg.data)
        if not path.is_file():
            raise BitswitchError(f"--data {cfg.data!r}: no such file")
        if path.suffix == ".json":
            from .data.squad import DEFAULT_TEMPLATE, PromptConfig, load_squad, render_prompt

            pcfg = PromptConfig(template=DEFAULT_TEMPLATE, chat=cfg.chat)
            examples = load_squad(str(path), **cfg.squad_selection())
            return [render_prompt(ex, pcfg, tokenizer=tokenizer) for ex in examples]
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise BitswitchError(f"--data {cfg.data!r} is not UTF-8 text (one prompt per line) or SQuAD JSON") from None
        texts = [ln for ln in lines if ln.strip()][cfg.offset:]
        texts = texts[:cfg.limit] if cfg.limit else texts
        if not texts:
            raise BitswitchError(f"--data {cfg.data!r} has no prompts (one per line) after --offset {cfg.offset}")
    if cfg.chat:
        if not getattr(tokenizer, "chat_template", None):
            raise BitswitchError("--chat needs a tokenizer with a chat template: drop --chat or use an instruct model")
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                               tokenize=False) for t in texts]
    return texts


def run_generate(cfg: GenerateConfig, log=print) -> dict:
    """Generate for every prompt of ``cfg`` at ``cfg.profile`` (or the per-token ``cfg.schedule``);
    returns ``{"texts", "prompts", "prompt_tokens", "new_tokens", "prefill_s", "decode_s",
    "decode_tokens_per_s", "resident_bytes", ...}`` and writes it to ``cfg.out`` when given."""
    import torch

    from .runtime import Runtime

    if cfg.speculative:   # bitswitch.dynamic builds on this module, not the other way round
        raise BitswitchError("speculative decoding runs through bitswitch.dynamic.cli.run_speculative")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rt = Runtime.load(cfg.model, adapters=cfg.adapters, profiles=cfg.profiles(), options=cfg.options,
                      compile=cfg.compile, device=cfg.device, kv_dtype=cfg.kv_dtype)
    prompts = read_prompts(cfg, rt.tokenizer)
    rt.set_profile(cfg.profile)
    out = rt.generate(prompts, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.temperature > 0,
                      temperature=cfg.temperature or 1.0, top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed,
                      stop=cfg.stop or None, eos=True, schedule=cfg.schedule)
    decoded = sum(max(n - 1, 0) for n in _counts(out.new_tokens))
    result = {"model": cfg.model, "adapters": cfg.adapters, "profile": cfg.profile, "schedule": cfg.schedule,
              "prompts": prompts, "texts": out.texts, "prompt_tokens": out.prompt_tokens,
              "new_tokens": out.new_tokens, "prefill_s": round(out.prefill_s, 4), "decode_s": round(out.decode_s, 4),
              "decode_tokens_per_s": round(decoded / out.decode_s, 2) if out.decode_s > 0 else None,
              "resident_bytes": rt.resident_bytes(), "pack_count": rt.pack_count,
              "settings": cfg.settings()}
    if cfg.out:
        atomic_write_text(cfg.out, json.dumps(result, indent=1) + "\n")
    return result


def cut_text(text: str, stops) -> str:
    """``text`` cut before the earliest of ``stops`` (strings)."""
    cuts = [i for i in (text.find(s) for s in stops or () if s) if i >= 0]
    return text[:min(cuts)] if cuts else text


def _counts(n) -> list[int]:
    return list(n) if isinstance(n, (list, tuple)) else [int(n)]
