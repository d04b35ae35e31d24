"""Build a :class:`RuntimeModel` from a switchable model, packing every profile it must hold.

Each profile becomes a *mode* of every unit, named by the profile as given: the unit's precision
under it (weights packed once per weight key, shared by every mode that uses them) and its adapter
(the one ``set_profile`` would activate on the fake-quantized model, per the model's keying). LoRA
stays unmerged and in bf16; its scaling is folded into B, and the adapters of a fused unit's modules
(Llama's q/k/v, gate/up) become one A of stacked rows and one block-diagonal B, so the fused unit
adds exactly the sum the separate modules add.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import BitswitchError
from ..switching import adapter_key, resolve_profile, state, unit_modules
from .config import arch_of
from .linear import RuntimeLinear
from .model import ROLES, Layer, RuntimeModel


def compute_dtype(kernel: str) -> torch.dtype:
    """bf16 (the kernels' fast dtype), float32 for the reference kernel."""
    return torch.float32 if kernel == "reference" else torch.bfloat16


def _fused_weight(mods, names, weight_of) -> Tensor:
    """The unit's modules' weights (out, in), rows stacked: (sum out, in) float32. ``weight_of``
    (module name -> (out, in) float32 or None) supplies the weights a hollow model does not hold."""
    ws = [weight_of(n) if weight_of is not None else None for n in names]
    ws = [m.weight_out_in().detach().float() if w is None else w for m, w in zip(mods, ws)]
    return ws[0] if len(ws) == 1 else torch.cat(ws, 0)


def _fused_codes(mods, prec):
    """The modules' own codes for ``prec``'s weight quantizer, rows stacked, when any module has
    codes of its own (a GPTQ rounding, a learned clip); None: quantize the fused weight (the same
    codes, row by row)."""
    cfg = prec.weight
    if cfg is None or not any(_own_codes(m, cfg) for m in mods):
        return None
    parts = [m.weight_codes(cfg) for m in mods]
    if len(parts) == 1:
        return parts[0]
    zeros = [z for _, _, z in parts]
    return (torch.cat([c for c, _, _ in parts], 0), torch.cat([s for _, s, _ in parts], 0),
            None if zeros[0] is None else torch.cat(zeros, 0))


def _own_codes(mod, cfg) -> bool:
    own = getattr(mod, "has_own_codes", None)
    return own(cfg) if own is not None else getattr(mod, "has_rounding", lambda c: False)(cfg)


def _fused_bias(mods) -> Tensor | None:
    biases = [m.base.bias for m in mods]
    if all(b is None for b in biases):
        return None
    return torch.cat([b.detach().float() if b is not None else torch.zeros(m.out_features)
                      for b, m in zip(biases, mods)])


def _fused_lora(mods, key: str, dtype: torch.dtype) -> tuple[Tensor, Tensor] | None:
    """A (sum r, in) and block-diagonal B * scaling (sum out, sum r) in ``dtype``; None if no module has ``key``."""
    have = [key in m.adapters for m in mods]
    if not any(have):
        return None
    if not all(have):
        raise BitswitchError(f"adapter {key!r} exists on some modules of a unit but not all: the checkpoint "
                             "is inconsistent; retrain or re-export the adapters")
    ads = [m.adapters[key] for m in mods]
    a = torch.cat([ad.lora_A.detach().float() for ad in ads], 0)
    b = torch.block_diag(*[ad.lora_B.detach().float() * ad.scaling for ad in ads])
    return a.to(dtype).contiguous(), b.to(dtype).contiguous()


def _unit(mods, names, options, modes: dict, kernel: str, lora_cache: dict, weight_of=None) -> RuntimeLinear:
    """One RuntimeLinear holding every mode ``{name: (UnitPrecision, adapter key | None)}``."""
    w = _fused_weight(mods, names, weight_of)
    dtype = compute_dtype(kernel)
    unit = RuntimeLinear(w.shape[1], w.shape[0], _fused_bias(mods), options, dtype)
    for name, (prec, key) in modes.items():
        unit.add_precision(name, prec, w, kernel, _fused_codes(mods, prec))
        if key is not None:
            if key not in lora_cache:   # one bf16 copy per adapter, shared by the modes that use it
                lora_cache[key] = _fused_lora(mods, key, dtype)
            if lora_cache[key] is not None:
                unit.add_lora(name, *lora_cache[key], scaling=1.0)
    unit.active = next(iter(modes))
    return unit


def _norm(mod: nn.Module) -> tuple[Tensor, Tensor | None]:
    w = mod.weight.detach().float().clone()
    b = getattr(mod, "bias", None)
    return w, None if b is None else b.detach().float().clone()


def build_runtime_model(model: nn.Module, profiles: list[str], kernel: str = "auto", weight_of=None) -> RuntimeModel:
    """Pack ``model`` (made switchable, adapters loaded) at every profile of ``profiles``; the
    first is active. One-line errors for a profile the runtime cannot run (static activation ranges).

    weight_of: module name -> its (out, in) float32 weight, or None to read the module's own; how a
    hollow nested model (:func:`bitswitch.export.nested_reader.load_nested_model`) is packed one unit
    at a time without its float weights ever being in memory together."""
    st = state(model)
    if not profiles:
        raise BitswitchError("the runtime needs at least one profile, e.g. ['w4g32']")
    arch = arch_of(model.config)
    tables = {}
    for p in profiles:
        prof, table = resolve_profile(model, p)
        tables[p] = (prof, table)
    mods_by_unit: dict[str, list] = {}
    names_by_unit: dict[str, list] = {}
    for unit, name, mod in unit_modules(model):
        mods_by_unit.setdefault(unit, []).append(mod)
        names_by_unit.setdefault(unit, []).append(name)
    if "head" not in mods_by_unit:
        raise BitswitchError("the runtime needs the model's LM head as a unit (lm_head)")
    if arch.kind == "gpt2":
        tr = model.transformer
        embed, wpe = tr.wte.weight, tr.wpe.weight.detach().to(compute_dtype(kernel)).contiguous()
        blocks, final = tr.h, tr.ln_f
        norm_names = ("ln_1", "ln_2")
    else:
        embed, wpe = model.model.embed_tokens.weight, None
        blocks, final = model.model.layers, model.model.norm
        norm_names = ("input_layernorm", "post_attention_layernorm")
    embed_c = embed.detach().to(compute_dtype(kernel)).contiguous()
    tied = model.get_submodule(st.units["head"][0]).base.weight is embed
    units: dict[str, RuntimeLinear] = {}
    for unit, mods in mods_by_unit.items():
        modes = {}
        for p, (prof, table) in tables.items():
            prec = table[unit]
            modes[p] = (prec, adapter_key(st.keying, prof, prec) if st.adapters_on else None)
        weights = weight_of
        if unit == "head" and tied and all(prec.weight is None for prec, _ in modes.values()):
            # an fp head tied to the embedding is the embedding: no float32 copy of (vocab, d) to pack
            weights = lambda name: embed_c   # noqa: E731
        units[unit] = _unit(mods, names_by_unit[unit], st.options, modes, kernel, {}, weights)
    layers = []
    for i, block in enumerate(blocks):
        (w1, b1), (w2, b2) = (_norm(block.get_submodule(n)) for n in norm_names)
        norms = {"in_w": w1, "post_w": w2, **({"in_b": b1, "post_b": b2} if b1 is not None else {})}
        layers.append(Layer({r: units[f"L{i}.{r}"] for r in ROLES}, norms))
    fw, fb = _norm(final)
    head = units["head"]
    if tied:   # the fp head is the embedding
        for key, packed in head.weights.items():
            if packed.kind in ("bf16", "float32") and packed.weight.dtype == embed_c.dtype:
                packed.weight = embed_c
    return RuntimeModel(arch, embed_c, layers, {"w": fw, **({"b": fb} if fb is not None else {})}, head, wpe)
