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
    for width, blocks in zip((64, 128, 256, 512), layers, strict=True):
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


FROZEN_NAMES = ("conv1.", "bn1.", "prelu.", "layer1.", "layer2.", "layer3.")


def _train_steps(freeze_bn: bool, steps: int = 3):
    """``steps`` AdamW steps of a frozen iresnet18 + mapping network in train mode, as MICA's trainer
    runs them (``train()`` on the whole network). Returns (state before, state after, arcface, regressor state before)."""
    torch.manual_seed(0)
    arcface = freeze_for_mica(random_arcface("iresnet18"), freeze_bn=freeze_bn)
    regressor = MappingNetwork(512, 300, 3, 300)
    arcface.train()
    regressor.train()
    before = {k: v.clone() for k, v in arcface.state_dict().items()}
    reg_before = {k: v.clone() for k, v in regressor.state_dict().items()}
    opt = torch.optim.AdamW(list(arcface.parameters()) + list(regressor.parameters()), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        images = torch.rand(4, 3, 112, 112, generator=gen) * 2 - 1
        loss = regressor(F.normalize(arcface(images), dim=1)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, arcface.state_dict(), arcface, reg_before, regressor


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_freezing_optimiser_steps(freeze_bn):
    before, after, arcface, reg_before, regressor = _train_steps(freeze_bn)
    # frozen parameters (convolutions, BN affine, PReLU) never move and get no gradient, in both modes
    for k, v in arcface.named_parameters():
        if k.startswith(FROZEN_NAMES):
            assert not v.requires_grad and v.grad is None, k
            assert torch.equal(v, before[k]), f"frozen {k} changed"
    assert arcface.layer4.training and arcface.layer4[0].bn1.training
    changed = [k for k in after if k.startswith("layer4.") and not torch.equal(after[k], before[k])]
    assert "layer4.0.conv1.weight" in changed and "layer4.0.bn1.running_mean" in changed  # weights AND BN stats
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert torch.equal(after["features.weight"], before["features.weight"])  # fixed at 1
    assert all(not torch.equal(v, reg_before[k]) for k, v in regressor.state_dict().items())
    frozen_bn = [m for f in arcface.frozen_modules() for m in f.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = ("bn1.running_mean", "layer1.0.bn1.running_mean", "layer1.0.bn2.running_var",
             "layer1.0.downsample.1.running_mean", "layer3.1.bn3.running_var", "layer1.0.bn1.num_batches_tracked")
    if freeze_bn:  # unlike MICA: the frozen stages stay in eval mode, running statistics untouched
        assert all(not m.training for m in frozen_bn)
        for k in stats:
            assert torch.equal(after[k], before[k]), k
    else:  # as MICA: train mode, running statistics follow the batches
        assert all(m.training for m in frozen_bn)
        for k in stats:
            assert not torch.equal(after[k], before[k]), k
        assert int(after["layer1.0.bn1.num_batches_tracked"]) == int(before["layer1.0.bn1.num_batches_tracked"]) + 3


def test_frozen_bn_train_mode_uses_batch_statistics():
    """Default (as MICA): layer1's first BN normalises with the batch's own mean and variance, checked
    against a hand computation; with freeze_bn it uses the running statistics instead."""
    torch.manual_seed(0)
    for freeze_bn in (False, True):
        arcface = freeze_for_mica(random_arcface("iresnet18"), freeze_bn=freeze_bn).train()
        bn = arcface.layer1[0].bn1
        x = torch.randn(6, 64, 8, 8) * 3 + 1
        mean, var = x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)
        if freeze_bn:
            mean, var = bn.running_mean, bn.running_var
        expected = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + bn.eps)
        expected = expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
        with torch.no_grad():
            torch.testing.assert_close(bn(x), expected, rtol=1e-4, atol=1e-4)


def test_frozen_stages_are_not_converted_to_synchronised_batchnorm():
    """With several processes only BatchNorm layers with trainable parameters are synchronised: the
    frozen stages keep plain per-process BatchNorm (as the original's), in both modes."""
    from micalib.engine.sync_batchnorm import AllReduceBatchNorm, convert_sync_batchnorm

    for freeze_bn in (False, True):
        arcface = convert_sync_batchnorm(freeze_for_mica(random_arcface("iresnet18"), freeze_bn=freeze_bn).train())
        frozen = [m for f in arcface.frozen_modules() for m in f.modules()
                  if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert frozen and not any(isinstance(m, AllReduceBatchNorm) for m in frozen)
        assert all(m.training != freeze_bn for m in frozen)
        trainable = [m for m in arcface.layer4.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert trainable and all(isinstance(m, AllReduceBatchNorm) for m in trainable)
        assert isinstance(arcface.bn2, AllReduceBatchNorm) and isinstance(arcface.features, AllReduceBatchNorm)


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
