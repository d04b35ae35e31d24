"""Dynamic precision: per-token, per-unit widths chosen while decoding.

``engine.py``: the interface (prefill / step / rollback, widths as state); ``fake_engine.py`` and
``runtime_engine.py``: over fake quantization and over the packed runtime; ``speculative.py``:
lossless self-speculative decoding across two profiles; ``widths.py``: the widths a controller
picks from and their cost per token; ``usage.py``: realized bits and bytes per token;
``routing.py`` / ``runtime_routing.py``: per-token widths inside one forward, on fake quantization
and on the runtime; ``threshold.py``, ``gate.py``
(learned, :func:`train_gate`) and ``request.py``: the controllers; ``budget.py``: fitting a
controller's scalar to a budget; ``eval.py``: ``bitswitch eval --dynamic``; ``cli.py``:
``bitswitch generate --speculative``.
Imports the core and the runtime, never the other way round.
"""

from .engine import Engine
from .fake_engine import FakeQuantEngine
from .gate import GateController, gated, train_gate
from .request import RequestController
from .routing import routed, static_profile
from .runtime_engine import RuntimeEngine
from .runtime_routing import runtime_routed
from .speculative import Generated, greedy_generate, speculative_generate
from .threshold import ThresholdController
from .usage import Usage
from .widths import WidthSet

__all__ = ["Engine", "FakeQuantEngine", "RuntimeEngine", "Generated", "greedy_generate", "speculative_generate",
           "RequestController", "ThresholdController", "GateController", "gated", "train_gate", "Usage", "WidthSet", "routed",
           "static_profile", "runtime_routed"]
