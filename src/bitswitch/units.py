"""Architecture adapters: find the quantizable linear layers of a causal LM's blocks.

A *unit* is what a profile addresses: ``L{layer}.{role}`` with role one of ``attn_in``,
``attn_out``, ``mlp_in``, ``mlp_out``, plus ``head`` for the LM head. A unit groups one or more
modules that always share a precision (Llama's q/k/v projections form ``attn_in``).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from .errors import BitswitchError

ROLES = ("attn_in", "attn_out", "mlp_in", "mlp_out")
HEAD = "head"
SUPPORTED = "GPT-2 (transformers Conv1D blocks) and Llama-style blocks (llama, mistral, qwen2, ... with q/k/v/o_proj and gate/up/down_proj)"

# Relative module names inside one block, per role.
_GPT2_ROLES = {"attn_in": ("attn.c_attn",), "attn_out": ("attn.c_proj",),
               "mlp_in": ("mlp.c_fc",), "mlp_out": ("mlp.c_proj",)}
_LLAMA_ROLES = {"attn_in": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                "attn_out": ("self_attn.o_proj",),
                "mlp_in": ("mlp.gate_proj", "mlp.up_proj"), "mlp_out": ("mlp.down_proj",)}


def _blocks(model: nn.Module):
    """(prefix of the block list, block list, role table) or None if the layout is unknown."""
    for prefix, roles in (("transformer.h", _GPT2_ROLES), ("model.layers", _LLAMA_ROLES)):
        try:
            blocks = model.get_submodule(prefix)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks) > 0:
            block = blocks[0]
            if all(_has(block, name) for names in roles.values() for name in names):
                return prefix, blocks, roles
    return None


def block_list(model: nn.Module):
    """``(prefix, blocks, role table)`` of a supported model (its decoder blocks, in order)."""
    found = _blocks(model)
    if found is None:
        check_supported(model)
    return found


def _has(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def check_supported(model: nn.Module) -> None:
    if _blocks(model) is None:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise BitswitchError(f"model type {kind!r} is not supported: bitswitch supports {SUPPORTED}")


def find_units(model: nn.Module) -> "OrderedDict[str, list[str]]":
    """Map canonical unit names to the full module names they cover, in model order.

    ``gpt2`` gives 48 block units (12 layers x 4 roles) plus ``head``.
    """
    found = _blocks(model)
    if found is None:
        check_supported(model)
    prefix, blocks, roles = found
    units: OrderedDict[str, list[str]] = OrderedDict()
    for i in range(len(blocks)):
        for role in ROLES:
            units[f"L{i}.{role}"] = [f"{prefix}.{i}.{rel}" for rel in roles[role]]
    if _has(model, "lm_head"):
        units[HEAD] = ["lm_head"]
    return units
