"""The pure quantization core: configs, quant maths, observers and the switchable linear wrapper.

Nothing in this package imports the rest of bitswitch.
"""

from .config import ActQuant, WeightQuant, UnitPrecision
from .linear import QuantLinear

__all__ = ["ActQuant", "WeightQuant", "UnitPrecision", "QuantLinear"]
