"""RuntimeLinear: one linear unit holding really packed weights for several widths, switched
without repacking.

    y = W_spec(A_spec(x)) + bias + lora_spec(x)        x (..., in) -> y (..., out), bfloat16

``W_spec`` is the packed weight of the active spec's weight quantizer (``pack.py``: int4 / int8
kernels or the dequantize-per-call fallback, ``fp`` a bf16 weight), ``A_spec`` bitswitch's
per-token activation fake quantization (``a8`` etc.), ``lora_spec`` an optional unmerged LoRA
(bf16 A (r, in), B (out, r), scaling) kept per spec and read from the unquantized input, as
bitswitch's adapters are. The runtime computes in bf16: the kernels are fast only there (fp32
activations make them many times slower than fp32 ``F.linear``), so inputs are cast to bf16.

Specs are the profile grammar's (``fp``, ``w8``, ``w4g32a8``, ...); quantizer options (symmetric,
method) are the module's, one :class:`~bitswitch.profiles.QuantOptions` as in bitswitch. Weights are
keyed by the weight part of a spec (``w4g32a8`` and ``w4g32`` share the packed ``w4g32``), so a
width is packed once, when it is added, and ``pack_count`` counts exactly those packings. The
active spec is module state set by :func:`set_width`, never a forward argument.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import BitswitchError
from ..profiles import QuantOptions, parse_spec
from ..quant.config import ActQuant, UnitPrecision, WeightQuant
from ..quant.functional import fake_quantize_act
from ..quant.linear import is_conv1d
from .pack import Packed, pack_weight


def weight_key(cfg: WeightQuant | None) -> str:
    """The weight part of a spec: ``fp``, ``w8``, ``w4g32``."""
    return UnitPrecision(cfg, None).spec if cfg is not None else "fp"


class RuntimeLinear(nn.Module):
    """A unit (out_features, in_features) with packed weights for several specs.

    ``weights``: {weight key: packed weight}; ``precisions``: {spec: (weight key, ActQuant | None)};
    ``loras``: {spec: (A, B, scaling)}; ``active``: the spec forward runs; ``pack_count``: how many
    weights were packed. Packed tensors live in plain dicts (CPU runtime: no ``.to()``, no state dict).
    """

    def __init__(self, in_features: int, out_features: int, bias: Tensor | None = None,
                 options: QuantOptions = QuantOptions(), dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if options.act_mode != "token":
            raise BitswitchError("the runtime quantizes activations per token only: use act_mode='token'")
        self.in_features, self.out_features, self.options = in_features, out_features, options
        self.dtype = dtype   # bf16 on the kernels; float32 only with the reference kernel
        self.bias = None if bias is None else bias.detach().to(dtype).contiguous()
        self.weights: dict[str, Packed] = {}
        self.precisions: dict[str, tuple[str, ActQuant | None]] = {}
        self.loras: dict[str, tuple[Tensor, Tensor, float]] = {}
        self.active: str | None = None
        self.pack_count = 0

    @classmethod
    def from_linear(cls, linear: nn.Module, specs, options: QuantOptions = QuantOptions(),
                    kernel: str = "auto") -> RuntimeLinear:
        """Pack ``linear`` (``nn.Linear`` or transformers' ``Conv1D``) at every spec of ``specs``;
        the first one is active."""
        w = linear.weight.detach()
        w = w.t() if is_conv1d(linear) else w
        mod = cls(w.shape[1], w.shape[0], linear.bias, options)
        specs = [specs] if isinstance(specs, str) else list(specs)
        if not specs:
            raise BitswitchError("a runtime unit needs at least one spec, e.g. ['fp', 'w8', 'w4g32']")
        for spec in specs:
            mod.add_width(spec, w, kernel)
        mod.active = specs[0].strip()
        return mod

    def add_width(self, spec: str, weight: Tensor | None = None, kernel: str = "auto",
                  name: str | None = None) -> None:
        """Make ``spec`` runnable, as mode ``name`` (default: the spec itself; the runtime names modes
        by profile, since two profiles may share a spec but not an adapter); packs ``weight``
        (out, in) float only if its weight key is new."""
        spec = spec.strip()
        w_bits, group, a_bits = parse_spec(spec, spec)
        self.add_precision(name or spec, self.options.precision(w_bits, group, a_bits), weight, kernel)

    def add_precision(self, name: str, p: UnitPrecision, weight: Tensor | None = None, kernel: str = "auto",
                      codes=None) -> None:
        """Mode ``name`` runs precision ``p`` (as resolved from a profile); packs ``weight`` (or
        ``codes``: ``(codes, scale, zero)`` chosen for ``p.weight``) only if its weight key is new."""
        if p.act is not None and p.act.mode == "tensor":
            raise BitswitchError("the runtime quantizes activations per token (or in q8_0 blocks), not with "
                                 "static ranges: drop --act-mode tensor or use --engine fake")
        key = weight_key(p.weight)
        if key not in self.weights:
            if weight is None:
                packed = ", ".join(self.weights) or "none"
                raise BitswitchError(f"{key} is not packed in this unit (packed: {packed}): "
                                     "pass the float weight to add_width")
            if tuple(weight.shape) != (self.out_features, self.in_features):
                raise BitswitchError(f"weight {tuple(weight.shape)} does not match the unit "
                                     f"({self.out_features}, {self.in_features})")
            self.weights[key] = pack_weight(weight, p.weight, kernel, codes)
            self.pack_count += 1
        self.precisions[name] = (key, p.act)

    def add_lora(self, spec: str, lora_A: Tensor, lora_B: Tensor, scaling: float) -> None:
        """An unmerged adapter for mode ``spec``: A (r, in), B (out, r), stored in bf16 (tensors
        already bf16 and contiguous are kept as they are, so modes sharing an adapter share memory)."""
        if spec not in self.precisions:
            raise BitswitchError(f"no width {spec!r} in this unit: add it first "
                                 f"(have {', '.join(self.precisions)})")
        r = lora_A.shape[0]
        if tuple(lora_A.shape) != (r, self.in_features) or tuple(lora_B.shape) != (self.out_features, r):
            raise BitswitchError(f"LoRA A must be (r, {self.in_features}) and B ({self.out_features}, r), "
                                 f"got {tuple(lora_A.shape)} and {tuple(lora_B.shape)}")
        dt = self.dtype
        self.loras[spec] = (lora_A.detach().to(dt).contiguous(), lora_B.detach().to(dt).contiguous(),
                            float(scaling))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) any float dtype -> (..., out) bf16 (float32 with the reference kernel)."""
        if self.active is None:
            raise BitswitchError("no width is active: call bitswitch.runtime.set_width(module, spec)")
        key, act = self.precisions[self.active]
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        # quantize before the cast: fake quantization's levels come from the float32 input
        xq = (x if act is None else fake_quantize_act(x, act)).to(self.dtype).contiguous()
        x = x.to(self.dtype)
        y = self.weights[key].matmul(xq)
        if self.bias is not None:
            y = y + self.bias
        lora = self.loras.get(self.active)
        if lora is not None:
            a, b, scaling = lora
            y = y + (x @ a.t()) @ b.t() * scaling
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        kinds = ", ".join(f"{k}:{w.kind}" for k, w in self.weights.items())
        return f"{self.in_features}->{self.out_features}, active={self.active}, weights=[{kinds}]"


def set_width(module: nn.Module, spec: str) -> int:
    """Make ``spec`` active in ``module`` (a RuntimeLinear, or every RuntimeLinear inside it).

    Never packs: a unit that lacks ``spec`` is a one-line BitswitchError, and then no unit is
    switched. Returns how many units were switched.
    """
    spec = spec.strip()
    units = [m for m in module.modules() if isinstance(m, RuntimeLinear)]
    if not units:
        raise BitswitchError(f"{type(module).__name__} holds no RuntimeLinear units")
    for m in units:
        if spec not in m.precisions:
            raise BitswitchError(f"width {spec!r} is not packed in a unit ({', '.join(m.precisions)} are): "
                                 "add it with add_width before switching")
    for m in units:
        m.active = spec
    return len(units)
