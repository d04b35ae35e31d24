"""QuantLinear: wraps a base linear layer (``nn.Linear`` or transformers' ``Conv1D``) with
switchable fake quantization and LoRA adapters kept by key.

Precision is module state (``precision``, ``active_adapter``, ``observer_key``), set from outside by
``bitswitch.set_profile``; ``forward`` takes only the input. With no precision and no active
adapter the wrapper calls the base layer itself, so the output is bitwise the unwrapped model's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clipping import (clip_key, fake_quantize_weight_clipped, init_clip, quantize_weight_clipped,
                       supports_clip)
from .config import UnitPrecision, WeightQuant
from .functional import dequantize_weight, fake_quantize_act, fake_quantize_weight, quantize_weight
from .lora import LoraAdapter
from .observers import EMAObserver


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a linear layer whose weight is stored (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


class QuantLinear(nn.Module):
    def __init__(self, base: nn.Module):
        super().__init__()
        if not (isinstance(base, nn.Linear) or is_conv1d(base)):
            raise TypeError(f"QuantLinear wraps nn.Linear or Conv1D, got {type(base).__name__}")
        self.base = base
        self.conv1d = is_conv1d(base)
        w = base.weight
        self.out_features, self.in_features = (w.shape[1], w.shape[0]) if self.conv1d else w.shape
        self.adapters = nn.ModuleDict()
        self.observers = nn.ModuleDict()
        self.precision: UnitPrecision | None = None
        self.active_adapter: str | None = None
        self.observer_key: str = "default"
        self.calibrating = False
        # Modules of one unit that read the same input (Llama's q/k/v, gate/up) share its quantized
        # copy: the first computes it, the others reuse it, the last one lets it go.
        self.input_share: dict | None = None
        self.input_share_last = False
        # (WeightQuant, kind) -> ((weight version, data_ptr), cached weight); a plain dict so it is
        # never saved, and shared by every profile that uses the same weight quantizer. ``kind`` is
        # "codes" (integer codes, 1 byte per weight, + scales; dequantized at every forward) or
        # "float" (the fake-quantized float weight). ``weight_cache`` picks it: "auto" (default) keeps
        # codes for inference -- a float copy would add the float size of every quantized unit to
        # memory -- and floats under autograd, where the float weight is saved for backward anyway,
        # so one shared copy beats a new one per forward pass.
        self.weight_cache = "auto"
        self._wcache: dict[tuple[WeightQuant, str], tuple[tuple[int, int], object]] = {}
        # {(shape, device): float32 buffer} shared by the units of one model (set by make_switchable):
        # inference dequantizes into it instead of allocating a new weight per unit and token.
        self.scratch: dict | None = None
        # {WeightQuant: (codes int32 (out, in), scale, zero)}: a rounding of the frozen base weight
        # chosen elsewhere (e.g. GPTQ) that this quantizer uses instead of round-to-nearest. Kept
        # out of the state dict; whoever sets it also saves it. Full QAT (a base weight that
        # requires grad) ignores it: the weight it was computed from is changing.
        self.roundings: dict[WeightQuant, tuple[Tensor, Tensor, Tensor | None]] = {}
        # learned clipping (quant.clipping): one parameter tensor per weight quantizer, keyed by
        # clip_key (w4g32, ...), a factor per output channel or group on the range; empty: none
        self.clips = nn.ParameterDict()

    # -- weights ---------------------------------------------------------------------------------
    def weight_out_in(self) -> Tensor:
        """The base weight as (out, in) (a view for Conv1D)."""
        w = self.base.weight
        return w.t() if self.conv1d else w

    def quantized_weight(self, cfg: WeightQuant) -> Tensor:
        """Fake-quantized weight (out, in), quantized once per quantizer while the weight is unchanged.

        From the codes cache it is dequantized on every call -- bitwise what fake quantization
        gives, since both dequantize the same codes and scales -- into the shared scratch buffer when
        no gradient is recorded (the caller uses it before the next unit overwrites it).
        """
        w = self.base.weight
        grad = torch.is_grad_enabled()
        clip = None if cfg in self.roundings else self.clip(cfg)
        if grad and clip is not None and (clip.requires_grad or w.requires_grad):
            # a learned clip in training (and full QAT through it): STE on rounding, no cache
            return fake_quantize_weight_clipped(self.weight_out_in(), cfg, clip)
        if w.requires_grad and grad:  # full QAT of the base weight: STE, no cache
            wt = self.weight_out_in()
            return wt + (fake_quantize_weight(wt, cfg) - wt).detach()
        kind = self.weight_cache if self.weight_cache != "auto" else ("float" if grad else "codes")
        if cfg.bits > 8 or cfg.method != "uniform":
            kind = "float"   # no 1-byte codes
        hit = self._wcache.get((cfg, kind))
        key = (w._version, w.data_ptr(), -1 if clip is None else clip._version)
        if hit is None or hit[0] != key:
            with torch.inference_mode(False):   # normal tensors: usable later outside inference mode too
                hit = self._wcache[(cfg, kind)] = (key, self._quantize(cfg, kind))
        cached = hit[1]
        if kind == "float":
            return cached
        buf = None
        if not grad and self.scratch is not None and w.dtype == torch.float32:
            shape = (self.out_features, self.in_features)
            buf = self.scratch.get((shape, w.device))
            if buf is None:
                with torch.inference_mode(False):
                    buf = self.scratch[(shape, w.device)] = torch.empty(shape, device=w.device)
        return dequantize_weight(*cached, cfg, dtype=w.dtype, out=buf)

    def weight_codes(self, cfg: WeightQuant) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(codes int32 (out, in), scale, zero)`` of the base weight under ``cfg``: a rounding set
        with :meth:`set_rounding` if there is one, else ``quant.functional.quantize_weight``
        (round to nearest). Fake quantization, export and the runtime all take codes from here."""
        r = self.roundings.get(cfg)
        if r is not None:
            return r
        return self.quantize_like(self.weight_out_in().detach(), cfg)

    def quantize_like(self, w: Tensor, cfg: WeightQuant) -> tuple[Tensor, Tensor, Tensor | None]:
        """Codes of another weight ``w`` (out, in) of this unit's shape (e.g. with an adapter merged
        in) on this unit's grid for ``cfg``: its learned clip if it has one, else round to nearest."""
        clip = self.clip(cfg)
        with torch.no_grad():
            if clip is not None:
                return quantize_weight_clipped(w.detach(), cfg, clip.detach())
            return quantize_weight(w.detach(), cfg)

    def has_rounding(self, cfg: WeightQuant) -> bool:
        return cfg in self.roundings

    def has_own_codes(self, cfg: WeightQuant | None) -> bool:
        """Whether :meth:`weight_codes` differs from round to nearest of the weight for ``cfg`` (a
        rounding set with :meth:`set_rounding`, or a learned clip): the runtime then packs these codes."""
        return cfg is not None and (cfg in self.roundings or self.clip(cfg) is not None)

    # -- learned clipping --------------------------------------------------------------------------
    def clip(self, cfg: WeightQuant | None) -> nn.Parameter | None:
        """The learned clip of quantizer ``cfg`` (see :mod:`bitswitch.quant.clipping`), or None."""
        if not self.clips or not supports_clip(cfg):
            return None
        return self.clips[clip_key(cfg)] if clip_key(cfg) in self.clips else None

    def add_clip(self, cfg: WeightQuant, value: Tensor | None = None) -> nn.Parameter:
        """Create (factors 1: the round-to-nearest grid) or set the clip of ``cfg``; returns it."""
        if not supports_clip(cfg):
            raise ValueError(f"{UnitPrecision(cfg).spec} on the {cfg.grid} grid takes no learned clip")
        key = clip_key(cfg)
        init = init_clip(self.out_features, self.in_features, cfg, self.base.weight.device)
        if value is not None:
            if tuple(value.shape) != tuple(init.shape):
                raise ValueError(f"clip {key} has shape {list(value.shape)}, the unit needs {list(init.shape)}")
            if value.numel() and not (bool(torch.isfinite(value).all()) and float(value.min()) > 0
                                      and float(value.max()) <= 1):
                raise ValueError(f"clip {key} holds factors outside (0, 1]")
            init.copy_(value)
        if key in self.clips:
            with torch.no_grad():
                self.clips[key].copy_(init)
        else:
            self.clips[key] = nn.Parameter(init, requires_grad=False)
        self.clear_cache()
        return self.clips[key]

    def set_rounding(self, cfg: WeightQuant, codes: Tensor, scale: Tensor, zero: Tensor | None) -> None:
        """Use ``codes`` (out, in) with ``scale`` / ``zero`` (the shapes ``quantize_weight`` gives) for
        ``cfg`` instead of rounding to nearest."""
        ref_codes, ref_scale, ref_zero = quantize_weight(self.weight_out_in().detach()[:1], cfg)
        if tuple(codes.shape) != (self.out_features, self.in_features):
            raise ValueError(f"rounding codes {tuple(codes.shape)} do not match the weight "
                             f"({self.out_features}, {self.in_features})")
        if tuple(scale.shape) != (self.out_features, *ref_scale.shape[1:]) or (zero is None) != (ref_zero is None):
            raise ValueError(f"rounding scales {tuple(scale.shape)} do not match the {UnitPrecision(cfg).spec} grid")
        lo = -(2 ** (cfg.bits - 1) - 1) if cfg.symmetric else 0
        hi = 2 ** (cfg.bits - 1) - 1 if cfg.symmetric else 2 ** cfg.bits - 1
        if cfg.grid != "gguf" and codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi):
            raise ValueError(f"rounding codes leave the {cfg.bits}-bit range {lo}..{hi}")
        dev = self.base.weight.device
        self.roundings[cfg] = (codes.to(dev, torch.int32), scale.to(dev, torch.float32),
                               None if zero is None else zero.to(dev, torch.float32))
        self.clear_cache()

    def _quantize(self, cfg: WeightQuant, kind: str):
        if kind == "float" and not self.has_own_codes(cfg):
            return fake_quantize_weight(self.weight_out_in(), cfg).contiguous()
        code, scale, zero = self.weight_codes(cfg)
        if kind == "float":
            return dequantize_weight(code, scale, zero, cfg, dtype=self.base.weight.dtype).contiguous()
        # symmetric codes lie in [-127, 127], asymmetric in [0, 255]: one byte either way
        return code.to(torch.int8 if cfg.symmetric else torch.uint8), scale, zero

    def clear_cache(self) -> None:
        self._wcache.clear()

    # -- adapters --------------------------------------------------------------------------------
    def add_adapter(self, key: str, r: int, alpha: float, dropout: float,
                    generator: torch.Generator | None = None) -> None:
        adapter = LoraAdapter(self.in_features, self.out_features, r, alpha, dropout, generator)
        self.adapters[key] = adapter.to(self.base.weight.device)

    # -- static activation ranges ----------------------------------------------------------------
    def observer(self, create: bool = False) -> EMAObserver | None:
        if self.observer_key not in self.observers and create:
            self.observers[self.observer_key] = EMAObserver().to(self.base.weight.device)
        return self.observers[self.observer_key] if self.observer_key in self.observers else None

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out)."""
        p = self.precision
        if self.calibrating:
            self.observer(create=True).observe(x)
        if p is None or p.is_fp:
            y = self.base(x)
        else:
            xq = x
            if p.act is not None and not self.calibrating:
                obs = self.observer() if p.act.mode == "tensor" else None
                if p.act.mode == "tensor" and (obs is None or not obs.calibrated):
                    raise RuntimeError(f"static activation ranges for profile {self.observer_key!r} are "
                                       "not calibrated: run bitswitch.calibrate(model, batches) first")
                xq = self._quantized_input(x, p, obs)
            if p.weight is None:
                y = self.base(xq)
            else:
                y = F.linear(xq, self.quantized_weight(p.weight), self.base.bias)
        if self.active_adapter is not None:
            y = y + self.adapters[self.active_adapter](x).to(y.dtype)
        return y

    def _quantized_input(self, x: Tensor, p: UnitPrecision, obs: EMAObserver | None) -> Tensor:
        share = self.input_share
        if share is not None and share.get("x") is x and share.get("act") == p.act:
            xq = share["xq"]
        else:
            xq = fake_quantize_act(x, p.act, obs.range() if obs is not None else None)
            if share is not None:
                share.update(x=x, act=p.act, xq=xq)
        if share is not None and self.input_share_last:
            share.clear()
        return xq

    def extra_repr(self) -> str:
        spec = "fp" if self.precision is None else self.precision.spec
        return f"{self.in_features}->{self.out_features}, {spec}, adapter={self.active_adapter}"
