"""Write a nested checkpoint: one int8 master per block-unit weight, every width sliced from it.

    model, tok = load_switchable("smollm2-135m", adapters="runs/a", options=QuantOptions(group_size=32))
    report = export_nested(model, tok, "out/nested")
    model, tok = load_nested_model("out/nested")         # switchable, weight grid "nested"

The directory (:mod:`bitswitch.export.nested_format`) is written into a temporary sibling and
renamed into place (the helpers of :mod:`bitswitch.export.writer`), so a failed write leaves
nothing that looks complete. Its weights take the bytes of the 8-bit model of the same group size
(codes + fp16 scales + the unquantized parameters), byte for byte; the adapters come on top.
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
from ..adapters import AdapterConfig, adapter_state_dict, wrapper_parameters
from ..errors import BitswitchError
from ..io import atomic_write_json, sha256_file
from ..profiles import QuantOptions
from ..quant.functional import dequantize_weight, quantize_weight
from ..results import markdown_table
from ..switching import state, unit_modules
from ..units import HEAD
from .nested_format import (FORMAT, FORMAT_VERSION, INFO_FILE, KINDS, SEP, STORE_DTYPES, WEIGHTS_FILE, dtype_name,
                            master_quant)
from .writer import _check_target, _compute_dtype, _fsync, _install, _publish_modes, _versions


def stable_master(w: Tensor, group_size: int | None) -> tuple[Tensor, Tensor, int]:
    """The int8 master of a weight ``w`` (out, in): ``(codes int8 (out, in), scales fp16 (out, groups),
    restabilized groups)``.

    It is ``quantize_weight(w, master_quant(group_size))``, and re-quantizing its dequantized weight
    ``codes * scales`` (float32) gives it back bitwise: the largest code of a group is +-127, so the
    group's amax is ``127 * s`` exactly and ``s`` comes back. That fails only where ``amax / 127``
    is an fp16 subnormal (group amax below 127 * 2^-14 ~ 0.0078, never seen on real models), whose
    scale loses relative precision so the largest code can be 126. Those groups take the master of
    the dequantized weight instead, a fixed point after one step; their count is returned (0 on
    SmolLM2-135M per channel and at group 32), so a loaded checkpoint always runs the stored codes.
    """
    cfg = master_quant(group_size)
    codes, scale, _ = quantize_weight(w, cfg)
    again, scale2, _ = quantize_weight(dequantize_weight(codes, scale, None, cfg), cfg)
    moved = _groups_changed(codes, again, scale, scale2, group_size)
    if moved:
        codes, scale = again, scale2
        third, scale3, _ = quantize_weight(dequantize_weight(codes, scale, None, cfg), cfg)
        if _groups_changed(codes, third, scale, scale3, group_size):
            raise BitswitchError("the int8 master of a weight does not reach a fixed point under "
                                 "re-quantization: please report this with the model")
    return codes.to(torch.int8), scale.to(torch.float16), moved


def _groups_changed(a: Tensor, b: Tensor, sa: Tensor, sb: Tensor, group_size: int | None) -> int:
    out, inp = a.shape
    g = group_size or inp
    return int(((a != b).reshape(out, inp // g, g).any(-1) | (sa != sb)).sum())


def export_nested(model: nn.Module, tokenizer, out_dir: str | os.PathLike, unquantized_dtype: str = "bf16",
                  lora_dtype: str = "bf16", adapter_source: dict | None = None, meta: dict | None = None) -> dict:
    """Write switchable ``model`` (adapters optional) as a nested checkpoint in ``out_dir``; return the report.

    The masters take the model's group size (``QuantOptions.group_size``; None = per channel).
    ``adapter_source``: the ``adapter_config.json`` the adapters came from
    (:func:`~bitswitch.adapters.read_adapter_config`), whose ``profiles`` and ``options`` say what
    they were trained for. ``out_dir`` must be new, empty, or a previous nested checkpoint (replaced).
    """
    for what, value in (("unquantized dtype", unquantized_dtype), ("LoRA dtype", lora_dtype)):
        if value not in STORE_DTYPES:
            raise BitswitchError(f"unknown {what} {value!r}: use {', '.join(STORE_DTYPES)}")
    st = state(model)
    options = QuantOptions(**{**asdict(st.options), "weight_grid": "nested"})   # refuses asymmetric / log
    group = options.group_size
    out = Path(out_dir)
    _check_target(out, INFO_FILE)
    with torch.no_grad():
        tensors, kinds, ties, units, masters, restabilized = _collect(model, group, STORE_DTYPES[unquantized_dtype],
                                                                      STORE_DTYPES[lora_dtype])
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "group_size": group,
            "master": {"bits": 8, "symmetric": True, "method": "uniform", "scale_dtype": "float16"},
            "options": asdict(options), "units": units, "masters": masters,
            "adapters": _adapter_meta(model, adapter_source),
            "unquantized_dtype": unquantized_dtype, "lora_dtype": lora_dtype,
            "dtype": dtype_name(_compute_dtype(model)),
            "tensors": {n: {"kind": kinds[n], "dtype": dtype_name(t.dtype), "shape": list(t.shape)}
                        for n, t in tensors.items()},
            "ties": ties, "bytes": {k: sum(t.numel() * t.element_size() for n, t in tensors.items() if kinds[n] == k)
                                    for k in KINDS},
            "restabilized_groups": restabilized, "meta": {**_versions(), **(meta or {})}}
    out.parent.mkdir(parents=True, exist_ok=True)  # the temporary sibling must be on the same file system
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
        _fsync(tmp / WEIGHTS_FILE)
        info["weights_file_bytes"] = (tmp / WEIGHTS_FILE).stat().st_size
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info["sha256"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        atomic_write_json(tmp / INFO_FILE, info)
        _publish_modes(tmp)
        _install(tmp, out, INFO_FILE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _report(model, out, info)


def _collect(model: nn.Module, group: int | None, unq_dtype: torch.dtype, lora_dtype: torch.dtype):
    """``(tensors, kinds, ties, units, masters, restabilized groups)`` of a switchable model."""
    units: dict[str, dict[str, list[int]]] = {}
    wrapped, masters = set(), {}
    if any(mod.clips for _, _, mod in unit_modules(model)):
        raise BitswitchError("these adapters carry learned clips, which belong to the independent weight grid; "
                             "the nested checkpoint slices every width from one round-to-nearest int8 master: "
                             "export the profiles with bitswitch export (no --nested), or train without learn_clip")
    for unit, name, mod in unit_modules(model):
        units.setdefault(unit, {})[name] = [mod.out_features, mod.in_features]
        wrapped.add(name)
        if unit != HEAD:   # the head stays a float parameter (tied to the embedding in GPT-2, SmolLM2)
            if group is not None and mod.in_features % group:
                raise BitswitchError(f"group size {group} does not divide the {mod.in_features} input columns of "
                                     f"unit {unit}: use a divisor of {mod.in_features}")
            masters[name] = mod
    tensors: dict[str, Tensor] = {}
    kinds: dict[str, str] = {}
    ties: dict[str, str] = {}
    stored: dict[int, str] = {}   # id(parameter) -> the name it is stored under (tied ones once)

    def put(name: str, t: Tensor, kind: str) -> None:
        tensors[name] = t.detach().cpu().contiguous()
        kinds[name] = kind

    adapter_ids = {id(p) for p in wrapper_parameters(model)}   # adapters, clips
    for pname, p in model.named_parameters(remove_duplicate=False):
        module, _, leaf = pname.rpartition(".")
        if id(p) in adapter_ids:
            continue
        # a wrapped (QuantLinear) module's base parameters keep the plain model's names
        plain = module[:-5] if module.endswith(".base") and module[:-5] in wrapped else module
        if plain in masters and leaf == "weight":
            continue
        name = f"{plain}.{leaf}" if plain else leaf
        if id(p) in stored:
            ties[name] = stored[id(p)]
            continue
        stored[id(p)] = name
        put(name, p.to(unq_dtype), "unquantized")
    restabilized = 0
    for name, mod in masters.items():
        codes, scales, moved = stable_master(mod.weight_out_in().detach(), group)
        put(f"{name}.codes", codes, "codes")
        put(f"{name}.scales", scales, "scales")
        restabilized += moved
    for name, t in adapter_state_dict(model).items():   # float32; observers' ranges stay float32
        is_range = name.split(SEP)[1] == "obs"
        put(name, t if is_range else t.to(lora_dtype), "act_range" if is_range else "lora")
    return tensors, kinds, ties, units, list(masters), restabilized


def _adapter_meta(model: nn.Module, source: dict | None) -> dict | None:
    """What the adapters are: keying, config, options and profiles they were trained with (from their
    ``adapter_config.json`` when given), and per key its rank, scaling and module count."""
    st = state(model)
    keys: dict[str, dict] = {}
    observers = set()
    for _, _, mod in unit_modules(model):
        for key, ad in mod.adapters.items():
            entry = keys.setdefault(key, {"r": ad.lora_A.shape[0], "scaling": ad.scaling, "modules": 0})
            entry["modules"] += 1
        observers |= {key for key, obs in mod.observers.items() if obs.calibrated}
    if not keys and not observers:
        return None
    source = source or {}
    return {"keying": st.keying, "adapter": asdict(st.adapter_config or AdapterConfig()),
            "options": source.get("options", asdict(st.options)), "profiles": source.get("profiles", {}),
            "keys": keys, "observers": sorted(observers)}


def _report(model: nn.Module, out: Path, info: dict) -> dict:
    """Bytes by kind and on disk, against fp32 / fp16 and the 8-bit model of the same group size
    (``profile_report`` of ``w8`` with the unquantized parameters at the stored dtype's size)."""
    by_kind = info["bytes"]
    w8 = profile_report(model, "w8", unquantized_bytes=STORE_DTYPES[info["unquantized_dtype"]].itemsize)
    weights = by_kind["codes"] + by_kind["scales"] + by_kind["unquantized"]
    file_bytes = info["weights_file_bytes"]
    return {"out_dir": str(out), "group_size": info["group_size"], "bytes": by_kind,
            "weight_bytes": weights, "total_bytes": sum(by_kind.values()), "file_bytes": file_bytes,
            "fp32_bytes": w8["fp32_weight_bytes"], "fp16_bytes": w8["fp16_weight_bytes"],
            "w8_bytes": w8["weight_bytes"], "matches_w8": weights == w8["weight_bytes"],
            "vs_fp32": file_bytes / w8["fp32_weight_bytes"], "vs_fp16": file_bytes / w8["fp16_weight_bytes"],
            "vs_w8": file_bytes / w8["weight_bytes"], "masters": len(info["masters"]),
            "adapter_keys": sorted((info["adapters"] or {}).get("keys", {})),
            "restabilized_groups": info["restabilized_groups"]}


def report_table(rep: dict) -> str:
    """The bytes by kind, then the file against fp32, fp16 and the 8-bit model (what the CLI prints)."""
    w8 = "w8" if rep["group_size"] is None else f"w8g{rep['group_size']}"
    rows = [{"kind": k, "bytes": v} for k, v in rep["bytes"].items()]
    rows += [{"kind": "model.safetensors", "bytes": rep["file_bytes"]},
             {"kind": "fp32 model", "bytes": rep["fp32_bytes"]}, {"kind": "fp16 model", "bytes": rep["fp16_bytes"]},
             {"kind": f"8-bit model ({w8})", "bytes": rep["w8_bytes"]}]
    group = "per channel" if rep["group_size"] is None else f"group {rep['group_size']}"
    return (markdown_table(rows, ["kind", "bytes"])
            + f"\n\nnested checkpoint ({rep['masters']} int8 masters, {group}, adapters: "
              f"{', '.join(rep['adapter_keys']) or 'none'}) in {rep['out_dir']}: {rep['file_bytes']:,} bytes on disk = "
              f"{rep['vs_fp32']:.1%} of fp32, {rep['vs_fp16']:.1%} of fp16, {rep['vs_w8']:.1%} of the 8-bit model; "
              f"weights equal the 8-bit model's bytes: {rep['matches_w8']}")
