"""The noise floor of an agreement: the same engine again, its inputs perturbed by one part in a million.

Two engines that compute the same model still sum in different orders. Where the activations are
quantized (llama.cpp's q8_0 blocks, ``a8`` here), a difference in the last bits moves an element
across a rounding boundary now and then, and that step is a whole quantization step: on SmolLM2 at
w8a8, multiplying the token embeddings by ``1 + 1e-6 * N(0, 1)`` changes the log-probabilities by
0.05 nats a token on average, as much as a8 itself does, while at fp it changes them by 3e-6.
So "identical answers" between two engines cannot exceed what one engine gives against itself
under such a perturbation; :func:`perturbed_inputs` runs that control.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def perturbed_inputs(model: nn.Module, rel: float, seed: int = 0):
    """Within the block, the model's input embeddings come out multiplied by ``1 + rel * N(0, 1)``,
    elementwise (fresh noise per call, from a generator seeded with ``seed``); restored after."""
    if not rel >= 0:
        raise ValueError(f"the relative perturbation must be >= 0, got {rel!r}")
    gen = torch.Generator().manual_seed(seed)

    def hook(module, inputs, out):
        noise = torch.randn(out.shape, generator=gen, dtype=torch.float32).to(out.device, out.dtype)
        return out * (1 + rel * noise)

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
