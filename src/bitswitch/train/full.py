"""Full-weight switchable QAT: which base weights train, and the trained model as a plain Hugging
Face directory that every other command loads with ``--model DIR``.

Only the block units' linear weights (and, with ``train_bias``, their biases) train. They are what
is quantized, so training them through the straight-through estimator is QAT proper; the
embeddings, norms and the LM head stay frozen: they are never quantized (the head at most to 8
bits), the head is tied to the input embedding in SmolLM2 and GPT-2 (training it would move the
embedding too), and AdamW on the embedding alone would add about three times its 28M weights.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from ..models import float_weights_for_saving
from ..switching import unit_modules

MODEL_DIR = "model"


def base_parameters(model: nn.Module, bias: bool = False) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the block units' weights (and biases), in a fixed order; the names are
    the switchable model's (``...q_proj.base.weight``)."""
    out = []
    for unit, name, mod in unit_modules(model):
        if unit == "head":
            continue
        out.append((f"{name}.base.weight", mod.base.weight))
        if bias and mod.base.bias is not None:
            out.append((f"{name}.base.bias", mod.base.bias))
    return out


def plain_state_dict(model: nn.Module) -> dict:
    """The wrapped model's weights under the plain model's names: no adapters, clips or observers, and
    ``<module>.base.weight`` as ``<module>.weight``."""
    wrapped = {name for _, name, _ in unit_modules(model)}
    out = {}
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        owner = next((w for w in wrapped if module.startswith(w + ".")), None)
        if owner is not None:
            rest = module[len(owner) + 1:]
            if rest != "base":
                continue   # adapters, clips, observers of a wrapped module
            key = f"{owner}.{leaf}"
        out[key] = value.detach().cpu().contiguous()
    return out


def save_model(model: nn.Module, tokenizer, directory: str | Path) -> Path:
    """Write the (switchable) model's weights as a plain Hugging Face directory (config, safetensors,
    tokenizer) atomically: into a temporary sibling, renamed into place (a previous one replaced
    only once the new one is complete)."""
    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-tmp-"))
    try:
        with float_weights_for_saving(model):
            model.save_pretrained(str(tmp), state_dict=plain_state_dict(model), safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-old-"))
            os.replace(out, old / "previous")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
