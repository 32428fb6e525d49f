"""MICA's training loss."""
from __future__ import annotations

import torch
from torch import nn

# Loss scale of MICA: metres -> millimetres.
LOSS_SCALE = 1000.0


class VertexLoss(nn.Module):
    """MICA's masked per-vertex L1: ``mean_{v,xyz}(|pred - gt| * w_v) * 1000``.

    Args:
        weights: ``(V,)`` per-vertex weights (mask weights, or ones for ``train.use_mask False``).
    """

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32).reshape(-1), persistent=False)

    def per_sample(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """``(N, V, 3)`` x2 in metres -> ``(N,)`` loss of each sample."""
        diff = (pred.float() - gt.float()).abs() * self.weights.to(pred.device)[None, :, None]
        return diff.mean(dim=(1, 2)) * LOSS_SCALE

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """``(N, V, 3)`` x2 in metres -> scalar loss (mean over samples, vertices and xyz)."""
        return self.per_sample(pred, gt).mean()
