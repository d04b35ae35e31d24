"""The nested checkpoint format (version 1): what the directory holds, and its checks on read.

A nested checkpoint stores one symmetric int8 *master* per block-unit weight, from which every
width 2-8 of the nested grid is sliced (:func:`bitswitch.quant.functional.slice_codes`), so one
directory of about the 8-bit model's size serves every profile. It holds:

* ``model.safetensors``:

  - ``M.codes`` int8 (out, in) and ``M.scales`` fp16 (out, groups) for every block-unit module
    ``M`` (``model.layers.0.self_attn.q_proj``): the master
    ``quantize_weight(w, WeightQuant(8, group_size, True, "uniform"))`` (see
    :func:`bitswitch.export.nested.stable_master` for the one exception);
  - every other parameter under its Hugging Face name (embeddings, norms, biases ``M.bias``, the
    LM head) in the unquantized dtype, tied parameters once (``ties`` names the others);
  - the adapters under :mod:`bitswitch.adapters`' names, ``M::<key>::lora_A`` (r, in) and
    ``M::<key>::lora_B`` (out, r) in the LoRA dtype, and calibrated static activation ranges
    ``M::obs::<key>`` (2,) float32, so every adapter key reads back on its own.

* ``nested.json``::

    {"format": "bitswitch-nested", "format_version": 1,
     "group_size": null | 32,                        # the masters' groups (null: per output channel)
     "master": {"bits": 8, "symmetric": true, "method": "uniform", "scale_dtype": "float16"},
     "options": {...QuantOptions, weight_grid "nested"...},
     "units": {"L0.attn_in": {"model.layers.0.self_attn.q_proj": [out, in], ...}, "head": {...}},
     "masters": ["model.layers.0.self_attn.q_proj", ...],
     "adapters": null | {"keying", "adapter" (AdapterConfig), "options" (as trained), "profiles"
                         (profile -> unit -> spec, from adapter_config.json), "keys" (key -> r, alpha,
                         scaling, modules), "observers" (keys with static ranges)},
     "unquantized_dtype": "bf16", "lora_dtype": "bf16", "dtype": "float32",
     "tensors": {name: {"kind", "dtype", "shape"}}, "ties": {name: stored name},
     "bytes": {"codes", "scales", "unquantized", "lora", "act_range"},
     "restabilized_groups": 0, "weights_file_bytes": 123, "sha256": {file: hex, ...}, "meta": {...}}

  plus the model's ``config.json`` and tokenizer files. ``sha256`` covers every other file.

On read, every check fails with a one-line :class:`~bitswitch.errors.BitswitchError` naming the
file or tensor: a missing file, a digest that differs, a tensor missing or extra, a dtype or shape
other than the map (and the masters' shapes) call for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import BitswitchError
from ..io import check_sha256
from ..profiles import QuantOptions
from ..quant.config import WeightQuant

FORMAT = "bitswitch-nested"
FORMAT_VERSION = 1
INFO_FILE = "nested.json"
WEIGHTS_FILE = "model.safetensors"
KINDS = ("codes", "scales", "unquantized", "lora", "act_range")
STORE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SEP = "::"   # adapter tensor names, as adapters.adapter_state_dict writes them
FIX = "re-write it with bitswitch export --nested"
REQUIRED = ("group_size", "options", "units", "masters", "adapters", "unquantized_dtype", "lora_dtype", "dtype",
            "tensors", "ties", "bytes", "weights_file_bytes", "sha256")
# the options that decide the masters; the activation options may change when a checkpoint is loaded
WEIGHT_FIELDS = ("weight_symmetric", "group_size", "method", "weight_grid")


def master_quant(group_size: int | None) -> WeightQuant:
    """The int8 master quantizer of a checkpoint with ``group_size`` (what ``nested_master`` slices)."""
    return WeightQuant(8, group_size, True, "uniform")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def adapter_name(module: str, key: str, part: str) -> str:
    return f"{module}{SEP}{key}{SEP}{part}"


def is_nested_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by ``bitswitch export --nested`` (it holds ``nested.json``)."""
    return (Path(path).expanduser() / INFO_FILE).is_file()


def read_info(path: str | Path) -> dict:
    """Read and check ``nested.json`` (JSON, format, version, the keys and their forms)."""
    file = Path(path) / INFO_FILE
    if not file.is_file():
        raise BitswitchError(f"{path} is not a nested checkpoint (no {INFO_FILE}): pass a directory written by "
                             "bitswitch export --nested")
    try:
        info = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BitswitchError(f"{file} is not valid JSON ({type(exc).__name__}: {str(exc)[:120]}): {FIX}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise BitswitchError(f"{file} is not a {FORMAT} map: {FIX}")
    if info.get("format_version") != FORMAT_VERSION:
        raise BitswitchError(f"{file} has format_version {info.get('format_version')!r} but this bitswitch reads "
                             f"version {FORMAT_VERSION}: {FIX} or use the bitswitch that wrote it")
    missing = [k for k in REQUIRED if k not in info]
    if missing:
        raise BitswitchError(f"{file} lacks {', '.join(missing)}: {FIX}")
    bad = _malformed(info)
    if bad:
        raise BitswitchError(f"{file} has a malformed {bad!r} entry: {FIX}")
    return info


def _ints(v, n: int | None = None) -> bool:
    return (isinstance(v, list) and (n is None or len(v) == n)
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v))


def _dict_of(v, check) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and check(x) for k, x in v.items())


def _malformed(info: dict) -> str | None:
    """The first key of ``nested.json`` whose value has the wrong form."""
    checks = {
        "group_size": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0),
        "options": lambda v: isinstance(v, dict),
        "units": lambda v: _dict_of(v, lambda mods: _dict_of(mods, lambda s: _ints(s, 2))),
        "masters": lambda v: isinstance(v, list) and all(isinstance(m, str) for m in v),
        "adapters": lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("keying"), str)
                                            and isinstance(v.get("adapter"), dict)),
        "unquantized_dtype": lambda v: v in STORE_DTYPES,
        "lora_dtype": lambda v: v in STORE_DTYPES,
        "dtype": lambda v: isinstance(v, str),
        "tensors": lambda v: _dict_of(v, lambda e: isinstance(e, dict) and e.get("kind") in KINDS
                                      and isinstance(e.get("dtype"), str) and _ints(e.get("shape"))),
        "ties": lambda v: _dict_of(v, lambda s: isinstance(s, str)),
        "bytes": lambda v: _dict_of(v, lambda n: isinstance(n, int)) and all(k in v for k in KINDS),
        "weights_file_bytes": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "sha256": lambda v: isinstance(v, dict) and WEIGHTS_FILE in v,
    }
    return next((k for k, ok in checks.items() if not ok(info.get(k))), None)


def stored_options(info: dict, path: str | Path) -> QuantOptions:
    """The quantizer options a checkpoint was written with (weight grid ``nested``, its group size)."""
    try:
        options = QuantOptions(**info["options"])
    except (TypeError, ValueError, BitswitchError) as exc:
        raise BitswitchError(f"options {info['options']} in {Path(path) / INFO_FILE} are not this bitswitch's "
                             f"({str(exc)[:120]}): {FIX}") from None
    if options.weight_grid != "nested" or options.group_size != info["group_size"]:
        raise BitswitchError(f"options in {Path(path) / INFO_FILE} do not match its masters (grid "
                             f"{options.weight_grid!r}, group size {options.group_size!r} vs "
                             f"{info['group_size']!r}): {FIX}")
    return options


def merge_options(stored: QuantOptions, given: QuantOptions | None, path: str | Path) -> QuantOptions:
    """The options a loaded checkpoint runs at: ``stored``, with each activation option of ``given``
    that differs from the default. A weight option (group size, symmetry, method, grid) of ``given``
    that is neither the default nor the stored value is refused: the masters fix it. (A value equal to
    the default cannot be told from "not chosen", so it yields to the stored one, as adapters' do.)"""
    if given is None:
        return stored
    default, changes = QuantOptions(), {}
    for f in fields(QuantOptions):
        value = getattr(given, f.name)
        if value == getattr(default, f.name) or value == getattr(stored, f.name):
            continue
        if f.name in WEIGHT_FIELDS:
            raise BitswitchError(f"nested checkpoint {str(path)!r} holds masters with {f.name} "
                                 f"{getattr(stored, f.name)!r}; {f.name} {value!r} cannot apply: drop it, or "
                                 f"re-export with it")
        changes[f.name] = value
    return QuantOptions(**{**asdict(stored), **changes})


def expected_specs(info: dict) -> dict[str, tuple[str | None, list[int]]]:
    """``{tensor: (dtype, shape)}`` that the masters and adapters of ``info`` call for (dtype None:
    any float). Raises ValueError for a master or adapter entry that does not fit ``units``."""
    shapes = {m: s for mods in info["units"].values() for m, s in mods.items()}
    g = info["group_size"]
    specs = {}
    for m in info["masters"]:
        if m not in shapes:
            raise ValueError(f"master {m!r} is not a module of any unit")
        out_f, in_f = shapes[m]
        if g is not None and in_f % g:
            raise ValueError(f"group size {g} does not divide the {in_f} input columns of {m!r}")
        specs[f"{m}.codes"] = ("int8", [out_f, in_f])
        specs[f"{m}.scales"] = ("float16", [out_f, 1 if g is None else in_f // g])
    meta = info["adapters"]
    if meta is not None:
        lora = dtype_name(STORE_DTYPES[info["lora_dtype"]])
        for name, entry in info["tensors"].items():
            if entry["kind"] != "lora":
                continue
            module, key, part = (name.split(SEP) + ["", ""])[:3]
            if module not in shapes or not key or part not in ("lora_A", "lora_B"):
                raise ValueError(f"LoRA tensor {name!r} does not name <module>{SEP}<key>{SEP}lora_A|lora_B of a unit")
            if key not in meta["keys"]:
                raise ValueError(f"LoRA tensor {name!r} has no entry for its key in adapters.keys")
            r, (out_f, in_f) = meta["keys"][key]["r"], shapes[module]
            specs[name] = (lora, [r, in_f] if part == "lora_A" else [out_f, r])
    return specs


# safetensors' dtype names (its format's header), for the tensors read on demand
_ST_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
              "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
              "F64": torch.float64}


class StoredTensor:
    """One tensor of a safetensors file, read when :meth:`load` is called, with plain reads.

    safetensors maps the whole file, and every page a tensor touched stays resident while any tensor
    of the file lives; a builder that reads the masters one at a time and drops each after packing
    would still end with all of them resident. Read this way, a dropped master leaves nothing."""

    def __init__(self, file: Path, name: str, dtype: torch.dtype, shape: list[int], begin: int, end: int):
        self.file, self.name, self.dtype, self.shape = file, name, dtype, torch.Size(shape)
        self.begin, self.end = begin, end

    def load(self) -> torch.Tensor:
        buf = bytearray(self.end - self.begin)
        with open(self.file, "rb") as f:
            f.seek(self.begin)
            if f.readinto(buf) != len(buf):
                raise BitswitchError(f"{self.file} is truncated at tensor {self.name!r}: {FIX}")
        if not buf:
            return torch.empty(self.shape, dtype=self.dtype)
        return torch.frombuffer(buf, dtype=self.dtype).reshape(self.shape)


def stored_tensors(file: Path, names) -> dict[str, StoredTensor]:
    """``{name: StoredTensor}`` for ``names`` of safetensors ``file``, from its header (8 bytes of
    little-endian length, then JSON of ``{name: {dtype, shape, data_offsets}}``), bounds checked."""
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file")
            header = json.loads(f.read(n))
        out = {}
        for name in names:
            e = header[name]
            dtype, shape, (b, end) = _ST_DTYPES[e["dtype"]], [int(d) for d in e["shape"]], e["data_offsets"]
            count = 1
            for d in shape:
                count *= d
            if not 0 <= b <= end <= size - 8 - n or end - b != count * dtype.itemsize:
                raise ValueError(f"tensor {name!r} has data offsets {[b, end]} that do not fit its shape or the file")
            out[name] = StoredTensor(file, name, dtype, shape, 8 + n + b, 8 + n + end)
        return out
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise BitswitchError(f"{file} is corrupt or truncated ({str(exc)[:160]}): {FIX}") from None


def read_tensors(path: str | Path, info: dict, lazy=()) -> dict[str, torch.Tensor]:
    """Load ``model.safetensors`` after checking its size and every file's sha256, then check its
    tensors against ``info``: names (none missing, none extra), dtypes and shapes.

    lazy: names returned as :class:`StoredTensor` (shape and dtype checked, data read on ``load()``)."""
    path = Path(path)
    file = path / WEIGHTS_FILE
    if not file.is_file():
        raise BitswitchError(f"{file} is missing: {FIX}")
    size = file.stat().st_size
    if size != info["weights_file_bytes"]:
        raise BitswitchError(f"{file} has {size} bytes but {INFO_FILE} records {info['weights_file_bytes']} "
                             f"(truncated or replaced): {FIX}")
    check_sha256(path, info["sha256"], INFO_FILE, FIX)
    try:
        with safe_open(str(file), framework="pt") as f:
            lazy = set(lazy) & set(f.keys())
            tensors = {k: f.get_tensor(k) for k in f.keys() if k not in lazy}
        tensors.update(stored_tensors(file, lazy))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a bad file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BitswitchError(f"{file} is corrupt or truncated ({first[:160]}): {FIX}") from None
    table = info["tensors"]
    for name in sorted(set(table) ^ set(tensors)):
        where = (f"in {INFO_FILE} but not in {WEIGHTS_FILE}" if name in table
                 else f"in {WEIGHTS_FILE} but not in {INFO_FILE}")
        raise BitswitchError(f"tensor {name!r} is {where} of {path}: the files do not match; {FIX}")
    try:
        specs = expected_specs(info)
    except (ValueError, KeyError, TypeError) as exc:
        raise BitswitchError(f"{path / INFO_FILE} is malformed ({str(exc)[:160]}): {FIX}") from None
    for name, (dtype, shape) in specs.items():
        if name not in tensors:
            raise BitswitchError(f"{WEIGHTS_FILE} of {path} lacks tensor {name!r} that {INFO_FILE} calls for: {FIX}")
        _expect(file, name, tensors[name], dtype, shape)
    for name, t in tensors.items():
        _expect(file, name, t, table[name]["dtype"], table[name]["shape"])
    return tensors


def _expect(file: Path, name: str, t: torch.Tensor, dtype: str | None, shape: list[int]) -> None:
    if list(t.shape) != list(shape) or (dtype is not None and dtype_name(t.dtype) != dtype):
        raise BitswitchError(f"tensor {name!r} in {file} is {dtype_name(t.dtype)} {list(t.shape)} but "
                             f"{INFO_FILE} calls for {dtype or 'float'} {list(shape)}: {FIX}")
