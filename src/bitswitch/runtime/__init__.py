"""The switchable runtime: low-bit weights really packed and multiplied by torch's CPU kernels
(int4 / int8 weight-only, bf16 activations), several widths per unit, switched without repacking.

``pack.py``: packed weights and the exact map from bitswitch's fake-quantization grids onto them;
``linear.py``: :class:`RuntimeLinear` and :func:`set_width`. Imports the core (``quant/``,
``profiles``), never the other way round.
"""

from .linear import RuntimeLinear, set_width, weight_key
from .pack import (PackedBF16, PackedDequant, PackedInt4, PackedInt8, choose_kernel, int4_available,
                   pack_int4, pack_int8, pack_weight)

__all__ = ["RuntimeLinear", "set_width", "weight_key", "PackedBF16", "PackedDequant", "PackedInt4",
           "PackedInt8", "choose_kernel", "int4_available", "pack_int4", "pack_int8", "pack_weight"]
