"""MICA's mapping network: L2-normalised ArcFace code (512) -> FLAME identity coefficients.

Layout (and state-dict names, identical to the official ``MappingNetwork`` so ``mica.tar``'s
``flameModel`` entries ``regressor.network.{i}.weight/bias`` and ``regressor.output.weight/bias``
map onto ``network.{i}.*`` / ``output.*`` by stripping ``regressor.``):

- ``network`` is an ``nn.ModuleList`` holding *only* Linear layers (the activations are functional,
  so they take no index): ``network.0`` = Linear(512 -> 300), ``network.1 .. network.{n_layers}`` =
  the ``n_layers`` hidden Linear(300 -> 300) layers. ``mapping_layers = 3`` gives ``network.0..3``.
- every Linear of ``network`` is followed by leaky ReLU (slope 0.2), the first one included;
- skip connection when ``n_layers > 5``: after ``network.{n_layers // 2}`` (and its activation) the
  input code is concatenated in front, ``cat([z, h])``, so ``network.{n_layers // 2 + 1}`` takes
  512 + 300 inputs;
- ``output`` = Linear(300 -> out_dim), no activation.

Init: Kaiming normal for leaky ReLU (a = 0.2, fan_in) on the Linear layers of ``network``, PyTorch's
default bias init; ``output`` keeps PyTorch's default init with its weight multiplied by 0.25.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MappingNetwork", "LEAKY_SLOPE", "OUTPUT_WEIGHT_SCALE"]

LEAKY_SLOPE = 0.2
OUTPUT_WEIGHT_SCALE = 0.25
# More hidden layers than this add the skip connection.
SKIP_MIN_LAYERS = 5


class MappingNetwork(nn.Module):
    """MLP from an identity code to FLAME shape coefficients.

    Args:
        in_dim: size of the input code (512, the ArcFace embedding).
        hidden: width of the hidden layers (300).
        n_layers: number of hidden ``hidden x hidden`` layers (``model.mapping_layers``, 3).
        out_dim: number of FLAME shape coefficients (``model.n_shape``, 300).
    """

    def __init__(self, in_dim: int = 512, hidden: int = 300, n_layers: int = 3, out_dim: int = 300) -> None:
        super().__init__()
        if n_layers < 0 or min(in_dim, hidden, out_dim) < 1:
            raise ValueError(f"MappingNetwork needs positive sizes and n_layers >= 0, got "
                             f"in_dim={in_dim}, hidden={hidden}, n_layers={n_layers}, out_dim={out_dim}")
        self.in_dim, self.hidden, self.n_layers, self.out_dim = in_dim, hidden, n_layers, out_dim
        self.skips: list[int] = [n_layers // 2] if n_layers > SKIP_MIN_LAYERS else []
        layers = [nn.Linear(in_dim, hidden)]
        for i in range(1, n_layers + 1):
            layers.append(nn.Linear(hidden + (in_dim if i - 1 in self.skips else 0), hidden))
        self.network = nn.ModuleList(layers)
        self.output = nn.Linear(hidden, out_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """Kaiming normal (leaky ReLU a=0.2, fan_in) on ``network``; ``output`` weight x 0.25."""
        for layer in self.network:
            nn.init.kaiming_normal_(layer.weight, a=LEAKY_SLOPE, mode="fan_in", nonlinearity="leaky_relu")
        with torch.no_grad():
            self.output.weight.mul_(OUTPUT_WEIGHT_SCALE)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim)`` code -> ``(B, out_dim)`` FLAME shape coefficients."""
        h = z
        for i, layer in enumerate(self.network):
            h = F.leaky_relu(layer(h), negative_slope=LEAKY_SLOPE)
            if i in self.skips:
                h = torch.cat([z, h], dim=1)
        return self.output(h)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden={self.hidden}, n_layers={self.n_layers}, out_dim={self.out_dim}, skips={self.skips}"
