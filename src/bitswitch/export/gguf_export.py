"""Export a switchable model at one profile as llama.cpp files: ``model.gguf`` (+ ``adapter.gguf``).

``model.gguf``: every weight-quantized unit module in its llama.cpp type (Q8_0, Q4_0, Q4_1, Q5_0,
Q5_1: the profile's width on the gguf grid, so a mixed profile gives a mixed-type file), quantized
by gguf-py's own ``gguf.quants.quantize`` from the float weight -- the grid bitswitch fake-quantizes
on (:mod:`bitswitch.quant.gguf_grid`), so llama.cpp runs exactly the weights bitswitch trained
against. Norms and biases are F32; embeddings and the weights of fp units F16 or F32
(``unquantized_dtype``). Names are llama.cpp's, Llama's q/k rows in its rotary order
(:mod:`bitswitch.export.gguf_arch`). Metadata and tokenizer are copied from a source GGUF
(``source_gguf``, SmolLM2) or built from the transformers config and tokenizer
(:mod:`bitswitch.export.gguf_meta`).

``adapter.gguf`` (when the profile activates adapters): the active LoRA of every unit module as a
llama.cpp LoRA adapter (``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``,
``<tensor>.lora_a`` (r, in) / ``.lora_b`` (out, r), q/k rows of B permuted like the base). llama.cpp
adds ``alpha / r * B A x`` to the quantized base's output: the merge-after semantics bitswitch
trains with. Activation quantizers are not part of GGUF: llama.cpp quantizes activations its own
way (on the CPU, q8 blocks of 32 for these types: what ``a8`` on the gguf grid, ActQuant mode
``q8_0``, fake-quantizes).

Files go into a temporary sibling directory renamed into place at the end, with ``gguf_export.json``
(profile, per-unit types, sha256 of every file).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..accounting import profile_report
from ..adapters import wrapper_parameters
from ..errors import BitswitchError
from ..io import atomic_write_json, sha256_file
from ..quant.gguf_grid import gguf_type
from ..switching import state, unit_modules, use_profile
from .gguf_arch import add_hparams, gguf_arch, name_map, permute_rows, rotary_heads, tensor_name
from .gguf_meta import add_vocab, copy_metadata

MODEL_FILE = "model.gguf"
ADAPTER_FILE = "adapter.gguf"
MANIFEST = "gguf_export.json"
FORMAT = "bitswitch-gguf"
STORE_DTYPES = {"fp16": np.float16, "fp32": np.float32}
#: llama.cpp's general.file_type for a file mostly of one type (LlamaFileType)
FILE_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9}


def export_gguf(model: nn.Module, tokenizer, profile, out_dir: str | os.PathLike, unquantized_dtype: str = "fp16",
                lora_dtype: str = "fp32", source_gguf: str | None = None, meta: dict | None = None) -> dict:
    """Write ``model`` (switchable) at ``profile`` to ``out_dir`` as GGUF; return a report (files, bytes,
    tensor types, per-unit types, the adapter's alpha and rank). ``out_dir`` must be new, empty, or a
    previous GGUF export (which is replaced)."""
    import gguf

    for what, value in (("unquantized dtype", unquantized_dtype), ("LoRA dtype", lora_dtype)):
        if value not in STORE_DTYPES:
            raise BitswitchError(f"unknown {what} {value!r}: use fp16 or fp32")
    arch = gguf_arch(model.config)
    out = Path(out_dir)
    _check_target(out)
    with torch.no_grad(), use_profile(model, profile) as prof:
        table = dict(state(model).table)
        _check_types(prof.name, table)
        tensors, unit_types = _collect(model, arch, STORE_DTYPES[unquantized_dtype])
        loras, alpha = _collect_loras(model, arch, STORE_DTYPES[lora_dtype])
        accounted = profile_report(model, prof)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    quantized = [t[2].name for t in tensors if t[2] is not None]
    ftype = FILE_TYPES[Counter(quantized).most_common(1)[0][0]] if quantized else \
        (gguf.LlamaFileType.MOSTLY_F16 if unquantized_dtype == "fp16" else gguf.LlamaFileType.ALL_F32)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        writer = gguf.GGUFWriter(str(tmp / MODEL_FILE), arch)
        writer.add_type(gguf.GGUFType.MODEL)
        if source_gguf:
            blocks = model.config.num_hidden_layers if arch == "llama" else model.config.n_layer
            width = model.get_input_embeddings().weight.shape[1]
            copy_metadata(writer, source_gguf, {f"{arch}.block_count": blocks, f"{arch}.embedding_length": width})
        else:
            writer.add_name(str(getattr(model.config, "_name_or_path", "") or "bitswitch export"))
            add_hparams(writer, arch, model.config, n_vocab)
            add_vocab(writer, tokenizer, n_vocab)
        writer.add_file_type(int(ftype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        for name, data, qtype in tensors:
            writer.add_tensor(name, data, raw_dtype=qtype)
        _write(writer)
        if loras:
            writer = gguf.GGUFWriter(str(tmp / ADAPTER_FILE), arch)
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            for name, data in loras:
                writer.add_tensor(name, data)
            _write(writer)
        types = Counter(("F32" if d.dtype == np.float32 else "F16") if q is None else q.name for _, d, q in tensors)
        quantized_bytes = sum(d.nbytes for _, d, q in tensors if q is not None)
        manifest = {"format": FORMAT, "profile": prof.name, "arch": arch, "units": unit_types,
                    "tensor_types": dict(types), "unquantized_dtype": unquantized_dtype, "lora_dtype": lora_dtype,
                    "adapter": None if not loras else {"alpha": alpha, "tensors": len(loras)},
                    "source_gguf": os.path.basename(source_gguf) if source_gguf else None,
                    "sha256": {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}, "meta": meta or {}}
        atomic_write_json(tmp / MANIFEST, manifest)
        _publish_modes(tmp)
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out_dir": str(out), "profile": prof.name, "arch": arch, "units": unit_types,
            "tensor_types": dict(types), "adapter": manifest["adapter"],
            "files": {f.name: f.stat().st_size for f in sorted(out.iterdir())},
            "quantized_bytes": quantized_bytes, "accounted_quantized_bytes": accounted["quantized_bytes"],
            "matches_accounting": quantized_bytes == accounted["quantized_bytes"],
            "fp16_bytes": accounted["fp16_weight_bytes"], "fp32_bytes": accounted["fp32_weight_bytes"],
            "act_modes": {u: p.act.mode for u, p in table.items() if p.act is not None}}


def _check_types(profile: str, table: dict) -> None:
    """Every weight-quantized unit must be on the gguf grid (a llama.cpp type); else one line naming them."""
    bad = [u for u, p in table.items() if p.weight is not None and p.weight.grid != "gguf"]
    if bad:
        shown = ", ".join(bad[:4]) + (f", ... ({len(bad)} units)" if len(bad) > 4 else "")
        raise BitswitchError(f"profile {profile!r} has no GGUF type for {shown}: GGUF holds Q8_0, Q4_0/Q4_1 and "
                             "Q5_0/Q5_1 on the gguf grid; quantize with --weight-grid gguf at w4, w5 or w8, "
                             "or keep those units fp")


def _collect(model: nn.Module, arch: str, unq_dtype) -> tuple[list, dict[str, str]]:
    """``([(gguf name, array, GGMLQuantizationType | None)], {unit: type})`` at the current profile."""
    import gguf

    config = model.config
    names = name_map(arch, config.num_hidden_layers if arch == "llama" else config.n_layer)
    wrapped = {name: (unit, mod) for unit, name, mod in unit_modules(model)}
    adapter_ids = {id(p) for p in wrapper_parameters(model)}   # adapters, clips
    tensors, unit_types, seen = [], {}, set()
    for pname, p in model.named_parameters(remove_duplicate=False):
        if id(p) in adapter_ids:
            continue
        module, _, leaf = pname.rpartition(".")
        hf_module = module[:-5] if module.endswith(".base") and module[:-5] in wrapped else module
        unit, mod = wrapped.get(hf_module, (None, None))
        is_unit_weight = mod is not None and leaf == "weight"
        cfg = mod.precision.weight if is_unit_weight and mod.precision is not None else None
        if id(p) in seen and not (is_unit_weight and (cfg is not None or mod.active_adapter is not None)):
            continue  # tied (GPT-2's and SmolLM2's head): llama.cpp reads token_embd when output is absent
        seen.add(id(p))
        name = tensor_name(names, f"{hf_module}.{leaf}")
        w = (mod.weight_out_in() if is_unit_weight else p).detach().float().cpu().numpy()
        heads = rotary_heads(arch, name, config)
        if heads:
            w = permute_rows(w, heads)
        if cfg is not None:
            qtype = gguf.GGMLQuantizationType[gguf_type(cfg.bits, cfg.symmetric)]
            tensors.append((name, gguf.quants.quantize(w, qtype), qtype))
        else:
            tensors.append((name, np.ascontiguousarray(w.astype(np.float32 if w.ndim == 1 else unq_dtype)), None))
        if is_unit_weight:
            unit_types.setdefault(unit, tensors[-1][2].name if cfg is not None else
                                  ("F32" if tensors[-1][1].dtype == np.float32 else "F16"))
    return tensors, unit_types


def _collect_loras(model: nn.Module, arch: str, lora_dtype) -> tuple[list, float | None]:
    """``([(name.lora_a, (r, in)), (name.lora_b, (out, r)), ...], alpha)`` of the active adapters."""
    config = model.config
    names = name_map(arch, config.num_hidden_layers if arch == "llama" else config.n_layer)
    loras, alphas = [], []
    for unit, name, mod in unit_modules(model):
        if mod.active_adapter is None:
            continue
        ad = mod.adapters[mod.active_adapter]
        base = tensor_name(names, f"{name}.weight")
        a = ad.lora_A.detach().float().cpu().numpy()
        b = ad.lora_B.detach().float().cpu().numpy()
        heads = rotary_heads(arch, base, config)
        if heads:
            b = permute_rows(b, heads)
        loras += [(f"{base}.lora_a", np.ascontiguousarray(a.astype(lora_dtype))),
                  (f"{base}.lora_b", np.ascontiguousarray(b.astype(lora_dtype)))]
        alphas.append((unit, ad.scaling * a.shape[0]))
    if not alphas:
        return [], None
    alpha = alphas[0][1]
    odd = [u for u, x in alphas if not math.isclose(x, alpha, rel_tol=1e-6)]
    if odd:  # llama.cpp scales every tensor by one alpha / its rank
        raise BitswitchError(f"a GGUF adapter has one LoRA alpha, but the adapters of {', '.join(odd[:4])} have "
                             f"alpha {dict(alphas)[odd[0]]:g} against {alpha:g}: train them with one alpha")
    return loras, float(alpha)


def _write(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open(writer.path, "rb") as f:
        os.fsync(f.fileno())


def _publish_modes(directory: Path) -> None:
    """Temporary directories are private (0700); give the export the usual modes."""
    mask = os.umask(0)
    os.umask(mask)
    directory.chmod(0o777 & ~mask)
    for f in directory.iterdir():
        f.chmod(0o666 & ~mask)


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise BitswitchError(f"export target {str(out)!r} is a file: pass a new directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BitswitchError(f"export target {str(out)!r} is not empty and not a GGUF export: "
                             "pass a new or empty directory")


def _install(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``, replacing an empty directory or a previous GGUF export."""
    _check_target(out)
    if out.exists() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "previous")
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old / "previous", out)
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(tmp, out)
