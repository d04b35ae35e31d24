"""The switchable runtime: low-bit weights really packed and multiplied by torch's CPU kernels
(int4 / int8 weight-only, bf16 activations), several widths per unit, switched without repacking,
and a lean decoder with a static KV cache that generates on them.

``pack.py``: packed weights and the exact map from bitswitch's fake-quantization grids onto them;
``linear.py``: :class:`RuntimeLinear` and :func:`set_width`; ``config.py``: the decoder shape;
``kv_cache.py``; ``model.py``: :class:`RuntimeModel`; ``build.py``: a switchable model packed at
every profile; ``generate.py``: the decode loop; ``engine.py``: :class:`Runtime`, the entry point.
Imports the core (``quant/``, ``profiles``, ``switching``), never the other way round.
"""

from .engine import Runtime
from .generate import GenerateOutput
from .linear import RuntimeLinear, set_width, weight_key
from .pack import (PackedBF16, PackedDequant, PackedInt4, PackedInt8, choose_kernel, int4_available,
                   pack_int4, pack_int8, pack_weight)

__all__ = ["Runtime", "GenerateOutput", "RuntimeLinear", "set_width", "weight_key", "PackedBF16",
           "PackedDequant", "PackedInt4", "PackedInt8", "choose_kernel", "int4_available", "pack_int4",
           "pack_int8", "pack_weight"]
