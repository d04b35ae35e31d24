"""One LoRA adapter (A, B, dropout, scaling), with peft's initialisation.

``delta(x) = B(A(dropout(x))) * alpha / r``; A is Kaiming-uniform (a = sqrt(5)), B zeros, so a
new adapter changes nothing. The adapter stays in float32 whatever the base dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LoraAdapter(nn.Module):
    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float,
                 generator: torch.Generator | None = None):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / r

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out) in float32."""
        x = self.dropout(x.to(self.lora_A.dtype))
        return (x @ self.lora_A.t()) @ self.lora_B.t() * self.scaling

    def delta_weight(self) -> Tensor:
        """B A * scaling, shape (out, in): what merging adds to the base weight."""
        return self.lora_B @ self.lora_A * self.scaling
