"""The export format (version 1): what the directory holds, and its validation on read.

An export directory holds ``model.safetensors`` (every tensor), ``quant_map.json`` (what they
mean), the model's ``config.json`` and the tokenizer files. Tensors of an exported unit module
``M`` are named ``M.qweight`` (packed codes, 1-D uint8, ``dense-bitstream`` layout of
:mod:`bitswitch.quant.pack`), ``M.scales`` (out, groups) fp16 (fp32 at 16 bits), ``M.zeros``
(out, groups) uint8 (uint16 at 16 bits; asymmetric only), ``M.weight`` (out, in) for a unit whose
weight stays float, ``M.bias``, ``M.lora_A`` (r, in) / ``M.lora_B`` (out, r) for an unmerged
adapter and ``M.act_range`` (2,) for a calibrated static activation range. Every other parameter
keeps its Hugging Face name (``transformer.wte.weight``), tied parameters stored once.

``quant_map.json``::

    {"format": "bitswitch-export", "format_version": 1,
     "profile": "w4a8;L0.*=fp",                         # the profile's name
     "units": {"L0.attn_in": {"spec": "fp", "weight": null, "act": null}, ...},
     "options": {...QuantOptions...}, "merge": "after", "unquantized_dtype": "fp16",
     "lora_dtype": "fp32", "dtype": "float32",            # the model's compute dtype
     "weights_file_bytes": 123456,                       # size of model.safetensors
     "sha256": {"model.safetensors": "<64 hex digits>",   # every other file of the directory
                "config.json": "...", "tokenizer.json": "...", ...},
     "modules": {"transformer.h.1.attn.c_attn": {
         "unit": "L1.attn_in", "shape": [out, in],
         "weight": {"bits": 4, "group_size": 32, "granularity": "group", "symmetric": true,
                    "method": "uniform", "layout": "dense-bitstream", "offset": 7} | null,
         "act": {"bits": 8, "mode": "token", "symmetric": false, "method": "uniform"} | null,
         "lora": {"r": 8, "scaling": 2.0} | null}},
     "tensors": {"transformer.h.1.attn.c_attn.qweight":
                     {"kind": "codes", "dtype": "uint8", "shape": [6144], "module": "..."}, ...},
     "ties": {"lm_head.weight": "transformer.wte.weight"},
     "bytes": {"codes": ..., "scales": ..., ...},         # tensor bytes by kind
     "avg_w_bits": 4.2,                                  # as profile_report counts it
     "meta": {...}}

Tensor kinds: ``codes``, ``scales``, ``zeros``, ``unquantized``, ``lora``, ``act_range``.

On read, every file that ``sha256`` names is checked before anything is loaded: a flipped byte is a
one-line error ("... is corrupt (sha256 mismatch)"), never a model with garbage weights. Exports
written before checksums existed (no ``sha256`` key) load unchecked (the size and structure checks
still apply).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import BitswitchError
from ..io import check_sha256
from ..quant.config import ActQuant, WeightQuant
from ..quant.functional import scale_dtype
from ..quant.pack import code_offset, packed_numel

FORMAT = "bitswitch-export"
FORMAT_VERSION = 1
MAP_FILE = "quant_map.json"
WEIGHTS_FILE = "model.safetensors"
LAYOUT = "dense-bitstream"
KINDS = ("codes", "scales", "zeros", "unquantized", "lora", "act_range")
FIX = "re-export it with bitswitch export"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def weight_entry(cfg: WeightQuant) -> dict:
    if cfg.grid == "gguf":  # its blocks (d * q + m, codes -8..7) are not this format's packed codes
        raise BitswitchError("the gguf weight grid exports as GGUF: use bitswitch export --format gguf")
    return {"bits": cfg.bits, "group_size": cfg.group_size,
            "granularity": "channel" if cfg.group_size is None else "group",
            "symmetric": cfg.symmetric, "method": cfg.method, "layout": LAYOUT,
            "offset": code_offset(cfg.bits, cfg.symmetric), "grid": cfg.grid}


def weight_quant(entry: dict) -> WeightQuant:
    return WeightQuant(entry["bits"], entry["group_size"], entry["symmetric"], entry["method"],
                       entry.get("grid", "independent"))


def act_entry(cfg: ActQuant) -> dict:
    return {"bits": cfg.bits, "mode": cfg.mode, "symmetric": cfg.symmetric, "method": cfg.method}


def act_quant(entry: dict) -> ActQuant:
    return ActQuant(entry["bits"], entry["mode"], entry["symmetric"], entry["method"])


def zero_dtype(bits: int) -> torch.dtype:
    """Zero points take ceil(bits / 8) bytes each, as the byte accounting counts them."""
    return torch.uint8 if bits <= 8 else torch.uint16


def module_tensor_specs(name: str, entry: dict) -> dict[str, tuple[str, list[int]]]:
    """The tensors a module entry implies, ``{tensor name: (dtype, shape)}``, beside its optional
    bias and float weight (whose dtype is the export's unquantized dtype)."""
    out_f, in_f = entry["shape"]
    specs = {}
    w = entry["weight"]
    if w is not None:
        groups = 1 if w["group_size"] is None else in_f // w["group_size"]
        specs[f"{name}.qweight"] = ("uint8", [packed_numel(out_f * in_f, w["bits"])])
        specs[f"{name}.scales"] = (dtype_name(scale_dtype(w["bits"])), [out_f, groups])
        if not w["symmetric"]:
            specs[f"{name}.zeros"] = (dtype_name(zero_dtype(w["bits"])), [out_f, groups])
    if entry["lora"] is not None:
        r = entry["lora"]["r"]
        specs[f"{name}.lora_A"] = (None, [r, in_f])
        specs[f"{name}.lora_B"] = (None, [out_f, r])
    if entry["act"] is not None and entry["act"]["mode"] == "tensor":
        specs[f"{name}.act_range"] = ("float32", [2])
    return specs


def read_quant_map(path: str | Path) -> dict:
    """Read and check ``quant_map.json`` of an export directory (format, version, structure)."""
    file = Path(path) / MAP_FILE
    if not file.is_file():
        raise BitswitchError(f"{path} is not a bitswitch export (no {MAP_FILE}): pass a directory "
                             "written by bitswitch export")
    try:
        qmap = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BitswitchError(f"{file} is not valid JSON ({exc}): {FIX}") from exc
    if not isinstance(qmap, dict) or qmap.get("format") != FORMAT:
        raise BitswitchError(f"{file} is not a {FORMAT} quant map: {FIX}")
    if qmap.get("format_version") != FORMAT_VERSION:
        raise BitswitchError(f"{file} has format_version {qmap.get('format_version')!r} but this bitswitch "
                             f"reads version {FORMAT_VERSION}: {FIX} or use the bitswitch that wrote it")
    missing = [k for k in ("profile", "units", "modules", "tensors", "ties", "dtype", "merge",
                           "weights_file_bytes", "bytes", "avg_w_bits") if k not in qmap]
    if missing:
        raise BitswitchError(f"{file} lacks {', '.join(missing)}: {FIX}")
    bad = _malformed(qmap)
    if bad:
        raise BitswitchError(f"{file} has a malformed {bad!r} entry: {FIX}")
    return qmap


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_dict_of(d, check) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and check(v) for k, v in d.items())


def _malformed(qmap: dict) -> str | None:
    """The first top-level key of a quant map whose value has the wrong form (modules are checked
    against the tensors in :func:`read_tensors`)."""
    checks = {
        "profile": lambda v: isinstance(v, str),
        "units": lambda v: _is_dict_of(v, lambda e: isinstance(e, dict) and isinstance(e.get("spec"), str)),
        "modules": lambda v: _is_dict_of(v, lambda e: isinstance(e, dict)),
        "tensors": lambda v: _is_dict_of(v, lambda e: isinstance(e, dict) and isinstance(e.get("dtype"), str)
                                         and isinstance(e.get("shape"), list)
                                         and all(isinstance(n, int) for n in e["shape"])),
        "ties": lambda v: _is_dict_of(v, lambda e: isinstance(e, str)),
        "dtype": lambda v: isinstance(v, str),
        "merge": lambda v: isinstance(v, str),
        "weights_file_bytes": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "bytes": lambda v: _is_dict_of(v, _is_number) and all(k in v for k in KINDS),
        "avg_w_bits": _is_number,
        "sha256": lambda v: v is None or isinstance(v, dict),
    }
    return next((k for k, ok in checks.items() if not ok(qmap.get(k))), None)


def read_tensors(path: str | Path, qmap: dict) -> dict[str, torch.Tensor]:
    """Load ``model.safetensors`` and check it against the quant map: size, the checksums of every
    file the map records (config and tokenizer files too), names, dtypes, shapes."""
    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise BitswitchError(f"{file} is missing: {FIX}")
    size = file.stat().st_size
    if size != qmap["weights_file_bytes"]:
        raise BitswitchError(f"{file} has {size} bytes but {MAP_FILE} records {qmap['weights_file_bytes']} "
                             f"(truncated or replaced): {FIX}")
    check_sha256(path, qmap.get("sha256"), MAP_FILE, FIX)
    try:
        with safe_open(str(file), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BitswitchError(f"{file} is corrupt or truncated ({first}): {FIX}") from exc
    table = qmap["tensors"]
    for name in sorted(set(table) ^ set(tensors)):
        where = (f"in {MAP_FILE} but not in {WEIGHTS_FILE}" if name in table
                 else f"in {WEIGHTS_FILE} but not in {MAP_FILE}")
        raise BitswitchError(f"tensor {name!r} is {where} of {path}: the files do not match; {FIX}")
    for name, t in tensors.items():
        _expect(path, name, t, table[name]["dtype"], table[name]["shape"])
    for mname, entry in qmap["modules"].items():
        try:
            for part, make in (("weight", weight_quant), ("act", act_quant)):
                if entry[part] is not None:
                    make(entry[part])
            specs = module_tensor_specs(mname, entry)
            if entry["lora"] is not None and not _is_number(entry["lora"]["scaling"]):
                raise TypeError(f"LoRA scaling {entry['lora']['scaling']!r} is not a number")
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise BitswitchError(f"module {mname!r} in {MAP_FILE} of {path} is malformed "
                                 f"({type(exc).__name__}: {exc}): {FIX}") from exc
        for name, (dtype, shape) in specs.items():
            if name not in tensors:
                raise BitswitchError(f"{MAP_FILE} of {path} describes module {mname!r} but {WEIGHTS_FILE} lacks "
                                     f"its tensor {name!r}: {FIX}")
            _expect(path, name, tensors[name], dtype, shape)
        if entry["weight"] is None and f"{mname}.weight" not in tensors and f"{mname}.weight" not in qmap["ties"]:
            raise BitswitchError(f"module {mname!r} of {path} has neither codes nor a float weight: {FIX}")
    return tensors


def _expect(path, name: str, t: torch.Tensor, dtype: str | None, shape: list[int]) -> None:
    if list(t.shape) != list(shape) or (dtype is not None and dtype_name(t.dtype) != dtype):
        raise BitswitchError(f"tensor {name!r} in {Path(path) / WEIGHTS_FILE} is {dtype_name(t.dtype)} "
                             f"{list(t.shape)} but {MAP_FILE} says {dtype or 'float'} {list(shape)}: {FIX}")


def theory_bytes(entry: dict) -> float:
    """bits x params / 8 + scales (+ zero points) of one quantized module, without byte rounding."""
    out_f, in_f = entry["shape"]
    w = entry["weight"]
    groups = out_f * (1 if w["group_size"] is None else in_f // w["group_size"])
    zeros = 0 if w["symmetric"] else groups * math.ceil(w["bits"] / 8)
    return out_f * in_f * w["bits"] / 8 + groups * scale_dtype(w["bits"]).itemsize + zeros
