"""Running a model one block at a time: catch block 0's inputs, re-run a block alone on them, and
name a block's units. What block-by-block calibration (GPTQ, reconstruction) shares."""

from __future__ import annotations

import re

import torch
from torch import nn

from ..switching import state

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
