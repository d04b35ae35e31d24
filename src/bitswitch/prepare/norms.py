"""Norms folded into the linears that read them, and GPT-2's residual writers centered.

After :func:`fold_rmsnorm` / :func:`fold_layernorm` a norm has weight 1 (and bias 0), so it is a
plain ``x / rms(x)`` (LayerNorm: ``(x - mean) / std``), which commutes with the rotations of
:mod:`.rotate`; its scale (and shift) now live in the readers' weights (and biases).
"""

from __future__ import annotations

from torch import Tensor, nn

from .linear_ops import center_output, scale_input, shift_input, weight


def fold_rmsnorm(norm: nn.Module, readers: list[nn.Module]) -> None:
    """``RMSNorm(x) = x / rms(x) * g``: every reader ``W <- W diag(g)``, then g = 1."""
    for r in readers:
        scale_input(r, norm.weight.data)
    norm.weight.data.fill_(1.0)


def fold_layernorm(norm: nn.Module, readers: list[nn.Module]) -> None:
    """``LayerNorm(x) = x_hat * gamma + beta``: every reader (with a bias) ``b <- b + W beta``,
    ``W <- W diag(gamma)``; then gamma = 1, beta = 0."""
    for r in readers:
        shift_input(r, norm.bias.data)
        scale_input(r, norm.weight.data)
    norm.weight.data.fill_(1.0)
    norm.bias.data.zero_()


def fold_layernorm_into_head(norm: nn.Module, head: nn.Linear) -> None:
    """The final LayerNorm into a bias-free head (GPT-2's ``lm_head`` has no bias and a standard one
    cannot grow one), exactly, through the all-ones direction that ``x_hat`` never has.

    With W (vocab, d) the head, the logits are ``x_hat W_g^T + c``, ``W_g = W diag(gamma)``,
    ``c = W beta`` (vocab,). Set the norm to gamma = 1, beta = 1 (the ones vector) and the head to
    ``W' = W_g C + c 1^T / d`` (C = I - 1 1^T / d). ``x_hat`` is zero-mean (LayerNorm subtracts the
    mean), so ``x_hat W'^T = x_hat W_g^T``, and ``1 W'^T = 0 + c``: the same logits. A rotation Q
    with ``Q 1 = 1`` (:func:`~.hadamard.mean_fixing`) keeps both facts, so the head is then rotated
    as any other reader."""
    w = weight(head)
    c = w @ norm.bias.data                                    # (vocab,)
    w = w * norm.weight.data[None, :]
    head.weight.data = w - w.mean(dim=1, keepdim=True) + c[:, None] / w.shape[1]
    norm.weight.data.fill_(1.0)
    norm.bias.data.fill_(1.0)


def center_rows(table: Tensor) -> None:
    """An embedding table (rows are written to the residual stream) minus each row's mean, in place."""
    table.sub_(table.mean(dim=1, keepdim=True))


def center_writers(model: nn.Module) -> None:
    """GPT-2: every write to the residual stream loses its mean over the hidden features (token and
    position embeddings, each block's ``attn.c_proj`` and ``mlp.c_proj``). The stream is then the
    original minus its mean, exactly; every reader of it is a LayerNorm, which subtracts the mean
    first, so nothing downstream changes (the head was untied first: it keeps the original rows)."""
    tr = model.transformer
    center_rows(tr.wte.weight.data)
    center_rows(tr.wpe.weight.data)
    for block in tr.h:
        center_output(block.attn.c_proj)
        center_output(block.mlp.c_proj)
