"""``TrainConfig``: every knob of ``bitswitch train``, validated; from YAML plus ``key=value`` overrides.

An unknown key, a wrong type or an impossible value is a one-line :class:`BitswitchError` that
lists what is allowed. The resolved configuration is saved as ``OUT/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import BitswitchError
from ..switching import KEYINGS
from .schedules import SCHEDULES


@dataclass
class TrainConfig:
    # what
    model: str = "smollm2-135m"
    data: str = "squad"                  # SQuAD file/dir/hub name, or a text file with task: text
    task: str = "squad"                  # squad | text
    limit: int | None = None             # first N training examples
    max_length: int = 512                # tokens per example (prompt + answer); longer prompts lose context
    profiles: list[str] = field(default_factory=lambda: ["fp", "w8a8", "w6a8", "w4a8"])
    # schedule
    schedule: str = "random"
    cycles: int = 2
    b_min: int = 4
    b_max: int = 8
    family: str = "w{bits}a8"
    order: str = "ascending"
    candidates: list[int] = field(default_factory=lambda: [4, 6, 8])
    # adapters
    keying: str = "profile"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    roles: list[str] = field(default_factory=lambda: ["attn_in", "attn_out", "mlp_in", "mlp_out"])
    # quantizers
    act_mode: str = "token"
    group_size: int | None = None
    weight_symmetric: bool = True
    # optimisation
    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    max_batch_tokens: int | None = None
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    checkpointing: bool = False
    max_memory: str | None = None        # e.g. 16GiB: refuse at setup if the estimate exceeds it
    check_memory: bool = True            # refuse at setup when the estimate exceeds available memory
    # losses
    distill: float = 0.0                 # weight of KL(teacher || student)
    temperature: float = 1.0
    teacher: str | None = None           # default: the highest-precision profile of the set
    hidden_mse: float = 0.0
    hidden_layers: str = "all"           # all | random (one random layer per step)
    consistency: float = 0.0             # KL between two sampled profiles
    # run
    seed: int = 0
    device: str = "auto"
    dtype: str = "fp32"
    save_every: int = 50
    log_every: int = 1
    out: str = "runs/train"

    def __post_init__(self):
        _check_types(self)
        positive = ("max_length", "steps", "batch_size", "grad_accum", "save_every", "log_every", "r", "cycles")
        for k in positive:
            if getattr(self, k) < 1:
                raise BitswitchError(f"{k} must be at least 1, got {getattr(self, k)}")
        for k in ("lr", "temperature"):
            if not getattr(self, k) > 0:
                raise BitswitchError(f"{k} must be positive, got {getattr(self, k)}")
        for k in ("distill", "hidden_mse", "consistency", "weight_decay", "warmup_steps", "max_grad_norm"):
            if getattr(self, k) < 0:
                raise BitswitchError(f"{k} must be >= 0, got {getattr(self, k)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise BitswitchError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.dropout < 1:
            raise BitswitchError(f"dropout must be in [0, 1), got {self.dropout}")
        choices = {"schedule": SCHEDULES, "keying": KEYINGS, "task": ("squad", "text"),
                   "act_mode": ("token", "tensor"), "hidden_layers": ("all", "random"),
                   "order": ("ascending", "descending"), "dtype": ("fp32", "bf16")}
        for k, allowed in choices.items():
            if getattr(self, k) not in allowed:
                raise BitswitchError(f"{k}={getattr(self, k)!r} is not allowed: use one of {', '.join(allowed)}")
        if self.schedule == "random-unit" and self.keying == "profile":
            raise BitswitchError("schedule random-unit draws a new mixed profile every step: use keying "
                                 "unit-bits or shared")
        if self.consistency > 0 and self.schedule in ("fixed", "cyclic", "progressive"):
            raise BitswitchError("consistency needs two sampled profiles per step: use schedule random, "
                                 "random-unit or all")
        if self.max_memory is not None:
            from .memory import parse_bytes

            try:
                parse_bytes(self.max_memory)
            except ValueError:
                raise BitswitchError(f"max_memory={self.max_memory!r} is not a size: write e.g. 16GiB or 500MiB") from None
        if self.max_batch_tokens is not None and self.max_batch_tokens < self.max_length:
            raise BitswitchError(f"max_batch_tokens ({self.max_batch_tokens}) must hold one example of "
                                 f"max_length ({self.max_length}) tokens")

    @classmethod
    def load(cls, path: str | None = None, overrides: list[str] | dict | None = None) -> "TrainConfig":
        data: dict = {}
        if path:
            p = Path(path)
            if not p.is_file():
                raise BitswitchError(f"config file {path!r} does not exist: pass an existing YAML file")
            try:
                data = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as exc:
                raise BitswitchError(f"config file {path!r} is not valid YAML ({str(exc).splitlines()[0]})") from exc
            if not isinstance(data, dict):
                raise BitswitchError(f"config file {path!r} must be a mapping of key: value")
        if isinstance(overrides, dict):
            data.update(overrides)
        else:
            for item in overrides or []:
                key, eq, value = item.partition("=")
                if not eq or not key:
                    raise BitswitchError(f"override {item!r} must be key=value, e.g. --set steps=200")
                data[key.strip()] = yaml.safe_load(value) if value.strip() else None
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise BitswitchError(f"unknown config key(s) {', '.join(unknown)}: allowed keys are {', '.join(allowed)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        from ..io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def _check_types(cfg) -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, hint = getattr(cfg, f.name), hints[f.name]
        ok, coerced = _fits(value, hint)
        if not ok:
            raise BitswitchError(f"{f.name}={value!r} has the wrong type: expected {_name(hint)}")
        setattr(cfg, f.name, coerced)


def _fits(value, hint):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            ok, v = _fits(value, a)
            if ok:
                return True, v
        return False, value
    if hint is type(None):
        return value is None, value
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            # "4,6,8" or "fp w8a8" from the command line: split, and read numbers as numbers
            value = [value] if not isinstance(value, str) else [
                v if args[0] is str else yaml.safe_load(v) for v in value.replace(",", " ").split()]
        if not isinstance(value, (list, tuple)):
            return False, value
        out = []
        for v in value:
            ok, c = _fits(v, args[0])
            if not ok:
                return False, value
            out.append(c)
        return True, out
    if hint is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)), float(value) if isinstance(
            value, (int, float)) else value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return True, str(value)
    return isinstance(value, hint), value


def _name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
