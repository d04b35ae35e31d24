"""Normalization layers at lower precision: wrap them, and the one function that sets their bits.

:func:`make_norms_quantizable` wraps every RMSNorm / LayerNorm of a model in
:class:`~bitswitch.quant.norm.QuantNorm` (at full precision until set); :func:`set_norm_bits` is the
only code that writes a norm's precision (a test checks), like ``switching.set_unit_profiles`` for
the units. :func:`norm_bits_below` derives the norms' width from what the units run at: ``offset``
bits below the lowest weight width of the profile (``fp`` units count as 16 bits), at least 2.
Training uses it as exploration noise (``train --set norm_offset=2``); evaluation leaves norms at
full precision.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from .errors import BitswitchError
from .quant.config import UnitPrecision
from .quant.norm import QuantNorm, check_norm_bits, is_norm


def make_norms_quantizable(model: nn.Module) -> list[str]:
    """Wrap every norm module of ``model`` in place (idempotent); returns their module names."""
    names = [n for n, m in model.named_modules()
             if isinstance(m, QuantNorm) or (is_norm(m) and not isinstance(_parent(model, n), QuantNorm))]
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        mod = owner.get_submodule(child)
        if not isinstance(mod, QuantNorm):
            setattr(owner, child, QuantNorm(mod))
    return names


def _parent(model: nn.Module, name: str) -> nn.Module:
    parent = name.rpartition(".")[0]
    return model.get_submodule(parent) if parent else model


def norm_modules(model: nn.Module) -> list[QuantNorm]:
    return [m for m in model.modules() if isinstance(m, QuantNorm)]


def set_norm_bits(model: nn.Module, bits: int | None) -> int:
    """Run every wrapped norm at ``bits`` (weights and outputs), or at full precision (``None``).
    The one writer of ``QuantNorm.norm_bits``; returns the number of norms set."""
    if bits is not None:
        try:
            check_norm_bits(bits)
        except ValueError as exc:
            raise BitswitchError(str(exc)) from None
    mods = norm_modules(model)
    if bits is not None and not mods:
        raise BitswitchError("the model has no quantizable norms: call bitswitch.norms.make_norms_quantizable first")
    for m in mods:
        m.norm_bits = bits
    return len(mods)


def norm_bits_below(table: Mapping[str, UnitPrecision], offset: int) -> int:
    """``max(2, b - offset)`` with ``b`` the lowest weight width of ``table`` (16 for fp weights)."""
    if offset < 0:
        raise BitswitchError(f"norm offset must be >= 0, got {offset}")
    widths = [p.weight.bits if p.weight is not None else 16 for p in table.values()] or [16]
    return max(2, min(widths) - offset)
