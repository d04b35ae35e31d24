"""The profile grammar: parse, resolve to a per-unit table, byte accounting.

Grammar (later rules override earlier ones)::

    profile  := rule (';' rule)*
    rule     := [selector '='] spec
    spec     := 'fp' | 'w' (BITS | 'fp') ['g' GROUP] ['a' (BITS | 'fp')]
    selector := fnmatch glob over unit names (L11.attn_in, L*.mlp_*, L[0-5].*, head)

``w8a8``: 8-bit weights, 8-bit activations; ``w4`` / ``w4afp``: weights only; ``w4g32a8``: 4-bit
weights in groups of 32 input columns (an extension of the base grammar); ``wfpa8``: activations only.
A rule without a selector applies to the block units (``L*``), never to ``head``. A profile may
also be a JSON/YAML file mapping selectors to specs, or a built-in name (``fp``, ``w8a8``, ...).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BitswitchError
from .quant.config import ACT_BITS, GGUF_BLOCK, GRIDS, WEIGHT_BITS, ActQuant, UnitPrecision, WeightQuant

BUILTIN = ("fp", "w8a8", "w6a8", "w4a8", "w4a16", "w8a16")
_SPEC = re.compile(r"^(?:fp|w(?P<w>\d+|fp)(?:g(?P<g>\d+))?(?:a(?P<a>\d+|fp))?)$")
_KEY_OK = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class QuantOptions:
    """How bits become quantizers; the same for every unit of a profile."""

    weight_symmetric: bool = True
    group_size: int | None = None       # default weight group size (None = per output channel)
    act_mode: str = "token"              # token (dynamic) | tensor (static, needs calibration)
    act_symmetric: bool = False
    method: str = "uniform"              # uniform | log
    # independent | nested (widths sliced from one int8 master) | gguf (llama.cpp's Q8_0, Q4_0/Q4_1,
    # Q5_0/Q5_1 bit for bit: w8, w4, w5 only, blocks of 32 input columns, see quant.gguf_grid; with
    # per-token activations, a8 becomes llama.cpp's q8_0 activation blocks)
    weight_grid: str = "independent"

    def __post_init__(self):
        if self.weight_grid not in GRIDS:
            raise BitswitchError(f"weight grid must be one of {', '.join(GRIDS)}, got {self.weight_grid!r}")
        if self.weight_grid == "nested" and (not self.weight_symmetric or self.method != "uniform"):
            raise BitswitchError("the nested weight grid slices a symmetric uniform int8 master: "
                                 "drop --weight-asym / --quantizer log")
        if self.weight_grid == "gguf":
            if self.method != "uniform":
                raise BitswitchError("the gguf weight grid is llama.cpp's uniform block formats: drop --quantizer log")
            if self.group_size not in (None, GGUF_BLOCK):
                raise BitswitchError(f"the gguf weight grid quantizes blocks of {GGUF_BLOCK} input columns: "
                                     f"drop --group-size {self.group_size} (or pass {GGUF_BLOCK})")

    def precision(self, w_bits: int | None, group: int | None, a_bits: int | None) -> UnitPrecision:
        weight = act = None
        if w_bits is not None and self.weight_grid == "gguf":  # the block is fixed: g32 or none given
            # w8 is Q8_0 either way: llama.cpp has no asymmetric 8-bit weight type
            weight = WeightQuant(w_bits, group or GGUF_BLOCK, self.weight_symmetric or w_bits == 8, self.method,
                                 "gguf")
        elif w_bits is not None:
            weight = WeightQuant(w_bits, group or self.group_size, self.weight_symmetric, self.method,
                                 self.weight_grid if w_bits <= 8 else "independent")
        if a_bits == 8 and self.weight_grid == "gguf" and self.act_mode == "token":
            act = ActQuant(8, "q8_0", True)   # a8 means what llama.cpp does to activations (see ActQuant)
        elif a_bits is not None:
            act = ActQuant(a_bits, self.act_mode, self.act_symmetric or self.method == "log", self.method)
        return UnitPrecision(weight, act)


@dataclass(frozen=True)
class Rule:
    selector: str | None
    w_bits: int | None
    group: int | None
    a_bits: int | None
    text: str


@dataclass(frozen=True)
class Profile:
    """A parsed profile: a name (what adapters are keyed by) and its rules."""

    name: str
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    @property
    def key(self) -> str:
        return safe_key(self.name)


def safe_key(name: str) -> str:
    """A module-dict-safe key for a profile name (``w8a8`` stays ``w8a8``)."""
    if _KEY_OK.match(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40]
    return f"{cleaned}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def parse_spec(spec: str, context: str) -> tuple[int | None, int | None, int | None]:
    """``'w4g32a8'`` -> (4, 32, 8); ``'fp'`` -> (None, None, None)."""
    s = spec.strip()
    m = _SPEC.match(s)
    if not m:
        raise BitswitchError(f"unparsable spec {s!r} in profile {context!r}: use fp, wB, wBaB or wBgNaB "
                             "(e.g. w8a8, w4a16, w4, w4g32a8)")
    if s == "fp":
        return None, None, None
    w = None if m["w"] == "fp" else int(m["w"])
    a = None if m["a"] in (None, "fp") else int(m["a"])
    g = int(m["g"]) if m["g"] else None
    if w is not None and w not in WEIGHT_BITS:
        raise BitswitchError(f"weight bits {w} out of range in {s!r} of profile {context!r}: use 2-8 or 16")
    if a is not None and a not in ACT_BITS:
        raise BitswitchError(f"activation bits {a} out of range in {s!r} of profile {context!r}: use 4-16")
    if g is not None and (g < 1 or w is None):
        raise BitswitchError(f"group size in {s!r} of profile {context!r} needs weight bits and a positive size")
    return w, g, a


def _rule(selector: str | None, spec: str, context: str) -> Rule:
    if selector is not None and not selector.strip():
        raise BitswitchError(f"empty selector in profile {context!r}: write SELECTOR=SPEC, e.g. L0.*=fp")
    return Rule(selector.strip() if selector else None, *parse_spec(spec, context), text=spec.strip())


def parse_profile(text: str) -> Profile:
    """Parse a profile string, a built-in name, or a JSON/YAML file of ``{selector: spec}``."""
    if not isinstance(text, str) or not text.strip():
        raise BitswitchError("empty profile: use a built-in name (fp, w8a8, w6a8, w4a8, w4a16, w8a16), "
                             "a rule list like 'w8a8;L0.*=fp' or a JSON/YAML file")
    text = text.strip()
    path = Path(text)
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        return _parse_file(path)
    rules = []
    for part in text.split(";"):
        if not part.strip():
            raise BitswitchError(f"empty rule in profile {text!r}: remove the stray ';'")
        selector, eq, spec = part.rpartition("=")
        rules.append(_rule(selector if eq else None, spec, text))
    return Profile(text, tuple(rules))


def _parse_file(path: Path) -> Profile:
    if not path.is_file():
        raise BitswitchError(f"profile file {str(path)!r} does not exist: pass an existing JSON/YAML file")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
        else:
            import yaml

            data = yaml.safe_load(path.read_text())
    except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
        raise BitswitchError(f"profile file {str(path)!r} cannot be parsed ({str(exc).splitlines()[0]}): "
                             "write a mapping of selector to spec") from exc
    if isinstance(data, dict) and isinstance(data.get("profile"), dict):  # files written by `search`
        data = data["profile"]
    if not isinstance(data, dict) or not data:
        raise BitswitchError(f"profile file {str(path)!r} must map selectors to specs, e.g. "
                             '{"L*": "w8a8", "L0.*": "fp"}')
    rules = tuple(_rule(None if str(k) == "default" else str(k), str(v), str(path)) for k, v in data.items())
    return Profile(path.name if _names_another_profile(path.stem, rules) else path.stem, rules)


def _meaning(rules) -> list[tuple]:
    return [(r.selector, r.w_bits, r.group, r.a_bits) for r in rules]


def _names_another_profile(stem: str, rules: tuple[Rule, ...]) -> bool:
    """Whether a file's stem is itself a profile (``w8a8``, ``fp``, ``w4g32``) other than what the file
    holds: such a file is named with its suffix (``w8a8.json``), so that it is never taken for the
    profile its stem spells (its adapters, its records)."""
    if Path(stem).suffix.lower() in (".json", ".yaml", ".yml"):
        return False
    try:
        spelled = parse_profile(stem)
    except BitswitchError:
        return False
    return _meaning(spelled.rules) != _meaning(rules)


def profile_to_mapping(profile: Profile | str) -> dict[str, str]:
    """The JSON form of a profile, ``{"default": spec, selector: spec, ...}`` (what a profile file
    holds: ``'w8a8;L3.mlp_out=w4a8'`` -> ``{"default": "w8a8", "L3.mlp_out": "w4a8"}``), parsed
    with :func:`parse_profile`, so it reads back as the same profile. A selector given twice keeps
    its last spec, at its last position (the earlier rule was overridden wholly)."""
    prof = parse_profile(profile) if isinstance(profile, str) else profile
    mapping: dict[str, str] = {}
    for rule in prof.rules:
        key = "default" if rule.selector is None else rule.selector
        mapping.pop(key, None)
        mapping[key] = rule.text
    return mapping


def resolve(profile: Profile | str, unit_names, options: QuantOptions = QuantOptions(),
            widths: Mapping[str, int] | None = None) -> dict[str, UnitPrecision]:
    """Per-unit table ``{unit: UnitPrecision}`` for every name in ``unit_names`` (fp where no rule applies).

    ``widths`` (unit -> input width, what resolving against a model knows) checks weight group sizes:
    a group size that does not divide a unit's input width is a one-line error naming the units."""
    if isinstance(profile, str):
        profile = parse_profile(profile)
    names = list(unit_names)
    table = {n: UnitPrecision() for n in names}
    blocks = [n for n in names if n.startswith("L")]
    for rule in profile.rules:
        matched = blocks if rule.selector is None else fnmatch.filter(names, rule.selector)
        if not matched:
            raise BitswitchError(f"selector {rule.selector!r} in profile {profile.name!r} matches no unit: "
                                 f"units are L0..L{_max_layer(names)}.{{attn_in,attn_out,mlp_in,mlp_out}} and head")
        try:
            prec = options.precision(rule.w_bits, rule.group, rule.a_bits)
        except ValueError as exc:
            raise BitswitchError(f"{exc} in rule {rule.text!r} of profile {profile.name!r}") from exc
        for n in matched:
            table[n] = prec
    if widths is not None:
        check_group_sizes(profile, table, widths, options)
    return table


def check_group_sizes(profile: Profile, table: Mapping[str, UnitPrecision], widths: Mapping[str, int],
                      options: QuantOptions = QuantOptions()) -> None:
    """A one-line error when a weight group size does not divide the input width of a unit it applies
    to: the first offending group size, the units (first few + count) by width, and divisors to use."""
    by_group: dict[int, list[str]] = {}
    for unit, prec in table.items():
        if prec.weight is not None and prec.weight.group_size and unit in widths:
            by_group.setdefault(prec.weight.group_size, []).append(unit)
    for g, units in sorted(by_group.items()):
        bad: dict[int, list[str]] = {}
        for u in units:
            if widths[u] % g:
                bad.setdefault(widths[u], []).append(u)
        if not bad:
            continue
        explicit = any(r.group == g for r in profile.rules)
        what = f"group size {g}" if explicit or options.group_size != g else f"--group-size {g} (the default group size)"
        parts = []
        for width, us in bad.items():
            shown = ", ".join(us[:3]) + (", ..." if len(us) > 3 else "")
            parts.append(f"{width} of {shown} ({len(us)} unit{'s' if len(us) != 1 else ''})")
        if any(table[u].weight.grid == "gguf" for u in units):  # the block is llama.cpp's, not a choice
            raise BitswitchError(f"profile {profile.name!r}: the gguf weight grid quantizes blocks of {g} input "
                                 f"columns, and {g} does not divide the input width {' nor '.join(parts)}: "
                                 "keep those units at fp (e.g. a rule UNIT=fp) or use another --weight-grid")
        common = math.gcd(*(widths[u] for u in units))
        fits = [d for d in (16, 32, 64, 128, 256) if common % d == 0][-2:]
        drop = f"g{g}" if explicit else "--group-size"
        advice = (f"use a divisor of {common} such as {' or '.join(map(str, fits))}" if fits
                  else f"use a divisor of {common}") + f" (or drop {drop} for one scale per output channel)"
        raise BitswitchError(f"profile {profile.name!r}: {what} does not divide the input width "
                             f"{' nor '.join(parts)}: {advice}")


def _max_layer(names) -> int:
    layers = [int(n[1:].split(".")[0]) for n in names if n.startswith("L")]
    return max(layers) if layers else 0


def table_to_string(table: dict[str, UnitPrecision]) -> str:
    """The profile grammar for a per-unit table, shortest first rule = the most common spec."""
    specs = {n: p.spec for n, p in table.items()}
    block = [s for n, s in specs.items() if n.startswith("L")]
    common = max(dict.fromkeys(block), key=block.count) if block else "fp"   # ties: the first seen
    rules = [common] + [f"{n}={s}" for n, s in specs.items()
                        if (s != common if n.startswith("L") else s != "fp")]
    return ";".join(rules)


# -- identity ------------------------------------------------------------------------------------

def precision_text(prec: UnitPrecision) -> str:
    """A unit's precision in full: its spec plus every quantizer setting the spec does not spell
    (``w4g32a8``; ``w4a8/wasym/atensor`` for asymmetric weights and static activations)."""
    if prec.is_fp:
        return "fp"
    extra = []
    if prec.weight is not None:
        extra += [] if prec.weight.symmetric else ["wasym"]
        extra += [] if prec.weight.method == "uniform" else [f"w{prec.weight.method}"]
    if prec.act is not None:
        extra += [] if prec.act.mode == "token" else [f"a{prec.act.mode}"]
        extra += ["asym"] if prec.act.symmetric else []
        extra += [] if prec.act.method == "uniform" else [f"a{prec.act.method}"]
    return "/".join([prec.spec, *extra])


def table_id(entries: Mapping[str, UnitPrecision | str]) -> str:
    """A profile's identity: a stable digest (12 hex digits) of what every unit runs at, ``{unit:
    UnitPrecision}`` or ``{unit: text}`` (:func:`precision_text`, plus an adapter where one is
    active). Two profiles share it exactly when they run the same; the name plays no part."""
    text = ";".join(f"{u}={p if isinstance(p, str) else precision_text(p)}" for u, p in sorted(entries.items()))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def distinct_names(profiles: list[tuple[str, str]], taken: Iterable[tuple[str, str]] = ()) -> list[str]:
    """Display names for ``[(name, id), ...]``: a name stays as it is unless profiles of other ids
    share it (in the list, or in ``taken``: the ``(name, id)`` of records already kept); then each
    of this list's holders gets its short id appended (``search-avg4-1a2b3c``)."""
    ids: dict[str, set[str]] = {}
    for name, pid in [*profiles, *taken]:
        ids.setdefault(name, set()).add(pid)
    return [name if len(ids[name]) == 1 else f"{name}-{pid[:6]}" for name, pid in profiles]


# -- byte accounting ------------------------------------------------------------------------------

def quantized_tensor_bytes(out_features: int, in_features: int, cfg: WeightQuant) -> dict[str, int]:
    """Bytes of one weight (out, in) stored at ``cfg``: densely packed codes, scales, zero points.

    Scales are fp16 for bits <= 8 and fp32 for 16 bits; asymmetric zero points take ceil(bits/8)
    bytes per group. This is exactly what ``bitswitch export`` writes. The gguf grid's asymmetric
    formats keep an fp16 block minimum instead (2 bytes), so every gguf weight counts exactly its
    llama.cpp bytes (Q4_0 18, Q4_1 20, Q5_0 22, Q5_1 24, Q8_0 34 per block of 32).
    """
    groups = out_features * (1 if cfg.group_size is None else in_features // cfg.group_size)
    return {"codes": math.ceil(out_features * in_features * cfg.bits / 8),
            "scales": groups * (2 if cfg.bits <= 8 else 4),
            "zeros": 0 if cfg.symmetric else groups * (2 if cfg.grid == "gguf" else math.ceil(cfg.bits / 8))}
