"""Roundings of a model's frozen base (``QuantLinear.set_rounding``, e.g. GPTQ) on disk.

A prepared model directory may hold ``bitswitch_roundings.safetensors`` (each entry's codes bit-packed
at its width with :mod:`bitswitch.quant.pack`, its scales at the dtype export stores them in, its
zero points as uint8) and ``bitswitch_roundings.json`` (the index: each entry's module, unit, shape
and :class:`~bitswitch.quant.config.WeightQuant`, and the tensor file's sha256). ``loading`` attaches
them whenever it makes a model from such a directory switchable, so train / eval / export / generate
with ``--model DIR`` use them with no extra flag; a quantizer with no rounding rounds to nearest.

A file that is corrupt, truncated, or computed for other weights is refused with one line: the
scales recorded must equal the round-to-nearest scales of the weights loaded, bit for bit, or --
for a learned grid, whose scales are its own (``prepare --recon``) -- the sha256 of the weights
loaded must equal the one recorded beside the entry (:func:`weight_fingerprint`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .errors import BitswitchError
from .io import atomic_write_bytes, atomic_write_json, check_sha256
from .quant.config import WeightQuant
from .quant.functional import scale_dtype, weight_qparams
from .quant.pack import code_offset, pack, unpack

INDEX = "bitswitch_roundings.json"
TENSORS = "bitswitch_roundings.safetensors"
FORMAT = "bitswitch-roundings"
FIX = "re-run bitswitch prepare (--gptq / --recon), or delete the two bitswitch_roundings files to round to nearest"


def _key(module: str, cfg: WeightQuant) -> str:
    return f"{module}@w{cfg.bits}g{cfg.group_size or 0}{'s' if cfg.symmetric else 'a'}"


def collect_roundings(model: nn.Module) -> dict:
    """``{module name: {WeightQuant: (codes, scale, zero)}}`` of a switchable model's units (CPU)."""
    from .switching import unit_modules

    out = {}
    for _, name, mod in unit_modules(model):
        if mod.roundings:
            out[name] = {cfg: tuple(None if t is None else t.cpu() for t in r) for cfg, r in mod.roundings.items()}
    return out


def weight_fingerprint(w: torch.Tensor) -> str:
    """sha256 of a unit module's weight as (out, in) float32 bytes: identifies the weights a rounding
    was computed for when its scales cannot (a learned grid)."""
    import hashlib

    return hashlib.sha256(w.detach().float().contiguous().cpu().numpy().tobytes()).hexdigest()


def save_roundings(roundings: dict, directory: str | os.PathLike, units: dict[str, str] | None = None,
                   record: dict | None = None, fingerprints: dict[str, str] | None = None) -> Path:
    """Write ``roundings`` (as :func:`collect_roundings` gives) into ``directory``: the tensor file
    first, then the index naming its sha256 (each written atomically). ``units``: module -> unit name
    (recorded for reading); ``record``: how they were made (JSON-ready); ``fingerprints``: module ->
    :func:`weight_fingerprint` of the weights the roundings were computed for (recorded per entry)."""
    from safetensors.torch import save

    directory = Path(directory)
    tensors, entries = {}, []
    for module, per_cfg in roundings.items():
        for cfg, (codes, scale, zero) in per_cfg.items():
            key = _key(module, cfg)
            tensors[f"{key}.codes"] = pack(codes, cfg.bits, code_offset(cfg.bits, cfg.symmetric)).contiguous()
            tensors[f"{key}.scale"] = scale.to(scale_dtype(cfg.bits)).contiguous()
            if zero is not None:
                tensors[f"{key}.zero"] = zero.to(torch.uint8).contiguous()
            entries.append({"key": key, "module": module, "unit": (units or {}).get(module),
                            "shape": list(codes.shape),
                            "weight": {"bits": cfg.bits, "group_size": cfg.group_size, "symmetric": cfg.symmetric,
                                       "method": cfg.method, "grid": cfg.grid}})
            if fingerprints and module in fingerprints:
                entries[-1]["weight_sha256"] = fingerprints[module]
    path = atomic_write_bytes(directory / TENSORS, save(tensors))
    from .io import sha256_file

    atomic_write_json(directory / INDEX, {"format": FORMAT, "format_version": 1, "record": record or {},
                                          "sha256": {TENSORS: sha256_file(path)}, "entries": entries})
    return directory


def has_roundings(directory) -> bool:
    try:
        return (Path(directory) / INDEX).is_file()
    except (TypeError, OSError):
        return False


def read_roundings(directory: str | os.PathLike) -> dict:
    """The inverse of :func:`save_roundings`: ``{module: {WeightQuant: (codes int32, scale float32,
    zero float32 | None, weight sha256 | None)}}``, checked against the index and its sha256
    (one-line BitswitchError)."""
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    where = str(directory / INDEX)
    try:
        meta = json.loads((directory / INDEX).read_text())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError("not a bitswitch roundings index")
        check_sha256(directory, meta.get("sha256"), INDEX, FIX)
        if TENSORS not in (meta.get("sha256") or {}):
            raise ValueError(f"no sha256 recorded for {TENSORS}")
        tensors = load_file(directory / TENSORS)
        out: dict = {}
        for e in meta["entries"]:
            cfg = WeightQuant(**e["weight"])
            shape = tuple(int(n) for n in e["shape"])
            key = e["key"]
            codes = unpack(tensors[f"{key}.codes"], cfg.bits, shape, code_offset(cfg.bits, cfg.symmetric))
            zero = tensors.get(f"{key}.zero")
            out.setdefault(e["module"], {})[cfg] = (codes.to(torch.int32).reshape(shape),
                                                     tensors[f"{key}.scale"].float(),
                                                     None if zero is None else zero.float(),
                                                     e.get("weight_sha256"))
    except BitswitchError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError, json.JSONDecodeError) as exc:
        raise BitswitchError(f"{where} is unreadable or malformed ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}): {FIX}") from None
    return out


def attach_roundings(model: nn.Module, directory: str | os.PathLike) -> int:
    """Read ``directory``'s roundings and set them on the switchable ``model``'s unit modules;
    return how many were set. Every entry must name a unit module of the model's shape whose
    weights give the recorded scales, or the recorded weight sha256 (a learned grid), else a one-line
    BitswitchError: the file is for other weights."""
    from .quant.linear import QuantLinear

    n = 0
    for module, per_cfg in read_roundings(directory).items():
        try:
            mod = model.get_submodule(module)
        except AttributeError:
            mod = None
        if not isinstance(mod, QuantLinear):
            raise BitswitchError(f"{Path(directory) / INDEX} names {module!r}, which is no unit of this model: {FIX}")
        fingerprint = None
        for cfg, (codes, scale, zero, sha) in per_cfg.items():
            with torch.no_grad():
                want_scale, want_zero = weight_qparams(mod.weight_out_in().detach(), cfg) \
                    if tuple(codes.shape) == (mod.out_features, mod.in_features) else (None, None)
            same = want_scale is not None and torch.equal(want_scale.cpu(), scale) and \
                (want_zero is None or torch.equal(want_zero.cpu(), zero))
            if not same and want_scale is not None and sha is not None:
                fingerprint = fingerprint or weight_fingerprint(mod.weight_out_in())
                same = fingerprint == sha
            if not same:
                raise BitswitchError(f"{Path(directory) / INDEX}: the rounding of {module!r} was computed for "
                                     f"other weights (shape or scales differ: another model, or loaded at another --dtype): {FIX}")
            try:
                mod.set_rounding(cfg, codes, scale, zero)
            except ValueError as exc:
                raise BitswitchError(f"{Path(directory) / INDEX}: {module!r}: {exc}: {FIX}") from None
            n += 1
    return n


def maybe_attach(model: nn.Module, spec) -> int:
    """:func:`attach_roundings` when ``spec`` is a directory holding roundings; 0 otherwise."""
    return attach_roundings(model, spec) if isinstance(spec, (str, os.PathLike)) and has_roundings(spec) else 0
