"""LoRA adapters keyed by profile (or ``shared``, or per unit spec), and their safetensors files.

Each wrapped module keeps its adapters by key in a ``ModuleDict`` (as peft's LoRA layers do);
``set_profile`` activates the key a unit should use. Only the active adapter takes part in the
forward pass, so only it gets gradients.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from .errors import BitswitchError
from .io import atomic_write_bytes, atomic_write_json, check_sha256, sha256_file
from .profiles import QuantOptions
from .quant.clipping import parse_clip_key, supports_clip
from .switching import adapter_key, refresh, resolve_profile, state, unit_modules
from .units import ROLES

ADAPTER_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT_VERSION = 1
FIX = "re-train the adapters or re-save them with save_adapters"
PARTS = ("lora_A", "lora_B")


@dataclass
class AdapterConfig:
    """LoRA hyper-parameters (peft's names: r, lora_alpha, lora_dropout, target roles)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    roles: tuple[str, ...] = field(default_factory=lambda: ROLES)
    seed: int = 0

    def __post_init__(self):
        self.roles = tuple(self.roles)
        if self.r < 1:
            raise BitswitchError(f"LoRA rank r={self.r} must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise BitswitchError(f"LoRA dropout {self.dropout} must be in [0, 1)")
        bad = [r for r in self.roles if r not in (*ROLES, "head")]
        if bad:
            raise BitswitchError(f"unknown adapter role(s) {bad}: use {', '.join(ROLES)} or head")


def _role(unit: str) -> str:
    return unit.split(".", 1)[1] if "." in unit else unit


def add_adapters(model, profiles, cfg: AdapterConfig = AdapterConfig()) -> list[str]:
    """Create the adapters that ``profiles`` will use under the model's keying; returns the new keys.

    Initialisation is seeded per (module, key), so it does not depend on creation order.
    """
    st = state(model)
    st.adapter_config = cfg
    created = set()
    for profile in profiles:
        prof, table = resolve_profile(model, profile)
        for unit, name, mod in unit_modules(model):
            if _role(unit) not in cfg.roles:
                continue
            key = adapter_key(st.keying, prof, table[unit])
            if key in mod.adapters:
                continue
            gen = torch.Generator().manual_seed(cfg.seed + zlib.crc32(f"{name}/{key}".encode()))
            mod.add_adapter(key, cfg.r, cfg.alpha, cfg.dropout, gen)
            created.add(key)
    refresh(model)  # where the current state uses one of the new adapters, it is active now
    return sorted(created)


def add_clips(model, profiles) -> int:
    """Create the learned clips (factors 1: the round-to-nearest grid) of every unit module and
    weight quantizer that ``profiles`` use (uniform weights of at most 8 bits on the independent
    grid); returns how many were created. Their ``requires_grad`` is left off: the trainer turns it on."""
    n = 0
    for profile in profiles:
        _, table = resolve_profile(model, profile)
        for unit, _, mod in unit_modules(model):
            cfg = table[unit].weight
            if supports_clip(cfg) and mod.clip(cfg) is None:
                mod.add_clip(cfg)
                n += 1
    return n


def clip_parameters(model):
    """Every learned clip parameter, in a fixed order (unit modules, then keys as created)."""
    for _, _, mod in unit_modules(model):
        yield from mod.clips.values()


def wrapper_parameters(model):
    """The parameters the wrappers add to the model (adapters and learned clips): never part of the
    model's own weights (export, accounting and model files leave them out)."""
    yield from adapter_parameters(model)
    yield from clip_parameters(model)


def adapter_parameters(model, key: str | None = None):
    """Adapter parameters (all, or one key's)."""
    for _, _, mod in unit_modules(model):
        for k, ad in mod.adapters.items():
            if key is None or k == key:
                yield from ad.parameters()


def freeze_base(model) -> None:
    """Freeze everything but the adapters (LoRA training)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in adapter_parameters(model):
        p.requires_grad_(True)


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """Adapters, learned clips and calibrated observers as ``{"<module>::<key>::lora_A": tensor, ...,
    "<module>::clip::w4g32": factors, "<module>::obs::<profile>": [min, max]}``."""
    out = {}
    for _, name, mod in unit_modules(model):
        for key, ad in mod.adapters.items():
            out[f"{name}::{key}::lora_A"] = ad.lora_A.detach().float().cpu().contiguous()
            out[f"{name}::{key}::lora_B"] = ad.lora_B.detach().float().cpu().contiguous()
        for key, clip in mod.clips.items():
            out[f"{name}::clip::{key}"] = clip.detach().float().cpu().contiguous()
        for key, obs in mod.observers.items():
            if obs.calibrated:
                out[f"{name}::obs::{key}"] = torch.stack([obs.min_val, obs.max_val]).detach().float().cpu()
    return out


def save_adapters(model, directory: str | Path, profiles=()) -> Path:
    """Write ``adapters.safetensors`` and ``adapter_config.json`` (config, keying, options, the
    resolved per-unit table of each profile in ``profiles`` and the tensor file's checksum,
    ``"sha256": {"adapters.safetensors": "<hex>"}``) atomically into ``directory``."""
    st = state(model)
    cfg = st.adapter_config or AdapterConfig()
    directory = Path(directory)
    tables = {}
    for p in profiles:
        prof, table = resolve_profile(model, p)
        tables[prof.name] = {u: prec.spec for u, prec in table.items()}
    atomic_write_bytes(directory / ADAPTER_FILE, save(adapter_state_dict(model), metadata={"format": "bitswitch"}))
    atomic_write_json(directory / CONFIG_FILE, {
        "format_version": FORMAT_VERSION, "keying": st.keying, "adapter": asdict(cfg),
        "options": asdict(st.options), "profiles": tables,
        "sha256": {ADAPTER_FILE: sha256_file(directory / ADAPTER_FILE)}})
    return directory


def read_adapter_config(directory: str | Path) -> dict:
    """Read and check ``adapter_config.json`` (JSON, version, keys); the tensors are checked on load."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file() or not (Path(directory) / ADAPTER_FILE).is_file():
        raise BitswitchError(f"adapter directory {str(directory)!r} lacks {CONFIG_FILE} or {ADAPTER_FILE}: "
                             "pass a directory written by bitswitch train or save_adapters")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BitswitchError(f"{path} is not valid JSON ({type(exc).__name__}: {exc}): {FIX}") from exc
    if not isinstance(meta, dict):
        raise BitswitchError(f"{path} is not an adapter config (no JSON object): {FIX}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BitswitchError(f"{path} has format_version {meta.get('format_version')!r}; this bitswitch "
                             f"reads version {FORMAT_VERSION}")
    bad = [k for k, kind in (("keying", str), ("adapter", dict)) if not isinstance(meta.get(k), kind)]
    bad += [k for k in ("options", "sha256") if meta.get(k) is not None and not isinstance(meta[k], dict)]
    if bad:
        raise BitswitchError(f"{path} lacks or has malformed {', '.join(bad)}: {FIX}")
    return meta


def load_adapter_state_dict(model, tensors: dict[str, torch.Tensor], cfg: AdapterConfig | None = None,
                            source: str = "the adapter tensors") -> None:
    """Inverse of :func:`adapter_state_dict`: copy tensors into (new, if needed) adapters and observers.

    A tensor whose name, module or shape does not fit the model raises a one-line error naming ``source``.
    """
    cfg = cfg or state(model).adapter_config or AdapterConfig()
    mods = {name: mod for _, name, mod in unit_modules(model)}
    for full, tensor in tensors.items():
        parts = full.split("::")
        name, key, part = parts if len(parts) == 3 else ("", "", "")
        if not name or not key or (key not in ("obs", "clip") and part not in PARTS):
            raise BitswitchError(f"{source} hold {full!r}, not a <module>::<key>::lora_A|lora_B|obs|clip name: {FIX}")
        if name not in mods:
            raise BitswitchError(f"adapter tensor {full!r} names a module the model lacks: load the adapters "
                                 "into the model they were trained on")
        mod = mods[name]
        if key == "obs":
            if tuple(tensor.shape) != (2,):
                raise BitswitchError(f"observer range {full!r} in {source} has shape {list(tensor.shape)}, not [2]: "
                                     f"{FIX}")
            if part not in mod.observers:
                mod.observer_key = part
                mod.observer(create=True)
            obs = mod.observers[part]
            obs.min_val.copy_(tensor[0]), obs.max_val.copy_(tensor[1]), obs.count.fill_(1)
            continue
        if key == "clip":
            try:
                mod.add_clip(parse_clip_key(part), tensor)
            except ValueError as exc:
                raise BitswitchError(f"learned clip {full!r} in {source}: {exc}; {FIX}") from None
            continue
        if key not in mod.adapters:
            mod.add_adapter(key, cfg.r, cfg.alpha, cfg.dropout)
        target = getattr(mod.adapters[key], part)
        if tensor.shape != target.shape:
            raise BitswitchError(f"adapter tensor {full!r} in {source} has shape {list(tensor.shape)} but the model "
                                 f"(LoRA r={cfg.r}) needs {list(target.shape)}: load the adapters into the model "
                                 f"they were trained on, or {FIX}")
        target.data.copy_(tensor)


def saved_options(meta: dict, directory: str | Path = "") -> QuantOptions | None:
    """The quantizer options an adapter config was saved with (None in a config without them)."""
    saved = meta.get("options")
    if saved is None:
        return None
    try:
        options = QuantOptions(**saved)
        options.precision(8, None, 8)   # the quantizer configs validate the values
        if options.group_size is not None and (not isinstance(options.group_size, int) or options.group_size < 1):
            raise ValueError(f"group size {options.group_size!r} is not a positive integer")
    except (TypeError, ValueError) as exc:
        raise BitswitchError(f"quantizer options {saved} in {str(directory)!r} are not this bitswitch's "
                             f"({exc}): {FIX}") from exc
    return options


def load_adapters(model, directory: str | Path) -> dict:
    """Recreate and load the adapters (and observers) saved by :func:`save_adapters`; returns the config.

    Quantizer options (group size, symmetry, activation mode, method) are part of what adapters were
    trained at, and :func:`save_adapters` stores them. The rule on loading: a model made switchable
    with the default :class:`~bitswitch.profiles.QuantOptions` takes the saved options (its
    profiles are resolved anew with them); a model with the saved options loads as it is; a model
    with other non-default options is refused with a one-line error naming each difference. (Options
    equal to the defaults cannot be told from "not chosen", so they always yield to the saved ones.)

    ``adapters.safetensors`` is checked against the sha256 that ``adapter_config.json`` records
    (a one-line error on a mismatch: a corrupt file is never loaded); directories saved before
    checksums existed (no ``sha256`` key) load unchecked.
    """
    meta = read_adapter_config(directory)
    st = state(model)
    if meta["keying"] != st.keying:
        raise BitswitchError(f"adapters in {str(directory)!r} are keyed by {meta['keying']!r} but the model by "
                             f"{st.keying!r}: make the model switchable with keying={meta['keying']!r}")
    config, file = Path(directory) / CONFIG_FILE, Path(directory) / ADAPTER_FILE
    try:
        cfg = AdapterConfig(**meta["adapter"])
    except BitswitchError as exc:
        raise BitswitchError(f"{config}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise BitswitchError(f"{config} has a malformed adapter entry ({exc}): {FIX}") from exc
    saved = saved_options(meta, directory)
    if saved is not None and saved != st.options:
        if st.options != QuantOptions():
            diff = ", ".join(f"{k} {v!r} (saved) vs {getattr(st.options, k)!r} (model)"
                             for k, v in asdict(saved).items() if getattr(st.options, k) != v)
            raise BitswitchError(f"adapters in {str(directory)!r} were trained with other quantizer options: "
                                 f"{diff}; drop the options to use the saved ones, or pass them as saved")
        _check_group_size(model, saved, config)
    check_sha256(directory, meta.get("sha256"), CONFIG_FILE, FIX)   # before the model changes at all
    try:
        tensors = load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BitswitchError(f"{file} is corrupt or truncated ({first[:160]}): {FIX}") from exc
    if saved is not None and saved != st.options:
        st.options = saved
        st._resolved.clear()   # profiles resolve anew with the saved options (refresh below re-applies)
    st.adapter_config = cfg
    load_adapter_state_dict(model, tensors, cfg, source=str(file))
    refresh(model)
    return meta


def _check_group_size(model, options: QuantOptions, config: Path) -> None:
    g = options.group_size
    for unit, _, mod in unit_modules(model):
        if g is not None and mod.in_features % g:
            raise BitswitchError(f"saved group size {g} in {config} does not divide the "
                                 f"{mod.in_features} input columns of unit {unit}: {FIX}")
