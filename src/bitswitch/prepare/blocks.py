"""Running a model one block at a time: catch block 0's inputs, re-run a block alone on them, and
name a block's units. What block-by-block calibration (GPTQ, reconstruction) shares."""

from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import BitswitchError
from ..quant.config import WeightQuant
from ..switching import resolve_profile, state

_UNIT = re.compile(r"L(\d+)\.")


class _Caught(Exception):
    """Raised by the hook that catches block 0's inputs: nothing after it needs to run."""


def catch_block_inputs(model: nn.Module, blocks, batches) -> list[tuple[torch.Tensor, dict]]:
    """Block 0's (hidden states, keyword arguments) for each calibration batch: what the model hands
    its blocks (attention mask, positions, rotary embeddings), so a block can be re-run alone."""
    caught = []

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "past_key_value", "layer_past")}
        caught.append((hidden.detach(), kwargs))
        raise _Caught

    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for ids in batches:
                try:
                    model(ids.to(device), use_cache=False)
                except _Caught:
                    pass
    finally:
        handle.remove()
    return caught


def run_block(block: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    out = block(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def layer_units(model: nn.Module, layer: int) -> list[str]:
    return [u for u in state(model).units if (m := _UNIT.match(u)) and int(m.group(1)) == layer]


def block_quantizers(model: nn.Module, profiles, check) -> dict[WeightQuant, list[str]]:
    """``{WeightQuant: [block unit, ...]}``: which block units each weight quantizer of ``profiles``
    covers at 2-8 bits (16-bit weights round to nearest near-exactly; the LM head keeps round to
    nearest). ``check(cfg)`` raises ValueError for a quantizer the caller cannot round on; it becomes a
    one-line BitswitchError naming the profile."""
    found: dict[WeightQuant, list[str]] = {}
    for profile in profiles:
        _, table = resolve_profile(model, profile)
        for unit, prec in table.items():
            cfg = prec.weight
            if cfg is None or cfg.bits > 8 or unit == "head":
                continue
            try:
                check(cfg)
            except ValueError as exc:
                raise BitswitchError(f"profile {profile!r}: {exc}") from None
            units = found.setdefault(cfg, [])
            if unit not in units:
                units.append(unit)
    return found


def weight_spec(cfg: WeightQuant) -> str:
    """The weights-only profile spec of ``cfg`` (``w4g32``); the model's options give back ``cfg``."""
    return f"w{cfg.bits}" + (f"g{cfg.group_size}" if cfg.group_size else "")
