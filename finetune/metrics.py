"""Metrics of the downstream tasks that torchmetrics does not provide: depth (delta_1, abs-rel, RMSE)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class DepthMetrics(Metric):
    """delta_1 (share of pixels with max(pred/gt, gt/pred) < 1.25), abs-rel and RMSE over valid pixels.

    Accumulates sums over every pixel of every image (no per-image averaging), so the values are the
    pixel-level means over the whole dev set; states reduce by summation across processes."""

    full_state_update = False

    def __init__(self, threshold: float = 1.25, min_depth: float = 1e-3) -> None:
        super().__init__()
        self.threshold, self.min_depth = threshold, min_depth
        for name in ("n", "delta_hits", "abs_rel", "sq_err"):
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred, target = pred.detach().double().flatten(), target.detach().double().flatten()
        valid = target > self.min_depth
        pred, target = pred[valid].clamp(min=self.min_depth), target[valid]
        ratio = torch.maximum(pred / target, target / pred)
        self.n += target.numel()
        self.delta_hits += (ratio < self.threshold).sum()
        self.abs_rel += ((pred - target).abs() / target).sum()
        self.sq_err += (pred - target).pow(2).sum()

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.n.clamp(min=1)
        return {
            "delta_1": (self.delta_hits / n).float(),
            "abs_rel": (self.abs_rel / n).float(),
            "rmse": (self.sq_err / n).sqrt().float(),
        }
