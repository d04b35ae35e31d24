"""A prepared model on disk: a standard Hugging Face directory (``save_pretrained``, safetensors,
the tokenizer) plus ``bitswitch_prepare.json`` recording the steps, so every loader opens it as
any local model directory and train / eval / export / runtime / GGUF need nothing new.

Written atomically like an export: into a temporary sibling, renamed into place at the end. The
target must be new, empty, or an earlier prepared directory (which is replaced).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from ..errors import BitswitchError
from ..export.writer import _install, _publish_modes, _versions
from ..io import atomic_write_json
from ..models import float_weights_for_saving

MARKER = "bitswitch_prepare.json"
FORMAT = "bitswitch-prepare"


def check_target(out: str | os.PathLike) -> Path:
    """Refuse a file, or a non-empty directory that is not an earlier prepared model."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BitswitchError(f"--out {str(out)!r} is a file: pass a new directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise BitswitchError(f"--out {str(out)!r} is not empty and not a prepared model: pass a new or empty directory")
    return out


def fingerprints(model: nn.Module, roundings: dict) -> dict[str, str]:
    """:func:`~bitswitch.roundings.weight_fingerprint` of each plain module ``roundings`` names."""
    from ..quant.linear import is_conv1d
    from ..roundings import weight_fingerprint

    out = {}
    for name in roundings:
        mod = model.get_submodule(name)
        out[name] = weight_fingerprint(mod.weight.t() if is_conv1d(mod) else mod.weight)
    return out


def save_prepared(model: nn.Module, tokenizer, out: str | os.PathLike, record: dict) -> Path:
    """Write ``model`` + ``tokenizer`` + ``record`` (JSON-ready: source, steps) to ``out``; return it."""
    out = check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)   # the temporary sibling must be on the same file system
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        with float_weights_for_saving(model):     # SmolLM2 comes from a GGUF file
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        roundings = getattr(model, "bitswitch_roundings", None)   # left by the gptq / recon steps
        if roundings is not None:
            from ..roundings import save_roundings

            save_roundings(roundings[0], tmp, units=roundings[1], record=roundings[2],
                           fingerprints=fingerprints(model, roundings[0]))
        atomic_write_json(tmp / MARKER, {"format": FORMAT, "format_version": 1, **record, "versions": _versions()})
        _publish_modes(tmp)
        _install(tmp, out, MARKER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
