"""Exact in-place rewrites of one linear layer, for ``nn.Linear`` and transformers ``Conv1D`` alike.

A linear maps row vectors ``y = x W^T + b`` with W (out, in) (``Conv1D`` stores W^T, (in, out); each
function transposes for it). Every rewrite keeps the layer's function under a stated change of its
input or output, so a chain of them keeps the model's. Weights are expected in float64 here
(:func:`~bitswitch.prepare.rotate.rotate_model` casts the model up before fusing and back after).
"""

from __future__ import annotations

from torch import Tensor, nn


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D"   # transformers.pytorch_utils.Conv1D, by name: no import needed


def weight(m: nn.Module) -> Tensor:
    """W as (out, in), a view of the stored parameter."""
    return m.weight.data.T if _is_conv1d(m) else m.weight.data


def set_weight(m: nn.Module, w: Tensor) -> None:
    """Store ``w`` (out, in) as the layer's weight, in its own layout."""
    m.weight.data = (w.T if _is_conv1d(m) else w).contiguous()


def rotate_input(m: nn.Module, r: Tensor) -> None:
    """The input becomes ``x @ r`` (r (in, in) orthogonal): ``W <- W r`` keeps ``y``."""
    set_weight(m, weight(m) @ r)


def rotate_output(m: nn.Module, r: Tensor) -> None:
    """The output becomes ``y @ r`` (r (out, out) orthogonal): ``W <- r^T W``, ``b <- b r``."""
    set_weight(m, r.T @ weight(m))
    if getattr(m, "bias", None) is not None:
        m.bias.data = m.bias.data @ r


def scale_input(m: nn.Module, g: Tensor) -> None:
    """Folds an elementwise scale of the input in: the layer now reads x where it read ``x * g`` (g (in,))."""
    set_weight(m, weight(m) * g[None, :])


def shift_input(m: nn.Module, beta: Tensor) -> None:
    """Folds an additive shift of the input in: the layer now reads x where it read ``x + beta``
    (beta (in,)): ``b <- b + W beta``. A layer without a bias cannot take one and stay a standard
    transformers module, so it is refused (``ValueError``)."""
    if getattr(m, "bias", None) is None:
        raise ValueError(f"{type(m).__name__} has no bias to fold an input shift into")
    m.bias.data = m.bias.data + weight(m) @ beta


def center_output(m: nn.Module) -> None:
    """The output loses its mean over features: ``y <- y - mean(y)``, i.e. ``W <- C W``, ``b <- b C``
    with C = I - 1 1^T / out (every column of W and the bias minus its mean)."""
    w = weight(m)
    set_weight(m, w - w.mean(dim=0, keepdim=True))
    if getattr(m, "bias", None) is not None:
        m.bias.data = m.bias.data - m.bias.data.mean()
