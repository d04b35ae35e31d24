"""Open a model spec, whatever it names: the one loader above :mod:`.models` and :mod:`.export`.

A spec is anything :func:`bitswitch.models.load_model` takes (a hub id, a local Hugging Face
directory, ``smollm2-135m``, ``tiny-gpt2`` / ``tiny-llama``), a directory written by
``bitswitch export``, which :func:`bitswitch.export.load_exported` opens, or a nested checkpoint
written by ``bitswitch export --nested`` (:func:`is_nested_dir`). An exported model comes back as it
is (:func:`is_exported`): fixed at its profile, its adapters already in it, not switchable. A nested
checkpoint comes back as the plain model with its int8 masters dequantized (:func:`load`), or
switchable on the nested grid with its adapters (:func:`load_switchable`).

    model, tok = load("out/w4")                                   # = bitswitch.load_model
    model, tok = load_switchable("smollm2-135m", adapters="runs/a")  # eval, export, search, attack
    model, tok = load_switchable("out/nested")                    # every width 2-8, its adapters
"""

from __future__ import annotations

from pathlib import Path

from .adapters import load_adapters, read_adapter_config
from .errors import BitswitchError
from .export.nested_format import is_nested_dir
from .export.nested_reader import load_nested_base, load_nested_model
from .export.reader import is_export_dir, is_exported, load_exported
from .models import load_model, resolve_device
from .profiles import QuantOptions
from .roundings import maybe_attach
from .switching import make_switchable

__all__ = ["is_export_dir", "is_exported", "is_nested_dir", "load", "load_switchable", "resolve_device"]


def load(spec: str, device="auto", dtype="fp32", seed: int = 0):
    """``(model, tokenizer)`` in eval mode on ``device``: an export directory through
    :func:`~bitswitch.export.load_exported` (``dtype`` is its compute dtype), a nested checkpoint
    through :func:`~bitswitch.export.load_nested_base` (the plain model, each block-unit weight its
    dequantized int8 master, no adapters), anything else through
    :func:`~bitswitch.models.load_model` (the plain Hugging Face model; ``make_switchable`` wraps it).
    ``device`` goes through :func:`~bitswitch.models.resolve_device` first, whatever the spec."""
    device = resolve_device(device)
    if is_export_dir(spec):
        return load_exported(Path(spec).expanduser(), device, dtype)
    if is_nested_dir(spec):
        return load_nested_base(Path(spec).expanduser(), device, dtype)
    return load_model(spec, device=device, dtype=dtype, seed=seed)


def load_switchable(spec: str, adapters: str | None = None, options: QuantOptions | None = None, device="auto",
                    dtype="fp32", seed: int = 0, keying: str = "profile"):
    """``load`` + ``make_switchable`` + (optionally) ``load_adapters``: the first step of eval,
    export, search and attack. The keying comes from the adapter directory when one is given, and
    so do the quantizer options when ``options`` are left at the defaults (see
    :func:`~bitswitch.adapters.load_adapters`). An export is returned as loaded (:func:`is_exported`).
    A nested checkpoint is opened by :func:`~bitswitch.export.load_nested_model`: switchable on the
    nested grid at its group size (``options`` may change the activation options only), with the
    adapters it holds; ``adapters`` is refused there."""
    if is_nested_dir(spec):
        if adapters:
            raise BitswitchError(f"{spec!r} is a nested checkpoint: its adapters are in it; drop --adapters, or "
                                 "re-export it with bitswitch export --nested --adapters DIR")
        return load_nested_model(Path(spec).expanduser(), resolve_device(device), dtype, options, keying)
    if adapters:
        keying = read_adapter_config(adapters)["keying"]
    model, tok = load(spec, device=device, dtype=dtype, seed=seed)
    if is_exported(model):
        return model, tok
    make_switchable(model, options or QuantOptions(), keying)
    maybe_attach(model, spec)   # a prepared directory's GPTQ roundings, if it has them
    if adapters:
        load_adapters(model, adapters)
    return model, tok
