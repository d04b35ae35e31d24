"""Validated, hashable quantization configs (kept apart from the modules that use them).

A :class:`UnitPrecision` is what one unit runs at: a weight quantizer and an activation quantizer,
each ``None`` for "left in floating point". Configs are frozen dataclasses so that a
:class:`WeightQuant` can key the fake-quantized weight cache.
"""

from __future__ import annotations

from dataclasses import dataclass

WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
ACT_BITS = tuple(range(4, 17))
METHODS = ("uniform", "log")
GRIDS = ("independent", "nested", "gguf")
GGUF_BLOCK = 32           # llama.cpp's block of input columns (quant.gguf_grid.BLOCK)
GGUF_BITS = (4, 5, 8)
ACT_MODES = ("token", "tensor", "q8_0")


@dataclass(frozen=True)
class WeightQuant:
    """Weight fake quantization.

    bits: 2-8 or 16. group_size: None = one scale per output channel, N = one per N input columns.
    symmetric: zero point fixed at 0 (codes in [-(2^(b-1)-1), 2^(b-1)-1]) or asymmetric
    (codes in [0, 2^b-1] with a zero point). method: ``uniform`` or ``log`` (powers of two).
    grid: ``independent`` (each width its own scale), ``nested`` (every width the most
    significant bits of one symmetric int8 master, see ``quant.functional.slice_codes``) or
    ``gguf`` (llama.cpp's block formats bit for bit, see ``quant.gguf_grid``: blocks of 32 input
    columns, fp16 scale per block; w8 = Q8_0 (symmetric only), w4 = Q4_0 (symmetric) or Q4_1
    (asymmetric: fp16 scale and fp16 minimum per block), w5 = Q5_0 / Q5_1; group size 32, uniform,
    no other width).
    """

    bits: int
    group_size: int | None = None
    symmetric: bool = True
    method: str = "uniform"
    grid: str = "independent"

    def __post_init__(self):
        if self.bits not in WEIGHT_BITS:
            raise ValueError(f"weight bits must be 2-8 or 16, got {self.bits}")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group size must be a positive number of input columns, got {self.group_size}")
        if self.method not in METHODS:
            raise ValueError(f"quantizer method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "log" and not self.symmetric:
            raise ValueError("the log quantizer is symmetric (sign + power-of-two magnitude)")
        if self.grid not in GRIDS:
            raise ValueError(f"weight grid must be one of {', '.join(GRIDS)}, got {self.grid!r}")
        if self.grid == "nested" and (self.bits > 8 or not self.symmetric or self.method != "uniform"):
            raise ValueError("the nested grid slices a symmetric uniform int8 master: it takes 2-8 bits, "
                             "symmetric, uniform")
        if self.grid == "gguf":
            if self.bits not in GGUF_BITS:
                raise ValueError(f"the gguf grid has Q8_0, Q4_0/Q4_1 and Q5_0/Q5_1: w{self.bits} has no GGUF type "
                                 "(use w4, w5 or w8)")
            if self.group_size != GGUF_BLOCK or self.method != "uniform":
                raise ValueError(f"the gguf grid is uniform in blocks of {GGUF_BLOCK} input columns, got "
                                 f"group size {self.group_size} and method {self.method!r}")


@dataclass(frozen=True)
class ActQuant:
    """Activation (unit input) fake quantization.

    mode ``token``: dynamic, one range per token (last dim), nothing to calibrate.
    mode ``tensor``: static, one range per tensor from an EMA observer filled by calibration.
    mode ``q8_0``: what llama.cpp does to the activations of its Q4/Q5/Q8 dot products on the CPU:
    dynamic, symmetric 8 bits in blocks of 32 along the last dim, ``d = amax / 127``,
    ``c = roundf(x / d)``, ``x_hat = c * fp16(d)`` (Q8_0; the Q8_1 blocks paired with Q4_1/Q5_1
    hold the same values plus a block sum). The gguf weight grid resolves ``a8`` to it.
    """

    bits: int
    mode: str = "token"
    symmetric: bool = False
    method: str = "uniform"

    def __post_init__(self):
        if self.bits not in ACT_BITS:
            raise ValueError(f"activation bits must be 4-16, got {self.bits}")
        if self.mode not in ACT_MODES:
            raise ValueError(f"activation mode must be one of {', '.join(ACT_MODES)}, got {self.mode!r}")
        if self.method not in METHODS:
            raise ValueError(f"quantizer method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "log" and not self.symmetric:
            raise ValueError("the log quantizer is symmetric (sign + power-of-two magnitude)")
        if self.mode == "q8_0" and (self.bits != 8 or not self.symmetric or self.method != "uniform"):
            raise ValueError("q8_0 activations are llama.cpp's symmetric uniform 8-bit blocks: a8 only")


@dataclass(frozen=True)
class UnitPrecision:
    """What one unit runs at; ``None`` parts are left in floating point."""

    weight: WeightQuant | None = None
    act: ActQuant | None = None

    @property
    def is_fp(self) -> bool:
        return self.weight is None and self.act is None

    @property
    def spec(self) -> str:
        """The profile-grammar spelling: ``fp``, ``w8a8``, ``w4g32a8``, ``w4`` (weights only)."""
        if self.is_fp:
            return "fp"
        w = "w" + ("fp" if self.weight is None else str(self.weight.bits))
        if self.weight is not None and self.weight.group_size:
            w += f"g{self.weight.group_size}"
        return w + (f"a{self.act.bits}" if self.act is not None else "")
