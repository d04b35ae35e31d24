"""Export a switchable model at one profile to real packed low-bit weights.

``export_model`` switches the model to the profile, packs every weight-quantized unit module's
codes (:mod:`bitswitch.quant.pack`), keeps scales, zero points, activation quantizers, calibrated
static ranges and (merge ``after``) the LoRA factors, stores everything else at fp16 or fp32, and
writes the directory described in :mod:`bitswitch.export.format` atomically: into a temporary
sibling, renamed into place at the end, so a failed export leaves nothing that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..accounting import profile_report
from ..adapters import wrapper_parameters
from ..errors import BitswitchError
from ..io import atomic_write_json, sha256_file
from ..quant.functional import scale_dtype
from ..quant.pack import code_offset, pack
from ..switching import state, unit_modules, use_profile
from .format import (FORMAT, FORMAT_VERSION, KINDS, MAP_FILE, WEIGHTS_FILE, act_entry, dtype_name,
                     theory_bytes, weight_entry, zero_dtype)

MERGES = ("after", "before")
STORE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def export_model(model: nn.Module, tokenizer, profile, out_dir: str | os.PathLike, merge: str = "after",
                 unquantized_dtype: str = "fp16", lora_dtype: str = "fp32", meta: dict | None = None) -> dict:
    """Write ``model`` (switchable, adapters optional) at ``profile`` to ``out_dir``; return the byte report.

    merge ``before``: each unit module with an active adapter stores Q(W + B A * scaling), one tensor.
    merge ``after``: it stores Q(W) and the LoRA factors apart (in ``lora_dtype``), applied at run time.
    ``out_dir`` must be new, empty, or a previous export (which is replaced).
    """
    if merge not in MERGES:
        raise BitswitchError(f"unknown merge {merge!r}: use before (adapter merged, then quantized) or "
                             "after (quantized weight + LoRA kept apart)")
    for what, value in (("unquantized dtype", unquantized_dtype), ("LoRA dtype", lora_dtype)):
        if value not in STORE_DTYPES:
            raise BitswitchError(f"unknown {what} {value!r}: use fp16 or fp32")
    out = Path(out_dir)
    _check_target(out)
    st = state(model)
    with torch.no_grad(), use_profile(model, profile) as prof:
        tensors, kinds, modules, ties = _collect(model, merge, STORE_DTYPES[unquantized_dtype],
                                                 STORE_DTYPES[lora_dtype])
        accounted = profile_report(model, prof, unquantized_bytes=STORE_DTYPES[unquantized_dtype].itemsize)
        qmap = {"format": FORMAT, "format_version": FORMAT_VERSION, "profile": prof.name,
                "units": {u: {"spec": p.spec,
                              "weight": None if p.weight is None else weight_entry(p.weight),
                              "act": None if p.act is None else act_entry(p.act)} for u, p in st.table.items()},
                "options": asdict(st.options), "merge": merge, "unquantized_dtype": unquantized_dtype,
                "lora_dtype": lora_dtype, "dtype": dtype_name(_compute_dtype(model)),
                "modules": modules,
                "tensors": {n: {"kind": kinds[n], "dtype": dtype_name(t.dtype), "shape": list(t.shape),
                                **({"module": m} if (m := _owner(n, modules)) else {})}
                            for n, t in tensors.items()},
                "ties": ties, "bytes": _bytes_by_kind(tensors, kinds),
                "avg_w_bits": accounted["avg_w_bits"], "meta": {**_versions(), **(meta or {})}}
    out.parent.mkdir(parents=True, exist_ok=True)  # the temporary sibling must be on the same file system
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE),
                  metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        _fsync(tmp / WEIGHTS_FILE)
        qmap["weights_file_bytes"] = (tmp / WEIGHTS_FILE).stat().st_size
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        qmap["sha256"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        atomic_write_json(tmp / MAP_FILE, qmap)
        _publish_modes(tmp)
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _report(out, qmap, accounted)


def _collect(model: nn.Module, merge: str, unq_dtype: torch.dtype, lora_dtype: torch.dtype):
    """The tensors to write at the current profile: ``(tensors, kinds, modules, ties)``."""
    units = list(unit_modules(model))
    wrapped = {name: mod for _, name, mod in units}
    unit_of = {name: u for u, name, _ in units}
    exported = {n: m for n, m in wrapped.items() if m.precision is not None or m.active_adapter is not None}
    adapter_ids = {id(p) for p in wrapper_parameters(model)}   # adapters, clips
    tensors: dict[str, Tensor] = {}
    kinds: dict[str, str] = {}
    ties: dict[str, str] = {}
    stored: dict[int, str] = {}  # id(parameter) -> the name it is stored under (tied ones stored once)

    def put(name: str, t: Tensor, kind: str) -> None:
        tensors[name] = t.detach().cpu().contiguous()
        kinds[name] = kind

    for pname, p in model.named_parameters(remove_duplicate=False):
        module, _, leaf = pname.rpartition(".")
        if id(p) in adapter_ids or module.removesuffix(".base") in exported:
            continue
        # a wrapped (QuantLinear) module's base parameters keep the plain model's names
        name = f"{module[:-5]}.{leaf}" if module.endswith(".base") and module[:-5] in wrapped else pname
        if id(p) in stored:
            ties[name] = stored[id(p)]
            continue
        stored[id(p)] = name
        put(name, p.to(unq_dtype), "unquantized")

    modules = {}
    for name, mod in exported.items():
        prec, adapter = mod.precision, mod.adapters[mod.active_adapter] if mod.active_adapter else None
        w = mod.weight_out_in()
        merged = merge == "before" and adapter is not None
        if merged:  # W + B A * scaling, in float32 like the adapter, then quantized as one tensor
            w = w.float() + adapter.delta_weight().float()
        wq = prec.weight if prec is not None else None
        entry = {"unit": unit_of[name], "shape": [mod.out_features, mod.in_features],
                 "weight": None if wq is None else weight_entry(wq),
                 "act": None if prec is None or prec.act is None else act_entry(prec.act),
                 "lora": None if adapter is None or merged else
                 {"r": adapter.lora_A.shape[0], "scaling": adapter.scaling}}
        if wq is not None:
            # the unit's own codes (a GPTQ rounding, a learned clip) unless the adapter was merged in;
            # a merged weight is quantized on the unit's grid (its learned clip, if any)
            codes, scale, zero = mod.quantize_like(w, wq) if merged else mod.weight_codes(wq)
            put(f"{name}.qweight", pack(codes, wq.bits, code_offset(wq.bits, wq.symmetric)), "codes")
            put(f"{name}.scales", scale.to(scale_dtype(wq.bits)), "scales")
            if zero is not None:
                put(f"{name}.zeros", zero.to(torch.int32).to(zero_dtype(wq.bits)), "zeros")
        elif not merged and id(mod.base.weight) in stored:  # a float weight tied to, e.g., the embedding
            ties[f"{name}.weight"] = stored[id(mod.base.weight)]
        else:
            put(f"{name}.weight", w.to(unq_dtype), "unquantized")
        if mod.base.bias is not None:
            put(f"{name}.bias", mod.base.bias.to(unq_dtype), "unquantized")
        if entry["lora"] is not None:
            put(f"{name}.lora_A", adapter.lora_A.to(lora_dtype), "lora")
            put(f"{name}.lora_B", adapter.lora_B.to(lora_dtype), "lora")
        if entry["act"] is not None and prec.act.mode == "tensor":
            obs = mod.observer()
            if obs is None or not obs.calibrated:
                raise BitswitchError(f"unit {unit_of[name]} uses static activation ranges that are not calibrated "
                                     "for this profile: run bitswitch.calibrate(model, batches, profile) first")
            put(f"{name}.act_range", torch.stack([obs.min_val, obs.max_val]).float(), "act_range")
        modules[name] = entry
    return tensors, kinds, modules, ties


def _owner(tensor_name: str, modules: dict) -> str | None:
    module = tensor_name.rpartition(".")[0]
    return module if module in modules else None


def _compute_dtype(model: nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _versions() -> dict:
    import transformers

    from .._version import __version__

    return {"bitswitch": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _publish_modes(directory: Path) -> None:
    """Temporary files and directories are private (0600/0700); give the export the usual modes."""
    mask = os.umask(0)
    os.umask(mask)
    directory.chmod(0o777 & ~mask)
    for f in directory.iterdir():
        f.chmod((0o777 if f.is_dir() else 0o666) & ~mask)


def _is_export(path: Path, marker: str = MAP_FILE) -> bool:
    return (path / marker).is_file()


def _check_target(out: Path, marker: str = MAP_FILE) -> None:
    """Refuse to overwrite anything but an empty directory or a previous export (a directory holding
    ``marker``: the quant map, or ``nested.json`` for a nested checkpoint)."""
    if out.exists() and not out.is_dir():
        raise BitswitchError(f"export target {str(out)!r} is a file: pass a new directory")
    if out.is_dir() and any(out.iterdir()) and not _is_export(out, marker):
        raise BitswitchError(f"export target {str(out)!r} is not empty and not a bitswitch export: "
                             "pass a new or empty directory")


def _install(tmp: Path, out: Path, marker: str = MAP_FILE) -> None:
    """Rename the finished ``tmp`` to ``out``, replacing an empty directory or a previous export."""
    _check_target(out, marker)  # again: something may have appeared while exporting
    if not out.exists():
        os.replace(tmp, out)
        return
    if not any(out.iterdir()):
        os.replace(tmp, out)  # rename(2) replaces an empty directory
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.replace(out, old / "previous")
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / "previous", out)  # put the previous export back
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def _bytes_by_kind(tensors: dict, kinds: dict) -> dict[str, int]:
    by_kind = {k: 0 for k in KINDS}
    for name, t in tensors.items():
        by_kind[kinds[name]] += t.numel() * t.element_size()
    return by_kind


def _report(out: Path, qmap: dict, accounted: dict) -> dict:
    """Bytes on disk by kind, against fp32/fp16 of the model, bits x params, and the accounting."""
    by_kind = qmap["bytes"]
    quantized = by_kind["codes"] + by_kind["scales"] + by_kind["zeros"]
    weights = quantized + by_kind["unquantized"]
    total = sum(by_kind.values())
    theory = sum(theory_bytes(e) for e in qmap["modules"].values() if e["weight"] is not None)
    extra = by_kind["lora"] + by_kind["act_range"]
    return {"out_dir": str(out), "profile": qmap["profile"], "merge": qmap["merge"],
            "unquantized_dtype": qmap["unquantized_dtype"], "bytes": by_kind, "avg_w_bits": qmap["avg_w_bits"],
            "quantized_bytes": quantized, "weight_bytes": weights, "total_bytes": total,
            "file_bytes": qmap["weights_file_bytes"],
            "fp32_bytes": accounted["fp32_weight_bytes"], "fp16_bytes": accounted["fp16_weight_bytes"],
            "vs_fp32": total / accounted["fp32_weight_bytes"], "vs_fp16": total / accounted["fp16_weight_bytes"],
            "theory_quantized_bytes": theory, "quantized_vs_theory": quantized / theory if theory else None,
            "file_vs_theory": qmap["weights_file_bytes"] / (theory + by_kind["unquantized"] + extra),
            "accounted_weight_bytes": accounted["weight_bytes"],
            "matches_accounting": weights == accounted["weight_bytes"],
            "extra_bytes": extra}
