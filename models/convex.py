"""The model of the convex experiment: a parameter vector theta (section 5)."""

from __future__ import annotations

import torch
from torch import nn


class ParameterVector(nn.Module):
    """``theta`` in R^d, initialised at ``init_scale * N(0, I)`` (seeded); ``forward()`` returns it."""

    def __init__(self, dim: int, init_scale: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        self.theta = nn.Parameter(float(init_scale) * torch.randn(int(dim), generator=g))

    def forward(self) -> torch.Tensor:
        return self.theta
