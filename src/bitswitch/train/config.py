"""``TrainConfig``: every knob of ``bitswitch train``, validated; from YAML plus ``key=value`` overrides.

It is a :class:`~bitswitch.jobs.RunConfig` (the base every command shares): ``model``, ``out``,
``device``, ``dtype``, ``seed``, ``keying``, ``data``, ``limit``, ``offset``, ``order``,
``sample_seed`` and ``batch_size`` are the base's fields (``model``, ``data`` and ``out`` with
train's defaults). Two base fields are not keys of their own here:

* ``options`` (the base's :class:`QuantOptions`) is derived from the flat quantizer keys
  ``act_mode``, ``group_size``, ``weight_symmetric`` and ``weight_grid``; it is neither a YAML nor a ``--set`` key
  and is not saved in ``config.yaml``.
* ``adapters`` must stay empty: train creates new adapters (continue a run with ``--resume``).

``order`` is the SQuAD question order (``stratified`` or ``file``, as in eval); the progressive
schedule's bit order is ``schedule_order``. A config written before the two were told apart said
``order: ascending`` (or ``descending``) for the schedule: that is still read as ``schedule_order``.

An unknown key, a wrong type or an impossible value is a one-line :class:`BitswitchError` that
lists what is allowed. The resolved configuration is saved as ``OUT/config.yaml`` and loads back
with :meth:`TrainConfig.load` to an equal config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from ..errors import BitswitchError
from ..jobs import RunConfig
from ..profiles import QuantOptions
from ..switching import KEYINGS
from .schedules import SCHEDULES

SCHEDULE_ORDERS = ("ascending", "descending")
TRAIN_BASES = ("lora", "full")


@dataclass(kw_only=True)
class TrainConfig(RunConfig):
    # what (model, data, limit, offset, order, sample_seed: RunConfig's, with train's defaults)
    model: str = "smollm2-135m"
    data: str = "squad"                  # SQuAD file/dir/hub name, or a text file with task: text
    task: str = "squad"                  # squad | text
    max_length: int = 512                # tokens per example (prompt + answer), at most the model's context;
                                         # longer prompts lose context
    profiles: list[str] = field(default_factory=lambda: ["fp", "w8a8", "w6a8", "w4a8"])
    # schedule
    schedule: str = "random"
    cycles: int = 2
    b_min: int | float = 4               # cyclic: real widths allowed (quant.fractional)
    b_max: int | float = 8
    family: str = "w{bits}a8"
    continuous: bool = False             # cyclic: the cosine unrounded, its real width drawn per step/unit
    fractional: str = "step"             # cyclic continuous: one draw per step (step) or per unit (unit)
    norm_offset: int = 0                 # > 0: norms at (the step's weight bits - norm_offset) as noise
    schedule_order: str = "ascending"    # progressive: low to high bits or back (legacy key: order)
    candidates: list[int] = field(default_factory=lambda: [4, 6, 8])
    # adapters (keying: RunConfig's)
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    roles: list[str] = field(default_factory=lambda: ["attn_in", "attn_out", "mlp_in", "mlp_out"])
    lora: bool = True                    # false: no adapters (full-weight QAT and/or learned clips alone)
    # learned clipping (quant/clipping.py): a factor in [0.25, 1] per output channel or group on each
    # unit's range, per weight quantizer the schedule uses; trained with its own lr, no weight decay
    learn_clip: bool = False
    clip_lr: float = 1e-3
    # what of the base model trains: lora (frozen weights) | full (switchable QAT of the block units'
    # weights through the straight-through estimator; embeddings, norms and the LM head stay frozen)
    train_base: str = "lora"
    base_lr: float = 1e-5                # lr of the full weights (AdamW, weight_decay as set)
    train_bias: bool = False             # full: the block units' biases train too
    # quantizers: the YAML keys; ``options`` is derived from them
    act_mode: str = "token"
    group_size: int | None = None
    weight_symmetric: bool = True
    weight_grid: str = "independent"     # independent | nested (widths sliced from one int8 master)
    options: QuantOptions = field(default_factory=QuantOptions, init=False)
    # optimisation (batch_size: RunConfig's)
    steps: int = 100
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
    # run (seed, device, dtype: RunConfig's)
    save_every: int = 50
    log_every: int = 1
    out: str = "runs/train"

    # Knobs that never change what is trained, only where it goes, what runs it, how often it is
    # saved or logged, and how memory is bounded: not hashed, and a resumed run may change them
    # (besides ``steps``, which may only grow). Every other key of a resumed run must match.
    UNHASHED: ClassVar[tuple[str, ...]] = RunConfig.UNHASHED + (
        "save_every", "log_every", "max_memory", "check_memory", "checkpointing")

    def validate(self) -> None:
        _check_types(self)
        if self.order in SCHEDULE_ORDERS:   # the legacy key: order meant the schedule's bit order
            if self.schedule_order not in (self.order, SCHEDULE_ORDERS[0]):
                raise BitswitchError(f"order={self.order!r} and schedule_order={self.schedule_order!r}: the "
                                     "schedule's bit order is schedule_order, order is the squad question order")
            self.schedule_order, self.order = self.order, "stratified"
        super().validate()
        if self.adapters is not None:
            raise BitswitchError(f"adapters={self.adapters!r}: train creates new adapters (continue a run with "
                                 "--resume DIR instead)")
        if self.task == "text" and (self.order != "stratified" or self.sample_seed != 0):
            raise BitswitchError("order and sample_seed choose squad questions: drop them for task text")
        positive = ("max_length", "steps", "batch_size", "grad_accum", "save_every", "log_every", "r", "cycles")
        for k in positive:
            if getattr(self, k) < 1:
                raise BitswitchError(f"{k} must be at least 1, got {getattr(self, k)}")
        for k in ("lr", "temperature", "clip_lr", "base_lr"):
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
                   "schedule_order": SCHEDULE_ORDERS, "dtype": ("fp32", "bf16"), "train_base": TRAIN_BASES}
        for k, allowed in choices.items():
            if getattr(self, k) not in allowed:
                raise BitswitchError(f"{k}={getattr(self, k)!r} is not allowed: use one of {', '.join(allowed)}")
        if self.fractional not in ("step", "unit"):
            raise BitswitchError(f"fractional={self.fractional!r} is not allowed: use one of step, unit")
        if self.fractional == "unit" and self.continuous and self.keying == "profile":
            raise BitswitchError("per-unit fractional draws make a new mixed profile every step: use keying "
                                 "unit-bits or shared")
        if self.norm_offset < 0:
            raise BitswitchError(f"norm_offset must be >= 0 (bits below the step's weight bits), got {self.norm_offset}")
        if self.schedule == "random-unit" and self.keying == "profile":
            raise BitswitchError("schedule random-unit draws a new mixed profile every step: use keying "
                                 "unit-bits or shared")
        if self.consistency > 0 and self.schedule in ("fixed", "cyclic", "progressive"):
            raise BitswitchError("consistency needs two sampled profiles per step: use schedule random, "
                                 "random-unit or all")
        if not self.lora and not self.learn_clip and self.train_base == "lora":
            raise BitswitchError("lora=false with train_base=lora and learn_clip=false trains nothing: set "
                                 "train_base=full or learn_clip=true, or keep the adapters")
        if self.learn_clip and self.weight_grid != "independent":
            raise BitswitchError(f"learn_clip needs weight_grid independent, not {self.weight_grid!r}: the nested "
                                 "grid's widths are slices of one int8 master and the gguf grid is llama.cpp's "
                                 "own scale rule")
        if self.train_bias and self.train_base != "full":
            raise BitswitchError("train_bias trains the block units' biases with their weights: set train_base=full")
        if self.max_memory is not None:
            from .memory import parse_bytes

            try:
                parse_bytes(self.max_memory)
            except ValueError:
                raise BitswitchError(f"max_memory={self.max_memory!r} is not a size: write e.g. 16GiB or 500MiB") from None
        if self.max_batch_tokens is not None and self.max_batch_tokens < self.max_length:
            raise BitswitchError(f"max_batch_tokens ({self.max_batch_tokens}) must hold one example of "
                                 f"max_length ({self.max_length}) tokens")
        if self.group_size is not None and self.group_size < 1:
            raise BitswitchError(f"group_size must be a positive number of input columns, got {self.group_size}")
        self.options = QuantOptions(weight_symmetric=self.weight_symmetric, group_size=self.group_size,
                                    act_mode=self.act_mode, weight_grid=self.weight_grid)

    @classmethod
    def keys(cls) -> list[str]:
        """The YAML / ``--set`` keys (every field but the derived ``options``)."""
        return [f.name for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def load(cls, path: str | None = None, overrides: list[str] | dict | None = None) -> "TrainConfig":
        data = read_yaml(path) if path else {}
        if isinstance(overrides, dict):
            data.update(overrides)
        else:
            for item in overrides or []:
                key, eq, value = item.partition("=")
                if not eq or not key:
                    raise BitswitchError(f"override {item!r} must be key=value, e.g. --set steps=200")
                data[key.strip()] = yaml.safe_load(value) if value.strip() else None
        allowed = cls.keys()
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise BitswitchError(f"unknown config key(s) {', '.join(unknown)}: allowed keys are {', '.join(allowed)}")
        return cls(**data)

    def to_dict(self) -> dict:
        """The YAML keys and their values (what ``config.yaml`` holds)."""
        d = dataclasses.asdict(self)
        return {k: d[k] for k in self.keys()}

    def save(self, path: str | Path) -> None:
        from ..io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def read_yaml(path: str) -> dict:
    """The ``key: value`` mapping of a config file, unchecked (``TrainConfig.load`` checks it)."""
    p = Path(path)
    if not p.is_file():
        raise BitswitchError(f"config file {path!r} does not exist: pass an existing YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise BitswitchError(f"config file {path!r} is not UTF-8 text (damaged?): pass a YAML file") from None
    except yaml.YAMLError as exc:
        raise BitswitchError(f"config file {path!r} is not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise BitswitchError(f"config file {path!r} must be a mapping of key: value")
    return data


def _check_types(cfg) -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
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
