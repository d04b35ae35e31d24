"""Layer-prefix replay: measure a change in block ``L`` without recomputing blocks ``0 .. L-1``.

Sensitivity measurement changes one unit (or one block) at a time and runs the same inputs again.
Blocks before the changed one see exactly the base profile, so their outputs are those of the base
run: :class:`PrefixRecorder` keeps every block's input hidden states, (B, T, H) per forward call,
from one base pass, and :func:`replay_from` makes blocks ``< L`` pass their input through and feeds
block ``L`` the recorded tensor. On average that halves the cost of a per-unit sweep.

Forward calls are matched by order: the measuring function must call the model with the same
batches in the same order as during recording (``answer_nll`` and ``perplexity`` are
deterministic in both). Only single-forward metrics qualify; greedy decoding (with its KV cache)
always runs the whole model. Memory: ``n_layers x tokens x hidden x 4`` bytes for fp32 (about 50 MB
per block for 64 SQuAD prompts on SmolLM2-135M).
"""

from __future__ import annotations

import contextlib

from torch import Tensor, nn

from ..units import _blocks


def blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (GPT-2 ``transformer.h``, Llama ``model.layers``)."""
    found = _blocks(model)
    if found is None:
        raise ValueError("no transformer blocks found")
    return found[1]


def _hidden(args, kwargs) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


class PrefixRecorder:
    """Records the input hidden states of every block during the forwards it wraps.

    ``inputs[layer][call]`` is a (B, T, H) tensor. ``usable`` is False when a block returns
    something other than a tensor (older transformers returned tuples), in which case callers
    fall back to full forwards.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.inputs: list[list[Tensor]] = [[] for _ in blocks(model)]
        self.usable = True

    @contextlib.contextmanager
    def record(self):
        handles = []
        for i, block in enumerate(blocks(self.model)):
            def pre(mod, args, kwargs, i=i):
                self.inputs[i].append(_hidden(args, kwargs))  # never modified in place by later blocks

            def post(mod, args, kwargs, output):
                if not isinstance(output, Tensor):
                    self.usable = False

            handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(block.register_forward_hook(post, with_kwargs=True))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    @property
    def calls(self) -> int:
        return len(self.inputs[0])


def _passthrough(hidden_states=None, *args, **kwargs):
    # a skipped block returns its input unchanged; block L then replaces it with the recording
    return hidden_states if hidden_states is not None else kwargs["hidden_states"]


@contextlib.contextmanager
def replay_from(model: nn.Module, recorder: PrefixRecorder, layer: int):
    """Within the block, forwards skip blocks ``< layer`` and start block ``layer`` from the recording.

    Blocks are skipped by shadowing their ``forward`` on the instance (the module tree stays the
    same, so unit names and ``set_profile`` keep working); block ``layer`` gets a pre-hook that swaps
    in the recorded input of the same forward call and checks its shape.
    """
    if layer <= 0 or not recorder.usable:
        yield
        return
    mods = blocks(model)
    calls = iter(range(recorder.calls))

    def pre(mod, args, kwargs):
        try:
            call = next(calls)
        except StopIteration:
            raise RuntimeError("prefix replay: more forward calls than were recorded; measure with the "
                               "same batches as the recording") from None
        h = recorder.inputs[layer][call]
        current = _hidden(args, kwargs)
        if current.shape != h.shape:
            raise RuntimeError(f"prefix replay: forward call {call} has input {tuple(current.shape)} but "
                               f"the recording {tuple(h.shape)}; measure with the same batches")
        if args:
            return (h, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    handle = mods[layer].register_forward_pre_hook(pre, with_kwargs=True)
    for block in mods[:layer]:
        block.forward = _passthrough
    try:
        yield
    finally:
        handle.remove()
        for block in mods[:layer]:
            del block.forward
