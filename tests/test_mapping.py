"""Mapping network: parameter count by hand, official layer names, skip connection, init statistics."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.mapping import MappingNetwork


def hand_count(n_layers: int, n_shape: int = 300) -> int:
    skip = n_layers > 5
    n = 512 * 300 + 300
    n += n_layers * (300 * 300 + 300) + (512 * 300 if skip else 0)
    return n + 300 * n_shape + n_shape


@pytest.mark.parametrize("n_layers", [0, 3, 5, 6, 8])
def test_parameter_count(n_layers):
    net = MappingNetwork(512, 300, n_layers, 300)
    assert sum(p.numel() for p in net.parameters()) == hand_count(n_layers)


def test_names_match_official_checkpoint():
    # mica.tar (mapping_layers 3): regressor.network.0..3.{weight,bias}, regressor.output.{weight,bias}
    names = list(MappingNetwork(512, 300, 3, 300).state_dict())
    expected = [f"network.{i}.{p}" for i in range(4) for p in ("weight", "bias")] + ["output.weight", "output.bias"]
    assert names == expected
    sd = MappingNetwork(512, 300, 7, 100).state_dict()
    assert sd["network.4.weight"].shape == (300, 812)  # skip after network.3 (7 // 2), cat([z, h])
    assert sd["output.weight"].shape == (100, 300)


def _reference(net: MappingNetwork, z: torch.Tensor) -> torch.Tensor:
    """Second implementation from the raw weights (MICA_FACTS: skip at the middle layer, code first)."""
    sd = net.state_dict()
    h = z
    n = net.n_layers
    for i in range(n + 1):
        h = F.leaky_relu(h @ sd[f"network.{i}.weight"].T + sd[f"network.{i}.bias"], 0.2)
        if n > 5 and i == n // 2:
            h = torch.cat([z, h], 1)
    return h @ sd["output.weight"].T + sd["output.bias"]


@pytest.mark.parametrize("n_layers", [3, 7])
def test_forward_matches_reference(n_layers):
    torch.manual_seed(0)
    net = MappingNetwork(512, 300, n_layers, 300)
    z = F.normalize(torch.randn(5, 512), dim=1)
    with torch.no_grad():
        torch.testing.assert_close(net(z), _reference(net, z))


def test_init_statistics():
    torch.manual_seed(0)
    net = MappingNetwork(512, 300, 3, 300)
    gain = math.sqrt(2.0 / (1 + 0.2 ** 2))
    for layer in net.network:
        std = layer.weight.std().item()
        expected = gain / math.sqrt(layer.in_features)
        assert abs(std / expected - 1) < 0.03, (std, expected)
        assert abs(layer.weight.mean().item()) < 3 * expected / math.sqrt(layer.weight.numel())
    # output: PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) scaled by 0.25
    w = net.output.weight
    bound = 0.25 / math.sqrt(300)
    assert w.abs().max().item() <= bound + 1e-7
    assert abs(w.std().item() / (bound / math.sqrt(3)) - 1) < 0.03


def test_bad_sizes():
    with pytest.raises(ValueError):
        MappingNetwork(512, 300, -1, 300)
