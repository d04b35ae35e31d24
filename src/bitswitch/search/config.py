"""Validated configurations of ``bitswitch sensitivity`` and ``bitswitch search``: ``RunConfig``
subclasses (``bitswitch.jobs``), whose settings hash decides whether an earlier run's records are
reused (resume)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..errors import BitswitchError
from ..jobs import RunConfig
from .metrics import canonical_metric
from .proxies import PROXIES
from .sensitivity import GRANULARITIES, check_probe
from .space import parse_candidates
from .table import FITS

METHODS = ("budget", "greedy")


@dataclass(kw_only=True)
class MetricConfig(RunConfig):
    """What sensitivity and search measure with besides the run settings (``metrics.prepare``)."""

    max_tokens: int | None = None       # wikitext: first N tokens (from --offset)
    window: int = 1024
    max_new_tokens: int = 32
    proxy_batches: int = 4

    def validate(self) -> None:
        super().validate()
        if self.max_tokens is not None and self.max_tokens < 1:
            raise BitswitchError(f"--max-tokens must be at least 1, got {self.max_tokens}")
        for name in ("max_new_tokens", "window", "proxy_batches"):
            if getattr(self, name) < 1:
                raise BitswitchError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


@dataclass(kw_only=True)
class SensitivityConfig(MetricConfig):
    base: str = "w8a8"
    probe: str = "w4a8"
    granularity: str = "unit"
    metric: str = "answer-ppl"
    proxy: str | None = None            # None: measure; fisher | fisher-grad | taylor | hutchinson: a proxy instead
    proxy_bits: tuple[int, ...] = ()    # extra bit-widths a proxy scores besides the probe's
    against: str | None = None          # a sensitivity results.json to rank-correlate with
    prefix: bool = True                 # replay unchanged blocks (teacher-forced metrics)

    UNHASHED: ClassVar[tuple[str, ...]] = (*RunConfig.UNHASHED, "against", "prefix")

    def validate(self) -> None:
        super().validate()
        self.metric = canonical_metric(self.metric)
        if self.granularity not in GRANULARITIES:
            raise BitswitchError(f"--granularity {self.granularity!r}: use unit or layer")
        bits = check_probe(self.probe)
        if self.proxy is not None:
            if self.proxy not in PROXIES:
                raise BitswitchError(f"--proxy {self.proxy!r}: use {', '.join(PROXIES)}")
            if bits is None:
                raise BitswitchError(f"--probe {self.probe!r} leaves weights in fp: a proxy scores weight "
                                     "quantization noise, so give weight bits, e.g. --probe w4a8")
        self.proxy_bits = parse_candidates(self.proxy_bits) if self.proxy_bits else ()


@dataclass(kw_only=True)
class SearchConfig(MetricConfig):
    task: str = "squad"
    metric: str | None = None            # default: f1 (squad) or ppl (wikitext)
    candidates: tuple[int, ...] = (4, 6, 8)
    avg_bits: list[float] = field(default_factory=list)
    max_bytes: list[int] = field(default_factory=list)
    max_drop: float | None = None
    method: str = "budget"
    base: str | None = None              # default: w{max candidate}a8
    sensitivity: str | tuple = "fisher"  # fisher | fisher-grad | taylor | hutchinson | measured | results.json file(s)
    alt_sensitivity: tuple[str, ...] = ()  # further tables (a proxy or one results.json each): their solutions compete
    sens_metric: str | None = None       # measured sensitivity: default answer-ppl (squad) / ppl
    damage_fit: str = "side"             # side | pooled (bitswitch.search.table): measured sweeps only
    below_penalty: tuple[float, ...] = (1.0,)  # factor(s) below the budget's uniform bits; several: calibration picks
    calib_offset: int | None = None      # questions/tokens the sensitivities are computed on
    calib_limit: int | None = None
    pareto: bool = False
    chunk: int = 1
    max_states: int = 200_000

    UNHASHED: ClassVar[tuple[str, ...]] = (*RunConfig.UNHASHED, "pareto")

    def validate(self) -> None:
        super().validate()
        if self.task not in ("squad", "wikitext"):
            raise BitswitchError(f"--task {self.task!r}: search supports squad or wikitext")
        self.metric = canonical_metric(self.metric or ("f1" if self.task == "squad" else "ppl"), self.task)
        self.sens_metric = canonical_metric(self.sens_metric or ("answer_ppl" if self.task == "squad" else "ppl"),
                                            self.task)
        self.candidates = parse_candidates(self.candidates)
        if len(self.candidates) < 2:
            raise BitswitchError(f"--candidates {','.join(map(str, self.candidates))}: give at least two bit-widths "
                                 "to choose between, e.g. 4,6,8")
        if self.method not in METHODS:
            raise BitswitchError(f"--method {self.method!r}: use budget or greedy")
        targets = sum(map(bool, (self.avg_bits, self.max_bytes, self.max_drop is not None)))
        if targets != 1:
            raise BitswitchError("give exactly one target: --avg-bits B [B ...], --max-bytes N [N ...] or --max-drop D")
        for b in self.avg_bits:
            if not b > 0:
                raise BitswitchError(f"--avg-bits {b} must be positive, e.g. --avg-bits 4 5 6")
        for n in self.max_bytes:
            if n < 1:
                raise BitswitchError(f"--max-bytes {n} must be a positive number of bytes")
        if self.max_drop is not None and self.max_drop < 0:
            raise BitswitchError(f"--max-drop {self.max_drop} must be >= 0 (F1/EM points, or a relative "
                                 "perplexity increase such as 0.05)")
        if self.pareto and self.max_drop is not None:
            raise BitswitchError("--pareto compares budgets: use it with --avg-bits or --max-bytes, not --max-drop")
        if self.base is None:
            self.base = f"w{self.candidates[-1]}a8"
        if not isinstance(self.sensitivity, str):  # several sweeps (e.g. one probe below the base, one above)
            items = [str(x) for x in self.sensitivity]
            if not items:
                raise BitswitchError("--sensitivity needs a value: fisher, fisher-grad, taylor, hutchinson, measured or results.json files")
            self.sensitivity = items[0] if len(items) == 1 else tuple(items)
        if isinstance(self.sensitivity, tuple):
            for f in self.sensitivity:
                if f in (*PROXIES, "measured") or not Path(f).exists():
                    raise BitswitchError(f"--sensitivity {f!r}: several values must all be results.json files of "
                                         "bitswitch sensitivity runs (e.g. probes below and above the base)")
        elif self.sensitivity not in (*PROXIES, "measured") and not Path(self.sensitivity).exists():
            raise BitswitchError(f"--sensitivity {self.sensitivity!r}: use fisher, fisher-grad, taylor, hutchinson, measured or "
                                 "the results.json of a bitswitch sensitivity run")
        self.alt_sensitivity = tuple(str(x) for x in self.alt_sensitivity)
        for f in self.alt_sensitivity:
            if f == "measured" or (f not in PROXIES and not Path(f).exists()):
                raise BitswitchError(f"--alt-sensitivity {f!r}: each value is one further table, {', '.join(PROXIES)} or "
                                     "the results.json of a bitswitch sensitivity run")
            if f == self.sensitivity or self.alt_sensitivity.count(f) > 1:
                raise BitswitchError(f"--alt-sensitivity {f!r} is given twice: name each table once")
        if self.damage_fit not in FITS:
            raise BitswitchError(f"--damage-fit {self.damage_fit!r}: use side or pooled")
        if self.damage_fit == "pooled" and self.sensitivity in PROXIES:
            raise BitswitchError(f"--damage-fit pooled fits measured sweeps; --sensitivity {self.sensitivity} is a "
                                 "proxy (already energy-scaled): drop --damage-fit or pass results.json files")
        self.below_penalty = tuple(float(x) for x in self.below_penalty) or (1.0,)
        for x in self.below_penalty:
            if not x > 0:
                raise BitswitchError(f"--below-penalty {x:g} must be positive (1 = the plain additive table), "
                                     "e.g. --below-penalty 1 2 4 8")
        if self.alt_sensitivity:
            if self.max_drop is not None:
                raise BitswitchError("--alt-sensitivity tables compete at a budget: with --max-drop give --sensitivity alone")
            if self.calib_offset is None and self.calib_limit is None:
                raise BitswitchError("--alt-sensitivity tables are chosen between on the calibration data: pass "
                                     "--calib-offset/--calib-limit so the choice is not made on the evaluation data")
        if len(self.below_penalty) > 1:
            if self.max_drop is not None:
                raise BitswitchError("several --below-penalty values are chosen between at a budget: with --max-drop "
                                     "give one value")
            if self.calib_offset is None and self.calib_limit is None:
                raise BitswitchError("several --below-penalty values are chosen between on the calibration data: pass "
                                     "--calib-offset/--calib-limit so the choice is not made on the evaluation data")
        for name in ("chunk", "max_states"):
            if getattr(self, name) < 1:
                raise BitswitchError(f"--{name.replace('_', '-')} must be at least 1")
        if self.calib_offset is not None and self.calib_offset < 0:
            raise BitswitchError(f"--calib-offset must be >= 0, got {self.calib_offset}")
        if self.calib_limit is not None and self.calib_limit < 1:
            raise BitswitchError(f"--calib-limit must be at least 1, got {self.calib_limit}")

    @property
    def budgets(self) -> list[tuple[str, float]]:
        """``[("avg_bits", 4.0), ...]`` or ``[("max_bytes", N), ...]`` or ``[("max_drop", D)]``."""
        if self.avg_bits:
            return [("avg_bits", float(b)) for b in self.avg_bits]
        if self.max_bytes:
            return [("max_bytes", int(n)) for n in self.max_bytes]
        return [("max_drop", float(self.max_drop))]

