"""``Runtime``: a model packed at every profile it will run, switched per request, per token or per
unit by module state (never repacked), generating with a KV cache.

    rt = Runtime.load("smollm2-135m", profiles=["w4g32", "w8"])     # or a nested checkpoint
    rt.set_profile("w4g32")
    out = rt.generate(["The capital of France is"], max_new_tokens=16)
    rt.generate(prompts, schedule=["w4g32", "w8"])                  # per-token switching

It computes in bf16 on the CPU's int4 / int8 weight-only kernels (see ``pack.py``); on CUDA every
width runs through the dequantizing path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor

from ..errors import BitswitchError
from .build import build_runtime_model
from .compiled import compile_step
from .compiled import resolve as resolve_compile
from .cpu import SLOW_BF16, native_bf16
from .generate import GenerateOutput, run

_warned: list[bool] = []


class Runtime:
    """``model``: the :class:`~bitswitch.runtime.model.RuntimeModel`; ``tokenizer``; ``config``: the
    transformers config (for context length); ``profiles``: the profiles held, in load order."""

    is_runtime = True   # how the scorers tell a runtime from a torch module (no import of this package)

    def __init__(self, model, tokenizer, config, profiles: list[str], compiled: bool = False):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.profiles = list(profiles)
        self._profile: str | None = self.profiles[0]   # None: units switched one by one, name not derived yet
        self._units = dict(model.units())
        self._compiled = compile_step(model.forward) if compiled else None

    # -- building --------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model, tokenizer, profiles, compile: str = "auto", kernel: str = "auto",
                   weight_of=None, kv_dtype: str = "float32") -> Runtime:
        """Pack a switchable model (adapters loaded; a plain one is made switchable with default
        options) at every profile of ``profiles``; the first is active. The float model is not kept.
        ``compile``: auto / on / off, the one-token decode step through ``torch.compile`` (see
        :mod:`.compiled`). ``weight_of``: see :func:`.build.build_runtime_model` (a hollow model's weights).
        ``kv_dtype``: float32 or bfloat16, see :meth:`set_kv_dtype`."""
        from ..switching import make_switchable

        kv = _kv_dtype(kv_dtype)   # before packing: a bad value costs nothing
        profiles = [profiles] if isinstance(profiles, str) else list(dict.fromkeys(p.strip() for p in profiles))
        if not hasattr(model, "bitswitch"):
            make_switchable(model)
        device = next(model.parameters()).device
        compiled = resolve_compile(compile, device)
        if device.type != "cpu":
            kernel = "dequant"   # the int4 / int8 kernels are the CPU's
        elif kernel != "reference" and native_bf16() is False and not _warned:
            _warned.append(True)   # once per process
            print(f"bitswitch: warning: {SLOW_BF16}", file=sys.stderr)
        with torch.no_grad():
            rm = build_runtime_model(model, profiles, kernel, weight_of)
        rm.kv_dtype = kv
        return cls(rm, tokenizer, model.config, profiles, compiled=compiled)

    @classmethod
    def load(cls, spec: str, adapters: str | None = None, profiles=("fp",), options=None, compile: str = "auto",
             kernel: str = "auto", device: str = "auto", kv_dtype: str = "float32") -> Runtime:
        """Load ``spec`` (a nested checkpoint, or a model plus ``adapters``) and pack it at ``profiles``.

        A nested checkpoint on the CPU is packed straight from its int8 masters, one unit at a time
        (each master freed once packed): the float model never exists, so the peak memory is about
        the masters plus the packed widths."""
        from ..export.nested_reader import load_nested_model, master_weight
        from ..loading import is_nested_dir, load_switchable
        from ..models import resolve_device
        from .memory import fix_mmap_threshold

        dev = resolve_device(device)
        if is_nested_dir(spec) and dev.type == "cpu" and adapters is None:
            fix_mmap_threshold()   # each master freed once packed must leave nothing resident
            model, tok = load_nested_model(Path(spec).expanduser(), dev, options=options, hollow=True)
            ckpt = model.bitswitch_nested.pop("checkpoint")

            def weight_of(module):
                return master_weight(ckpt, module, release=True) if module in ckpt.masters else None

            rt = cls.from_model(model, tok, profiles, compile=compile, kernel=kernel, weight_of=weight_of,
                                kv_dtype=kv_dtype)
            del model, ckpt
            return rt
        model, tok = load_switchable(spec, adapters, options, device=dev)
        rt = cls.from_model(model, tok, profiles, compile=compile, kernel=kernel, kv_dtype=kv_dtype)
        del model
        return rt

    # -- switching -------------------------------------------------------------------------------
    def check_profile(self, profile: str) -> str:
        p = profile.strip()
        if p not in self.profiles:
            raise BitswitchError(f"profile {profile!r} is not packed in this runtime (it holds "
                                 f"{', '.join(self.profiles)}): load it with profiles=[...]")
        return p

    def set_profile(self, profile: str) -> None:
        """Every unit to ``profile`` (its weights and adapter): attribute writes, no packing."""
        p = self.check_profile(profile)
        for unit in self._units.values():
            unit.active = p
        self._profile = p

    def set_unit_profiles(self, profiles: dict[str, str]) -> None:
        """Some units each to its own profile (``{unit: profile}``); the others stay as they are."""
        for unit, p in profiles.items():
            if unit not in self._units:
                raise BitswitchError(f"{unit!r} is not a unit of this model (units are L0.attn_in ... head)")
            self.check_profile(p)
        for unit, p in profiles.items():
            self._units[unit].active = p.strip()
        self._profile = None

    def set_unit_profile(self, unit: str, profile: str) -> None:
        """One unit to ``profile``, in constant time: what per-token routing calls for every unit at every
        step (:func:`bitswitch.dynamic.runtime_routed`). ``profile`` must be one of ``profiles`` as
        given (no whitespace); a one-line error otherwise."""
        mod = self._units.get(unit)
        if mod is None or profile not in mod.precisions:
            raise BitswitchError(f"cannot switch unit {unit!r} to {profile!r}: units are L0.attn_in ... head and "
                                 f"profiles {', '.join(self.profiles)}")
        mod.active = profile
        self._profile = None

    @property
    def profile(self) -> str:
        """The profile every unit runs at, or ``mixed`` (derived once after units were switched one by one)."""
        if self._profile is None:
            actives = {u.active for u in self._units.values()}
            self._profile = actives.pop() if len(actives) == 1 else "mixed"
        return self._profile

    def set_kv_dtype(self, dtype: str) -> None:
        """The KV cache of the next request: ``float32`` (the default: keys and values as fake quantization
        keeps them, for logit parity) or ``bfloat16`` (half the cache; keys and values rounded once)."""
        self.model.kv_dtype = _kv_dtype(dtype)

    @property
    def kv_dtype(self) -> str:
        return str(self.model.kv_dtype).removeprefix("torch.")

    @property
    def units(self) -> list[str]:
        return list(self._units)

    @property
    def pack_count(self) -> int:
        """Weights packed so far, over every unit (switching never adds to it)."""
        return sum(u.pack_count for u in self._units.values())

    # -- running ---------------------------------------------------------------------------------
    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def step(self, ids: Tensor, cache, pos: int) -> Tensor:
        """One generation step: logits (B, 1, V) of the last column of ``ids`` (B, T) at ``pos``.
        One-column steps at a uniform profile run compiled (when compiled); the rest eager."""
        if self._compiled is not None and ids.shape[1] == 1 and self.profile != "mixed":
            return self._compiled(ids, cache, pos, True)
        return self.model(ids, cache, pos, last_only=True)

    def encode(self, prompts) -> list[list[int]]:
        """Prompts as ids: strings through the tokenizer, id lists as they are."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        return [list(p) if not isinstance(p, str) else self.tokenizer(p).input_ids for p in prompts]

    def generate(self, prompts, max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0, stop=("\n",),
                 eos: bool = True, min_new_tokens: int = 0, schedule: list[str] | None = None) -> GenerateOutput:
        """Generate for ``prompts`` (strings or id lists) at the current profile, or per step at
        ``schedule`` (cycled; the profile afterwards is the last step's). See :func:`.generate.run`."""
        return run(self, self.encode(prompts), max_new_tokens, do_sample, temperature, top_k, top_p, seed, stop,
                   eos, min_new_tokens, schedule)

    def logits(self, ids: Tensor, mask: Tensor | None = None, last: int | None = None) -> Tensor:
        """Teacher-forced logits (B, L, V) float32 of left-padded ``ids`` (B, L) (``mask`` 1 = token);
        ``last``: only the last ``last`` columns' (B, last, V) (the head runs only there)."""
        ids = ids.to(self.model.embed.device)
        b, length = ids.shape
        cache = self.model.new_cache(b, length)
        cache.valid[:, :length] = True if mask is None else mask.to(cache.valid.device).bool()
        with torch.inference_mode():
            return self.model(ids, cache, 0, last_only=last or False)

    def resident_bytes(self) -> dict:
        """Bytes held: ``by_width`` (packed weights per weight key over every unit), ``adapters``,
        ``float`` (embeddings, norms, positions, biases), ``total``; shared tensors counted once."""
        seen: set[int] = set()

        def size(t: Tensor) -> int:
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                return 0
            seen.add(ptr)
            return t.untyped_storage().nbytes()

        def packed_size(p) -> int:
            return sum(size(t) for t in vars(p).values() if isinstance(t, Tensor))

        m = self.model
        by_width: dict[str, int] = {}
        adapters = other = 0
        other += size(m.embed) + (size(m.wpe) if m.wpe is not None else 0)
        other += sum(size(t) for t in m.final.values())
        for layer in m.layers:
            other += sum(size(t) for t in layer.norms.values())
        for unit in self._units.values():
            for key, packed in unit.weights.items():
                by_width[key] = by_width.get(key, 0) + packed_size(packed)
            for a, b, _ in unit.loras.values():
                adapters += size(a) + size(b)
            other += size(unit.bias) if unit.bias is not None else 0
        return {"by_width": by_width, "adapters": adapters, "float": other,
                "total": sum(by_width.values()) + adapters + other}


KV_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _kv_dtype(name) -> torch.dtype:
    if isinstance(name, torch.dtype) and name in KV_DTYPES.values():
        return name
    if name not in KV_DTYPES:
        raise BitswitchError(f"the KV cache dtype must be float32 or bfloat16, not {name!r}")
    return KV_DTYPES[name]
