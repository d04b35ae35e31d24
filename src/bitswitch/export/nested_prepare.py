"""Get a model ready for a nested checkpoint: load, wrap, load adapters (above the loader, as
:mod:`bitswitch.export.prepare` is: ``export/__init__`` does not import it)."""

from __future__ import annotations

from ..adapters import read_adapter_config
from ..errors import BitswitchError
from ..loading import is_exported, load_switchable
from ..profiles import QuantOptions


def prepare_nested(spec: str, adapters: str | None = None, options: QuantOptions | None = None, device="cpu",
                   dtype="fp32", seed: int = 0):
    """``(model, tokenizer, adapter_source)``: ``spec`` switchable with ``options`` (whose group size
    the masters take; the adapters' saved options when left at the defaults) and ``adapters`` loaded;
    ``adapter_source`` is their ``adapter_config.json`` (None without adapters). A nested checkpoint
    may be re-written (its masters come back bitwise); an export fixed at one profile may not."""
    model, tok = load_switchable(spec, adapters, options, device, dtype, seed)
    if is_exported(model):
        raise BitswitchError(f"{spec!r} is an export fixed at one profile: write the nested checkpoint from the "
                             "original model")
    return model, tok, read_adapter_config(adapters) if adapters else None
