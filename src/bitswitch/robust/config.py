"""The validated configuration of ``bitswitch attack``: the shared run settings plus the attacks,
where they are crafted and replayed, RPI, and the attack budgets."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..errors import BitswitchError
from ..jobs import RunConfig
from .embed import NORMS
from .rpi import GRANULARITIES, RPIConfig

ATTACKS = ("typo", "hotflip", "embed-pgd", "embed-fgsm")
DEFAULT_BUDGET = {"typo": 4, "hotflip": 3}
DEFAULT_CANDIDATES = {"typo": 12, "hotflip": 8}


@dataclass(kw_only=True)
class AttackConfig(RunConfig):
    attacks: list[str] = field(default_factory=lambda: ["typo"])
    craft: list[str] = field(default_factory=lambda: ["fp"])
    eval: list[str] | None = None          # default: the craft profiles
    rpi: list[str] | None = None           # RPI profile set; adds the setting "rpi" to rows and columns
    rpi_p: float = 0.5
    rpi_granularity: str = "forward"
    eot: int = 4                            # precision draws the attacker averages over against RPI
    rpi_matrix: str = "full"                # full | diagonal: the rpi row/column only at (rpi, rpi)
    budget: int | None = None               # edits (typo) / flips (hotflip); default 4 / 3
    candidates: int | None = None           # candidates scored per step; default 12 / 8
    context: bool = False                   # also edit the context outside answer spans
    eps: float = 0.5                        # embed attacks, relative to the embedding scale
    norm: str = "linf"
    steps: int = 5
    max_new_tokens: int = 16
    batch_size: int = 16
    template: str | None = None
    chat: bool = False

    def __post_init__(self):
        self.eval = list(self.eval or self.craft)
        super().__post_init__()

    def validate(self) -> None:
        super().validate()
        if self.data is None:
            raise BitswitchError("--data is required: a SQuAD v1.1 JSON file, directory or 'squad'")
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad or not self.attacks:
            raise BitswitchError(f"unknown attack {bad[0] if bad else None!r}: use one of {', '.join(ATTACKS)}")
        for name, values in (("--craft-profile", self.craft), ("--eval-profiles", self.eval),
                             ("--attack", self.attacks)):
            if not values or len(set(values)) != len(values):
                raise BitswitchError(f"{name} must list at least one entry, each once (got {values})")
            if "rpi" in values:
                raise BitswitchError(f"{name} may not name 'rpi': pass the RPI profile set with --rpi P1 P2 ...")
        if self.rpi is not None:
            RPIConfig(tuple(self.rpi), self.rpi_p, self.rpi_granularity, self.seed)  # validates
        if self.rpi_granularity not in GRANULARITIES:
            raise BitswitchError(f"unknown --rpi-granularity {self.rpi_granularity!r}: use {', '.join(GRANULARITIES)}")
        if self.rpi_matrix not in ("full", "diagonal"):
            raise BitswitchError(f"--rpi-matrix must be full or diagonal, got {self.rpi_matrix!r}")
        for name in ("eot", "steps", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise BitswitchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("budget", "candidates"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise BitswitchError(f"--{name} must be at least 1, got {v}")
        if self.eps <= 0 or self.norm not in NORMS:
            raise BitswitchError(f"--eps must be > 0 and --norm one of {', '.join(NORMS)} (got {self.eps}, {self.norm!r})")

    def rpi_config(self) -> RPIConfig | None:
        return None if self.rpi is None else RPIConfig(tuple(self.rpi), self.rpi_p, self.rpi_granularity,
                                                       self.seed, "rpi")

    def craft_settings(self) -> dict:
        s = {p: p for p in self.craft}
        return {**s, "rpi": self.rpi_config()} if self.rpi else s

    def eval_settings(self) -> dict:
        s = {p: p for p in self.eval}
        return {**s, "rpi": self.rpi_config()} if self.rpi else s

    def attack_params(self, attack: str) -> dict:
        if attack.startswith("embed"):
            return {"eps": self.eps, "norm": self.norm, "steps": self.steps, "context": self.context}
        return {"budget": self.budget or DEFAULT_BUDGET[attack],
                "candidates": self.candidates or DEFAULT_CANDIDATES[attack], "context": self.context}

    def question_settings(self) -> dict:
        """What every adversarial file and replay depends on: the run settings (model, adapters,
        data and its selection, prompts, quantizers, seed, dtype) without the attack's own knobs and
        the replay batch size, which the file and cell hashes add where they matter."""
        own = {f.name for f in fields(self)} - {f.name for f in fields(RunConfig)} - {"template", "chat"}
        return {k: v for k, v in self.settings().items() if k not in own | {"batch_size"}}
