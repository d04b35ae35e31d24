"""Load an export: the Hugging Face model rebuilt from its config, exported unit modules replaced
by :class:`~bitswitch.quant.exported.ExportedLinear` holding the packed codes.

The model is built with its parameters on the ``meta`` device (buffers such as rotary frequencies
are computed for real), so no float copy of the quantized weights ever exists: peak memory is the
file plus the unquantized parameters at the compute dtype.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import BitswitchError
from ..models import resolve_device, resolve_dtype
from ..quant.exported import ExportedLinear, int8_kernel_works
from .format import FIX, MAP_FILE, act_quant, read_quant_map, read_tensors, weight_quant


def is_export_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by ``bitswitch export`` (it holds the quant map)."""
    return (Path(path).expanduser() / MAP_FILE).is_file()


def is_exported(model: nn.Module) -> bool:
    """Whether ``model`` was opened from an export (:func:`load_exported`): fixed at the profile it was
    exported at, its adapters in it, not switchable. Its ``bitswitch_export`` dict describes it."""
    return getattr(model, "bitswitch_export", None) is not None


def exported_profile(path: str | Path) -> str:
    """The profile an export was written at (its name, e.g. ``w4a8;L0.*=fp``)."""
    return read_quant_map(path)["profile"]


def load_exported(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                  cache_weights: bool = False, int8_kernel: bool | None = None):
    """Load ``(model, tokenizer)`` from an export directory, in eval mode on ``device``.

    dtype: the compute dtype (default: the exported model's). cache_weights: keep each unit's
    dequantized weight after its first forward (faster, float-sized) instead of rebuilding it from
    the packed codes every forward (default, lowest memory). int8_kernel: run symmetric 8-bit
    per-channel weight-only units on torch's int8 kernel where it works on ``device``: True, False,
    or None (default) for "at bf16/fp16 compute only" -- this torch's CPU kernel is vectorised for
    bf16/fp16 inputs, while at fp32 it is 5-40x slower than the fp32 matmul of the dequantized
    weight (measured on AVX-512, M = 1 and 512), so fp32 keeps the dequantized path.
    The model carries ``model.bitswitch_export`` = ``{"path", "profile", "merge", "units" (unit ->
    spec), "weight_bytes" (codes + scales + zeros + unquantized on disk), "avg_w_bits"}``.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    qmap = read_quant_map(path)
    tensors = read_tensors(path, qmap)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype if dtype is not None else qmap["dtype"])
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BitswitchError(f"config or tokenizer of export {str(path)!r} cannot be read ({first[:160]}): "
                             f"{FIX}") from exc
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config)
    wanted = dt != torch.float32 if int8_kernel is None else int8_kernel
    use_int8 = wanted and int8_kernel_works(dev.type)
    for name, entry in qmap["modules"].items():
        try:
            module = _exported_linear(name, entry, tensors, dt, cache_weights, use_int8)
        except ValueError as exc:   # tensors the map's entry does not call for (the specs check what it does)
            raise BitswitchError(f"module {name!r} in {MAP_FILE} of {path} does not fit its tensors ({exc}): "
                                 f"{FIX}") from exc
        _replace(model, path, name, module)
    state = {n: tensors.pop(n).to(dt) for n in list(tensors)}  # popped: each fp16 original is freed
    try:
        _, unexpected = model.load_state_dict(state, strict=False, assign=True)
        for target, source in qmap["ties"].items():
            owner, _, leaf = target.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, leaf, model.get_parameter(source))
    except (RuntimeError, AttributeError) as exc:  # a shape the config disagrees with, a tie to nothing
        first = str(exc).strip().splitlines()[0]
        raise BitswitchError(f"tensors of export {str(path)!r} do not fit the model of its config.json "
                             f"({first[:160]}): {FIX}") from exc
    if unexpected:
        raise BitswitchError(f"{MAP_FILE} of {path} lists tensor {unexpected[0]!r} that the model of its "
                             f"config.json does not have: {FIX}")
    empty = [n for n, p in model.named_parameters() if p.is_meta]
    if empty:
        raise BitswitchError(f"export {str(path)!r} lacks tensor {empty[0]!r} of the model in its config.json: "
                             f"{FIX}")
    if tokenizer.pad_token is None:  # as load_model: batching needs one (masked out anyway)
        tokenizer.pad_token = tokenizer.eos_token
    model.bitswitch_export = {"path": str(path), "profile": qmap["profile"], "merge": qmap["merge"],
                              "units": {u: e["spec"] for u, e in qmap["units"].items()},
                              "weight_bytes": qmap["bytes"]["codes"] + qmap["bytes"]["scales"]
                              + qmap["bytes"]["zeros"] + qmap["bytes"]["unquantized"],
                              "avg_w_bits": qmap["avg_w_bits"]}
    return model.to(dev).eval(), tokenizer


def _exported_linear(name: str, entry: dict, tensors: dict, dtype: torch.dtype, cache: bool,
                     int8: bool) -> ExportedLinear:
    """Build one module, taking its tensors out of ``tensors``."""
    def take(leaf: str, to_dtype: bool = False):
        t = tensors.pop(f"{name}.{leaf}", None)
        return t.to(dtype) if t is not None and to_dtype else t

    out_f, in_f = entry["shape"]
    lora = entry["lora"]
    return ExportedLinear(
        in_f, out_f, None if entry["weight"] is None else weight_quant(entry["weight"]),
        None if entry["act"] is None else act_quant(entry["act"]),
        qweight=take("qweight"), scales=take("scales"), zeros=take("zeros"), weight=take("weight", True),
        bias=take("bias", True), lora_A=take("lora_A"), lora_B=take("lora_B"),
        lora_scaling=1.0 if lora is None else lora["scaling"], act_range=take("act_range"),
        cache_weight=cache, int8_kernel=int8)


def _replace(model: nn.Module, path: Path, name: str, module: nn.Module) -> None:
    owner, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(owner) if owner else model
        parent.get_submodule(child)
    except AttributeError as exc:
        raise BitswitchError(f"{MAP_FILE} of {path} names module {name!r} that the model of its config.json "
                             f"does not have: {FIX}") from exc
    setattr(parent, child, module)
