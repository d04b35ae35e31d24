"""Per-tensor EMA min/max observer for static activation quantization."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EMAObserver(nn.Module):
    """Tracks a running (min, max) of the tensors it sees.

    The first batch sets the range; later ones move it by ``momentum`` (an exponential moving
    average, as torch.ao's MovingAverageMinMaxObserver). Buffers are saved with the adapters.
    """

    def __init__(self, momentum: float = 0.1):
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"observer momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("min_val", torch.tensor(0.0))
        self.register_buffer("max_val", torch.tensor(0.0))
        self.register_buffer("count", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        lo, hi = torch.aminmax(x.detach().float())
        if self.count == 0:
            self.min_val.copy_(lo)
            self.max_val.copy_(hi)
        else:
            self.min_val.lerp_(lo, self.momentum)
            self.max_val.lerp_(hi, self.momentum)
        self.count += 1

    @property
    def calibrated(self) -> bool:
        return bool(self.count > 0)

    def range(self) -> tuple[Tensor, Tensor]:
        return self.min_val, self.max_val
