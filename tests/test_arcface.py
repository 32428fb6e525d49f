"""IResNet: insightface names, parameter count vs a hand count from the block structure, freezing."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.arcface import ARCFACE_ARCHS, IResNet, create_arcface, freeze_for_mica
from models.mapping import MappingNetwork
from tests.synthetic_weights import random_arcface
from utils.checkpoint import KNOWN_IRESNETS


def _bn(c: int) -> int:
    return 2 * c  # weight + bias (running stats are buffers)


def hand_param_count(layers) -> int:
    """Parameters of an IResNet computed from the published block structure."""
    n = 3 * 64 * 9 + _bn(64) + 64  # stem conv3x3 (no bias), BN, PReLU
    in_ch = 64
    for width, blocks in zip((64, 128, 256, 512), layers):
        for b in range(blocks):
            cin = in_ch if b == 0 else width
            n += _bn(cin) + cin * width * 9 + _bn(width) + width + width * width * 9 + _bn(width)
            if b == 0:  # every stage starts with stride 2 -> 1x1 conv + BN shortcut
                n += cin * width + _bn(width)
        in_ch = width
    n += _bn(512) + (512 * 7 * 7) * 512 + 512 + _bn(512)  # bn2, fc, features
    return n


@pytest.mark.parametrize("arch", list(ARCFACE_ARCHS))
def test_parameter_count_matches_hand_count(arch):
    model = create_arcface(arch)
    assert sum(p.numel() for p in model.parameters()) == hand_param_count(ARCFACE_ARCHS[arch])


def test_iresnet100_size_matches_published_figure():
    # insightface's model zoo lists iresnet100 (r100) at 65.2 M parameters.
    assert abs(hand_param_count(ARCFACE_ARCHS["iresnet100"]) / 1e6 - 65.2) < 0.05
    # state-dict entries: stem 7, plain block 18, +6 for the 4 shortcut blocks, head 12
    assert len(create_arcface("iresnet100").state_dict()) == 7 + 49 * 18 + 4 * 6 + 12


def test_insightface_module_names_and_shapes():
    sd = create_arcface("iresnet18").state_dict()
    expected = {
        "conv1.weight": (64, 3, 3, 3), "bn1.running_var": (64,), "prelu.weight": (64,),
        "layer1.0.bn1.weight": (64,), "layer1.0.conv1.weight": (64, 64, 3, 3), "layer1.0.prelu.weight": (64,),
        "layer1.0.conv2.weight": (64, 64, 3, 3), "layer1.0.bn3.bias": (64,),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1), "layer1.0.downsample.1.running_mean": (64,),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer4.1.conv2.weight": (512, 512, 3, 3),
        "bn2.weight": (512,), "fc.weight": (512, 25088), "fc.bias": (512,), "features.weight": (512,),
        "features.running_mean": (512,),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "layer1.1.downsample.0.weight" not in sd
    model = create_arcface("iresnet18")
    assert not model.features.weight.requires_grad and torch.all(model.features.weight == 1)
    assert all(m.eps == 1e-5 for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def test_output_shape_and_unknown_arch():
    model = random_arcface("iresnet18").eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert out.shape == (2, 512) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="iresnet101"):
        create_arcface("iresnet101")
    with pytest.raises(ValueError):
        IResNet([2, 2, 2])


def test_checkpoint_arch_table_agrees():
    assert KNOWN_IRESNETS == ARCFACE_ARCHS


def test_blocks_are_residual_and_stride_on_second_conv():
    """One block recomputed with functional ops (second implementation)."""
    torch.manual_seed(0)
    block = random_arcface("iresnet18").layer2[0].eval()
    x = torch.randn(1, 64, 28, 28)

    def bn(m, t):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    h = F.conv2d(bn(block.bn1, x), block.conv1.weight, padding=1)
    h = F.prelu(bn(block.bn2, h), block.prelu.weight)
    h = bn(block.bn3, F.conv2d(h, block.conv2.weight, stride=2, padding=1))
    sc = bn(block.downsample[1], F.conv2d(x, block.downsample[0].weight, stride=2))
    with torch.no_grad():
        torch.testing.assert_close(block(x), h + sc, rtol=1e-5, atol=1e-5)


def test_freezing_one_optimiser_step():
    torch.manual_seed(0)
    arcface = freeze_for_mica(random_arcface("iresnet18"))
    regressor = MappingNetwork(512, 300, 3, 300)
    arcface.train()
    regressor.train()
    frozen_names = ("conv1.", "bn1.", "prelu.", "layer1.", "layer2.", "layer3.")
    before = {k: v.clone() for k, v in arcface.state_dict().items()}
    reg_before = {k: v.clone() for k, v in regressor.state_dict().items()}
    assert all(not m.training for m in arcface.frozen_modules()) and arcface.layer4.training
    opt = torch.optim.AdamW(list(arcface.parameters()) + list(regressor.parameters()), lr=1e-3)
    images = torch.rand(4, 3, 112, 112) * 2 - 1
    loss = regressor(F.normalize(arcface(images), dim=1)).square().mean()
    loss.backward()
    opt.step()
    after = arcface.state_dict()
    for k, v in after.items():
        if k.startswith(frozen_names):
            assert torch.equal(v, before[k]), f"frozen {k} changed"
    assert arcface.conv1.weight.grad is None and arcface.layer3[0].conv1.weight.grad is None
    changed = [k for k in after if k.startswith("layer4.") and not torch.equal(after[k], before[k])]
    assert "layer4.0.conv1.weight" in changed and "layer4.0.bn1.running_mean" in changed  # weights AND BN stats
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert torch.equal(after["features.weight"], before["features.weight"])  # fixed at 1
    assert all(not torch.equal(v, reg_before[k]) for k, v in regressor.state_dict().items())


def test_fused_inference_copy_matches():
    from models.arcface import fuse_for_inference

    model = random_arcface("iresnet18", 1)
    fused = fuse_for_inference(model)
    x = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref, got = model(x), fused(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert n_bn == sum(ARCFACE_ARCHS["iresnet18"])  # only each block's pre-conv bn1 is left
    assert isinstance(model.bn2, torch.nn.BatchNorm2d)  # the original is untouched
