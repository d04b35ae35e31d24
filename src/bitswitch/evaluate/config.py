"""The validated configuration of ``bitswitch eval``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import BitswitchError
from ..jobs import RunConfig


DYNAMIC = ("threshold", "gate", "request")
GATE_TARGETS = ("prompt", "answer")
ENGINES = ("auto", "fake", "runtime")   # auto: the runtime for a nested checkpoint, else fake quantization


@dataclass(kw_only=True)
class EvalConfig(RunConfig):
    task: str
    out: str = "runs/eval"
    profiles: list[str] | None = None     # None: fp, or the profile an exported model was made at
    weight_cache: str = "codes"           # switching.WEIGHT_CACHES; never changes results, only memory/speed
    engine: str = "auto"                  # fake (fake quantization) | runtime (packed kernels, bf16) | auto
    # wikitext
    max_tokens: int | None = None
    window: int = 1024
    stride: int | None = None
    # squad
    shots: int = 0
    train_data: str | None = None
    template: str | None = None
    chat: bool = False
    max_new_tokens: int = 32
    calib_batches: int = 4
    # dynamic widths (bitswitch.dynamic): a controller instead of --profiles
    dynamic: str | None = None            # threshold | gate | request
    budget: float | None = None           # average weight bits (or bytes read) per token
    widths: str = "w4g32,w8"
    budget_by: str = "bits"               # bits | bytes
    gate_penalty: float = 0.05            # gate: weight of the expected average bits in its loss
    gate_steps: int = 64                  # gate: training steps (one calibration prompt each)
    gate: str | None = None               # gate: a saved gate file to reuse instead of training one
    gate_target: str = "prompt"           # gate: KL on every prompt token, or on the answer's (prompt + gold answer)
    # random precision inference (bitswitch.robust.rpi_eval): one setting "rpi" instead of --profiles
    rpi: list[str] | None = None          # the RPI profile set
    rpi_p: float = 0.5
    rpi_granularity: str = "forward"
    rpi_calib: str = "dynamic"            # dynamic (per-token) | static ranges per-profile | shared (once under RPI)

    UNHASHED: ClassVar[tuple[str, ...]] = ("out", "device", "profiles", "weight_cache")

    def settings(self) -> dict:
        # fake quantization was the only engine once: leaving it out keeps earlier results resumable
        d = super().settings()
        if d.get("engine") in ("fake", "auto"):
            d.pop("engine")
        if d.get("dynamic") is None:   # nor were dynamic widths
            for k in ("dynamic", "budget", "widths", "budget_by"):
                d.pop(k, None)
        if d.get("dynamic") != "gate":   # nor the gate
            for k in ("gate_penalty", "gate_steps", "gate", "gate_target"):
                d.pop(k, None)
        elif d.get("gate") is None:     # a trained gate: its training settings; a reused one: its file
            d.pop("gate", None)
            if d.get("gate_target") == "prompt":   # the only target once
                d.pop("gate_target")
        else:
            for k in ("gate_penalty", "gate_steps", "gate_target"):
                d.pop(k, None)
        if d.get("rpi") is None:       # nor RPI
            for k in ("rpi", "rpi_p", "rpi_granularity", "rpi_calib"):
                d.pop(k, None)
        return d

    def validate(self) -> None:
        super().validate()
        if self.profiles is not None and not self.profiles:
            raise BitswitchError("no profiles to evaluate: pass --profiles, e.g. --profiles fp w8a8 w4a8")
        if self.profiles and len(set(self.profiles)) != len(self.profiles):
            raise BitswitchError(f"--profiles lists a profile twice: {self.profiles}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise BitswitchError(f"--max-tokens must be at least 1, got {self.max_tokens}")
        for name in ("window", "max_new_tokens", "calib_batches"):
            if getattr(self, name) < 1:
                raise BitswitchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.stride is not None and not 0 < self.stride <= self.window:
            raise BitswitchError(f"--stride must be in 1..--window ({self.window}), got {self.stride}")
        if self.engine not in ENGINES:
            raise BitswitchError(f"--engine {self.engine!r}: use {', '.join(ENGINES)}")
        if self.engine == "runtime" and self.task.startswith("lm-eval:"):
            raise BitswitchError("lm-eval tasks run through fake quantization only: drop --engine runtime")
        if self.weight_cache not in ("codes", "float"):
            raise BitswitchError(f"--weight-cache must be codes or float, got {self.weight_cache!r}")
        if self.offset and self.task.startswith("lm-eval:"):
            raise BitswitchError("--offset applies to squad and wikitext only: drop it for lm-eval tasks")
        if self.dynamic is not None:
            if self.dynamic not in DYNAMIC:
                raise BitswitchError(f"--dynamic {self.dynamic!r}: use {' or '.join(DYNAMIC)}")
            if self.budget is None:
                raise BitswitchError("--dynamic needs --budget, e.g. --budget 4.5 (average weight bits per token)")
            if self.profiles:
                raise BitswitchError("--dynamic chooses widths itself: drop --profiles (pass --widths)")
            if self.engine == "runtime":
                raise BitswitchError("--dynamic runs on fake quantization: drop --engine runtime")
            if self.budget_by not in ("bits", "bytes"):
                raise BitswitchError(f"--budget-by must be bits or bytes, got {self.budget_by!r}")
            if self.dynamic == "gate" and (self.gate_steps < 1 or self.gate_penalty < 0):
                raise BitswitchError(f"--gate-steps must be at least 1 and --gate-penalty at least 0, got "
                                     f"{self.gate_steps} and {self.gate_penalty:g}")
            if self.gate_target not in GATE_TARGETS:
                raise BitswitchError(f"--gate-target {self.gate_target!r}: use {' or '.join(GATE_TARGETS)}")
            if self.gate is not None and self.dynamic != "gate":
                raise BitswitchError("--gate is a saved gate for --dynamic gate: drop it or pass --dynamic gate")
            if self.dynamic == "gate" and self.task == "wikitext" and not self.train_data and self.gate is None:
                raise BitswitchError("--dynamic gate trains its gate on SQuAD training prompts, never the evaluated "
                                     "text: pass --train-data (a SQuAD training file)")
        elif self.budget is not None or self.gate is not None:
            raise BitswitchError("--budget and --gate apply to --dynamic only: add --dynamic threshold|gate|request")
        if self.shots < 0:
            raise BitswitchError(f"--shots must be >= 0, got {self.shots}")
        if self.rpi is not None:
            if not self.rpi or len(set(self.rpi)) != len(self.rpi):
                raise BitswitchError(f"--rpi needs distinct profiles, e.g. --rpi w8a8 w6a8 w4a8, got {self.rpi}")
            if self.profiles or self.dynamic or self.engine == "runtime":
                raise BitswitchError("--rpi evaluates the one setting 'rpi' on fake quantization: drop --profiles, "
                                     "--dynamic and --engine runtime (evaluate fixed profiles in another run)")
            if not 0.0 <= self.rpi_p <= 1.0:
                raise BitswitchError(f"--rpi-p must be in 0..1, got {self.rpi_p}")
            if self.rpi_calib not in ("dynamic", "per-profile", "shared"):
                raise BitswitchError(f"--rpi-calib must be dynamic, per-profile or shared, got {self.rpi_calib!r}")
            if self.options.act_mode == "tensor" and self.rpi_calib == "dynamic":
                raise BitswitchError("--rpi with static ranges: pass --rpi-calib per-profile or shared (they set "
                                     "--act-mode tensor themselves)")
