"""Exact weight-memory accounting of a profile on a model.

``weight_bytes`` counts every parameter of the model once (tied weights once): quantized unit
weights as packed codes + scales + zero points (:func:`~bitswitch.profiles.quantized_tensor_bytes`),
everything else (embeddings, norms, biases, units left in fp) at ``unquantized_bytes`` per
parameter (2 = fp16, what export writes by default). ``avg_w_bits`` averages the unit weights'
bits with fp counted as 16, over the block units (and ``head`` when the profile quantizes it).
"""

from __future__ import annotations

from torch import nn

from .adapters import wrapper_parameters
from .profiles import quantized_tensor_bytes
from .switching import resolve_profile, unit_modules


def _shape(mod: nn.Module) -> tuple[int, int]:
    return mod.out_features, mod.in_features


def profile_report(model: nn.Module, profile, unquantized_bytes: int = 2) -> dict:
    """Per-unit table and byte totals of ``profile`` on a switchable ``model``.

    Returns ``{"profile", "units": [{name, module, w_bits, a_bits, params}], "avg_w_bits",
    "weight_bytes", "quantized_bytes", "unquantized_bytes", "fp16_weight_bytes", "fp32_weight_bytes"}``.
    """
    prof, table = resolve_profile(model, profile)
    rows, quantized_ids = [], set()
    qbytes = bits_x_params = counted_params = 0
    for unit, name, mod in unit_modules(model):
        prec = table[unit]
        out_f, in_f = _shape(mod)
        params = out_f * in_f
        w = prec.weight
        rows.append({"name": unit, "module": name, "w_bits": w.bits if w else None,
                     "group_size": w.group_size if w else None,
                     "a_bits": prec.act.bits if prec.act else None, "params": params})
        if unit != "head" or w is not None:
            bits_x_params += (w.bits if w else 16) * params
            counted_params += params
        if w is not None:
            qbytes += sum(quantized_tensor_bytes(out_f, in_f, w).values())
            quantized_ids.add(id(mod.base.weight))
    adapter_ids = {id(p) for p in wrapper_parameters(model)}   # adapters, clips
    total_params = unq = 0
    for p in model.parameters():  # parameters() yields a tied tensor once
        if id(p) in adapter_ids:
            continue
        total_params += p.numel()
        if id(p) not in quantized_ids:
            unq += p.numel()
    unq += _tied_head_embedding(model, table, quantized_ids)
    return {"profile": prof.name, "units": rows,
            "avg_w_bits": bits_x_params / counted_params if counted_params else 16.0,
            "weight_bytes": qbytes + unq * unquantized_bytes,
            "quantized_bytes": qbytes, "unquantized_bytes": unq * unquantized_bytes,
            "fp16_weight_bytes": total_params * 2, "fp32_weight_bytes": total_params * 4}


def _tied_head_embedding(model, table, quantized_ids) -> int:
    """A quantized head tied to the input embedding still needs the embedding in full precision."""
    emb = model.get_input_embeddings()
    if table.get("head") is not None and table["head"].weight is not None and id(emb.weight) in quantized_ids:
        return emb.weight.numel()
    return 0
