"""Read a nested checkpoint back: the checked tensors (:func:`read_nested`), the plain model with
each master's weight rebuilt (:func:`load_nested_base`), or that model made switchable on the nested
grid with its adapters (:func:`load_nested_model`).

Every block-unit weight of the loaded model is ``codes * scales`` in float32. Re-quantizing it with
the nested quantizer of the checkpoint's group size gives back the stored master codes and scales
bitwise (:func:`bitswitch.export.nested.stable_master` writes masters for which that holds), so the
model fake-quantized at any width 2-8 runs exactly the sliced stored codes, and so does the runtime,
which packs from it. At a compute dtype other than float32 the rebuilt weights are rounded to it
(``codes * scales`` needs up to 18 significant bits), so that holds at float32 only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..adapters import AdapterConfig, load_adapter_state_dict
from ..errors import BitswitchError
from ..models import resolve_device, resolve_dtype
from ..profiles import QuantOptions
from ..quant.functional import dequantize_weight
from ..quant.linear import is_conv1d
from ..switching import make_switchable, refresh, state, unit_modules
from .nested_format import (FIX, INFO_FILE, SEP, WEIGHTS_FILE, adapter_name, master_quant, merge_options,
                            StoredTensor, read_info, read_tensors, stored_options)
from .nested_skeleton import skeleton


@dataclass
class NestedCheckpoint:
    """A nested checkpoint as read and checked, tensors on the CPU as stored.

    masters: ``{module: (codes int8 (out, in), scales fp16 (out, groups), group_size)}``;
    biases: ``{module: (out,)}`` of the master modules; loras: ``{module: {key: (A (r, in),
    B (out, r), scaling)}}``; observers: ``{module: {key: (2,) float32 static range}}``; params: every
    other parameter by its Hugging Face name; ties: ``{name: stored name}``; adapter_meta: the
    ``adapters`` entry of ``nested.json`` (None without adapters); config: the transformers config.
    """

    path: Path
    group_size: int | None
    options: QuantOptions
    masters: dict[str, tuple[Tensor, Tensor, int | None]]
    biases: dict[str, Tensor]
    loras: dict[str, dict[str, tuple[Tensor, Tensor, float]]]
    observers: dict[str, dict[str, Tensor]]
    params: dict[str, Tensor]
    ties: dict[str, str]
    adapter_meta: dict | None
    config: object
    tokenizer_dir: Path
    info: dict


def read_nested(path: str | Path, lazy_masters: bool = False) -> NestedCheckpoint:
    """Read and check a nested checkpoint directory (one-line errors naming the file or tensor).

    lazy_masters: the masters' codes and scales are :class:`StoredTensor`, read by
    :func:`master_weight` one at a time (what keeps the runtime's loading peak low)."""
    from transformers import AutoConfig

    path = Path(path).expanduser()
    info = read_info(path)
    options = stored_options(info, path)
    meta = _check_adapter_meta(info, path)
    lazy = [f"{m}.{part}" for m in info["masters"] for part in ("codes", "scales")] if lazy_masters else ()
    tensors = read_tensors(path, info, lazy)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BitswitchError(f"config.json of nested checkpoint {str(path)!r} cannot be read ({first[:160]}): "
                             f"{FIX}") from None
    g = info["group_size"]
    masters = {m: (tensors.pop(f"{m}.codes"), tensors.pop(f"{m}.scales"), g) for m in info["masters"]}
    biases = {m: tensors.pop(f"{m}.bias") for m in info["masters"] if f"{m}.bias" in tensors}
    loras: dict[str, dict[str, tuple[Tensor, Tensor, float]]] = {}
    observers: dict[str, dict[str, Tensor]] = {}
    for name in [n for n, e in info["tensors"].items() if e["kind"] == "act_range"]:
        module, key, part = (name.split(SEP) + ["", ""])[:3]
        t = tensors.pop(name)
        if key != "obs" or not part or list(t.shape) != [2]:
            raise BitswitchError(f"tensor {name!r} of {path / WEIGHTS_FILE} is not a <module>{SEP}obs{SEP}<key> "
                                 f"range of shape [2]: {FIX}")
        observers.setdefault(module, {})[part] = t
    # expected_specs checked every LoRA name, key and shape; here each lora_A finds its lora_B
    for name in [n for n, e in info["tensors"].items() if e["kind"] == "lora" and n.endswith(f"{SEP}lora_A")]:
        module, key, _ = name.split(SEP)
        b = tensors.pop(adapter_name(module, key, "lora_B"), None)
        if b is None:
            raise BitswitchError(f"LoRA tensor {name!r} of {path / WEIGHTS_FILE} has no lora_B: {FIX}")
        loras.setdefault(module, {})[key] = (tensors.pop(name), b, float(meta["keys"][key]["scaling"]))
    stray = next((n for n, e in info["tensors"].items() if e["kind"] == "lora" and n in tensors), None)
    if stray is not None:
        raise BitswitchError(f"LoRA tensor {stray!r} of {path / WEIGHTS_FILE} has no lora_A: {FIX}")
    bad_tie = next((t for t, s in info["ties"].items() if s not in tensors and s not in
                    {f"{m}.bias" for m in biases}), None)
    if bad_tie is not None:
        raise BitswitchError(f"{INFO_FILE} of {path} ties {bad_tie!r} to {info['ties'][bad_tie]!r}, which is not a "
                             f"stored float tensor: {FIX}")
    return NestedCheckpoint(path, g, options, masters, biases, loras, observers, tensors, dict(info["ties"]),
                            meta, config, path, info)


def _check_adapter_meta(info: dict, path: Path) -> dict | None:
    meta = info["adapters"]
    if meta is None:
        if any(e["kind"] in ("lora", "act_range") for e in info["tensors"].values()):
            raise BitswitchError(f"{path / INFO_FILE} lists adapter tensors but no adapters entry: {FIX}")
        return None
    try:
        AdapterConfig(**meta["adapter"])
        keys = meta["keys"]
        for key, e in keys.items():
            if not (isinstance(e["r"], int) and e["r"] > 0 and isinstance(e["scaling"], (int, float))):
                raise ValueError(f"key {key!r} has r {e['r']!r}, scaling {e['scaling']!r}")
    except (BitswitchError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BitswitchError(f"{path / INFO_FILE} has a malformed adapters entry ({str(exc)[:120]}): {FIX}") from None
    return meta


def is_nested(model: nn.Module) -> bool:
    """Whether ``model`` was opened from a nested checkpoint (``model.bitswitch_nested`` describes it)."""
    return getattr(model, "bitswitch_nested", None) is not None


def load_nested_base(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32",
                     checkpoint: NestedCheckpoint | None = None):
    """``(model, tokenizer)``: the plain Hugging Face model of a nested checkpoint in eval mode on
    ``device``, each master module's weight ``codes * scales`` (float32, then ``dtype``), no adapters.

    What :func:`bitswitch.load_model` returns for a nested directory; :func:`load_nested_model` adds
    the switching and the adapters."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    ckpt = checkpoint or read_nested(path)
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    tokenizer = _tokenizer(ckpt)
    with init_empty_weights(include_buffers=False):   # no random init of weights about to be replaced
        model = AutoModelForCausalLM.from_config(ckpt.config)
    state_dict = {n: t.to(dt) for n, t in ckpt.params.items()}
    state_dict.update({f"{m}.bias": b.to(dt) for m, b in ckpt.biases.items()})
    for m, (codes, scales, g) in ckpt.masters.items():
        w = dequantize_weight(codes, scales.float(), None, master_quant(g))   # (out, in) float32, exact
        try:
            conv1d = is_conv1d(model.get_submodule(m))
        except AttributeError:
            raise BitswitchError(f"{INFO_FILE} of {ckpt.path} names master {m!r}, a module the model of its "
                                 f"config.json does not have: {FIX}") from None
        state_dict[f"{m}.weight"] = (w.t() if conv1d else w).contiguous().to(dt)
    try:
        _, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
        for target, source in ckpt.ties.items():
            owner, _, leaf = target.rpartition(".")
            setattr(model.get_submodule(owner) if owner else model, leaf, model.get_parameter(source))
    except (RuntimeError, AttributeError) as exc:   # a shape the config disagrees with, a tie to nothing
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BitswitchError(f"tensors of nested checkpoint {str(ckpt.path)!r} do not fit the model of its "
                             f"config.json ({first[:160]}): {FIX}") from None
    if unexpected:
        raise BitswitchError(f"{WEIGHTS_FILE} of {ckpt.path} holds {unexpected[0]!r}, which the model of its "
                             f"config.json does not have: {FIX}")
    empty = [n for n, p in model.named_parameters() if p.is_meta]
    if empty:
        raise BitswitchError(f"nested checkpoint {str(ckpt.path)!r} lacks tensor {empty[0]!r} of the model in its "
                             f"config.json: {FIX}")
    _describe(model, ckpt, exact=dt == torch.float32)
    return model.to(dev).eval(), tokenizer


def _describe(model: nn.Module, ckpt: NestedCheckpoint, exact: bool) -> None:
    model.bitswitch_nested = {"path": str(ckpt.path), "group_size": ckpt.group_size, "exact": exact,
                              "masters": len(ckpt.masters),
                              "adapter_keys": sorted((ckpt.adapter_meta or {}).get("keys", {})),
                              "restabilized_groups": ckpt.info.get("restabilized_groups", 0)}


# tokenizer classes that are exactly their tokenizer.json (transformers 5's TokenizersBackend, and its
# older name): opened directly, without AutoTokenizer, whose lookup imports processor and image modules
# (about 50 MiB resident) that a runtime never uses
_PLAIN_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _tokenizer(ckpt: NestedCheckpoint):
    """The checkpoint's tokenizer, with a pad token (as load_model: batching needs one, masked out)."""
    import json

    folder = Path(ckpt.tokenizer_dir)
    try:
        cls = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        cls = None
    try:
        if cls in _PLAIN_TOKENIZERS and (folder / "tokenizer.json").is_file():
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BitswitchError(f"tokenizer of nested checkpoint {str(ckpt.path)!r} cannot be read ({first[:160]}): "
                             f"{FIX}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def master_weight(ckpt: NestedCheckpoint, module: str, release: bool = False) -> Tensor:
    """The (out, in) float32 weight ``codes * scales`` of master ``module`` (exact); ``release``
    drops the master from ``ckpt`` once read, so a builder's peak memory holds one at a time."""
    codes, scales, g = ckpt.masters.pop(module) if release else ckpt.masters[module]
    codes, scales = (t.load() if isinstance(t, StoredTensor) else t for t in (codes, scales))
    return dequantize_weight(codes, scales.float(), None, master_quant(g))


def load_nested_model(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32",
                      options: QuantOptions | None = None, keying: str = "profile", hollow: bool = False):
    """``(model, tokenizer)``: :func:`load_nested_base`, made switchable on the nested grid at the
    checkpoint's group size, with its adapters (and calibrated static ranges) loaded.

    options: activation options to run at (act mode, symmetry); the weight options are the stored
    ones, and another group size, symmetry, method or grid is refused (:func:`merge_options`).
    keying: for a checkpoint without adapters (one with adapters takes their keying).
    hollow: not the transformers model but its :func:`~.nested_skeleton.skeleton` (every master
    module's weight a zero-stride placeholder: never run it), for a builder that reads the masters
    itself; ``model.bitswitch_nested["checkpoint"]`` then holds the
    masters, read with :func:`master_weight` (what the runtime packs from).
    """
    ckpt = read_nested(path, lazy_masters=hollow)
    opts = merge_options(ckpt.options, options, ckpt.path)
    if hollow:
        model, tok = skeleton(ckpt).to(resolve_device(device)), _tokenizer(ckpt)
        _describe(model, ckpt, exact=False)
    else:
        model, tok = load_nested_base(path, device, dtype, checkpoint=ckpt)
    meta = ckpt.adapter_meta
    make_switchable(model, opts, meta["keying"] if meta else keying)
    if meta is not None:
        _load_adapters(model, ckpt)
    if hollow:
        model.bitswitch_nested["checkpoint"] = ckpt   # the masters, for master_weight
    return model, tok


def _load_adapters(model: nn.Module, ckpt: NestedCheckpoint) -> None:
    """Create every stored adapter at its own rank and scaling, then fill adapters and observers."""
    cfg = AdapterConfig(**ckpt.adapter_meta["adapter"])
    st = state(model)
    st.adapter_config = cfg
    mods = {name: mod for _, name, mod in unit_modules(model)}
    gen = torch.Generator().manual_seed(0)   # initial values are overwritten; keep the global RNG untouched
    tensors = {}
    for module, by_key in ckpt.loras.items():
        if module not in mods:
            raise BitswitchError(f"LoRA tensors of {ckpt.path / WEIGHTS_FILE} name {module!r}, which is not a unit "
                                 f"module of the model: {FIX}")
        for key, (a, b, scaling) in by_key.items():
            mods[module].add_adapter(key, a.shape[0], cfg.alpha, cfg.dropout, gen)
            mods[module].adapters[key].scaling = scaling
            tensors[adapter_name(module, key, "lora_A")] = a.float()
            tensors[adapter_name(module, key, "lora_B")] = b.float()
    for module, by_key in ckpt.observers.items():
        tensors.update({adapter_name(module, "obs", key): t.float() for key, t in by_key.items()})
    load_adapter_state_dict(model, tensors, cfg, source=str(ckpt.path / WEIGHTS_FILE))
    refresh(model)
