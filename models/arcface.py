"""ArcFace IResNet backbones (insightface ``arcface_torch`` layout) and MICA's partial freezing.

Module names follow insightface's ``recognition/arcface_torch/backbones/iresnet.py`` exactly, so a
Glint360K ``backbone.pth`` and the ``arcface`` entry of ``mica.tar`` load with ``strict=True``:

- stem: ``conv1`` (3x3, 64, stride 1, no bias), ``bn1``, ``prelu``;
- ``layer1..layer4`` (64, 128, 256, 512 channels, each starting with stride 2) of ``IBasicBlock``
  with ``bn1, conv1, bn2, prelu, conv2 (strided), bn3`` and a ``downsample.0/1`` (1x1 conv + BN)
  shortcut when the shape changes;
- head: ``bn2`` (512x7x7), flatten, ``dropout``, ``fc`` (25088 -> 512), ``features``
  (BatchNorm1d(512) whose weight is fixed at 1 and not trained).

Input ``(B, 3, 112, 112)`` RGB scaled to [-1, 1]; output ``(B, 512)`` (not normalised; MICA
L2-normalises it). No autocast or device calls inside: precision and device are the caller's.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "IBasicBlock",
    "IResNet",
    "ARCFACE_ARCHS",
    "create_arcface",
    "freeze_for_mica",
    "fuse_for_inference",
    "iresnet18",
    "iresnet34",
    "iresnet50",
    "iresnet100",
    "iresnet200",
]

BN_EPS = 1e-5
EMBEDDING_DIM = 512
INPUT_SIZE = 112
# Spatial size of layer4's output for a 112x112 input (four stride-2 stages).
FEATURE_SIZE = 7
STAGE_WIDTHS = (64, 128, 256, 512)

# Blocks per stage of each depth (insightface arcface_torch).
ARCFACE_ARCHS: dict[str, list[int]] = {
    "iresnet18": [2, 2, 2, 2],
    "iresnet34": [3, 4, 6, 3],
    "iresnet50": [3, 4, 14, 3],
    "iresnet100": [3, 13, 30, 3],
    "iresnet200": [6, 26, 60, 6],
}


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-norm residual block: BN, conv3x3, BN, PReLU, conv3x3 (strided), BN, + shortcut.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        stride: stride of the second convolution (and of the shortcut).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.conv1 = _conv3x3(in_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.prelu = nn.PReLU(out_ch)
        self.conv2 = _conv3x3(out_ch, out_ch, stride)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.downsample: nn.Sequential | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_ch, H, W) -> (B, out_ch, H/stride, W/stride)``."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """ArcFace IResNet (insightface arcface_torch names).

    Args:
        layers: blocks per stage, e.g. ``[3, 13, 30, 3]`` for iresnet100.
        dropout: dropout probability before ``fc`` (0 in arcface_torch's released models).
        num_features: embedding size (512).

    ``freeze_mica`` (set by :func:`freeze_for_mica`) makes the stem and layer1..layer3 run without
    gradients, as MICA trains only layer4 and the head. As in MICA, ``train()`` still puts their
    BatchNorm layers in train mode (batch statistics, running statistics updated) unless
    ``freeze_bn`` is also set (then they stay in eval mode; a deviation, see :func:`freeze_for_mica`).
    """

    def __init__(self, layers: Sequence[int], dropout: float = 0.0, num_features: int = EMBEDDING_DIM) -> None:
        super().__init__()
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"IResNet needs 4 stages of >= 1 block each, got {list(layers)}")
        self.layers_per_stage = [int(n) for n in layers]
        self.freeze_mica = False
        self.freeze_bn = False
        in_ch = STAGE_WIDTHS[0]
        self.conv1 = _conv3x3(3, in_ch)
        self.bn1 = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.prelu = nn.PReLU(in_ch)
        stages = []
        for width, n_blocks in zip(STAGE_WIDTHS, self.layers_per_stage, strict=True):
            blocks = [IBasicBlock(in_ch, width, stride=2)]
            blocks += [IBasicBlock(width, width) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout, inplace=False)
        self.fc = nn.Linear(in_ch * FEATURE_SIZE * FEATURE_SIZE, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)
        self.init_weights()

    def init_weights(self) -> None:
        """insightface's initialisation: conv weights N(0, 0.1), BN weight 1 / bias 0; ``features``
        weight fixed at 1 without gradient."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        """The modules MICA freezes: stem (conv1, bn1, prelu) and layer1..layer3."""
        return [self.conv1, self.bn1, self.prelu, self.layer1, self.layer2, self.layer3]

    def train(self, mode: bool = True) -> IResNet:
        """As ``nn.Module.train``, but frozen modules stay in eval mode when ``freeze_bn`` is set."""
        super().train(mode)
        if self.freeze_mica and self.freeze_bn:
            for m in self.frozen_modules():
                m.eval()
        return self

    def _stem_to_layer3(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 112, 112) -> (B, 512, 7, 7)`` (output of layer4)."""
        if self.freeze_mica:
            with torch.no_grad():
                x = self._stem_to_layer3(x)
        else:
            x = self._stem_to_layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 512, 7, 7) -> (B, 512)``: bn2, flatten, dropout, fc, features."""
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 112, 112)`` in [-1, 1] -> ``(B, 512)`` ArcFace embedding (not normalised)."""
        return self.forward_head(self.forward_features(x))


def freeze_for_mica(model: IResNet, freeze_bn: bool = False) -> IResNet:
    """Freeze the stem and layer1..layer3 as MICA does; layer4 and the head keep training.

    Frozen parameters get ``requires_grad=False`` and the frozen part runs under ``torch.no_grad``.
    By default (``freeze_bn=False``), as MICA, whose trainer calls ``train()`` on the whole network,
    their BatchNorm layers still normalise with the batch's statistics and update their running
    statistics in train mode (these statistics end up in the checkpoint). ``freeze_bn=True`` keeps
    the frozen part in eval mode even after ``model.train()`` (running statistics untouched): unlike
    MICA, because the stages are then truly fixed, e.g. when fine-tuning on small batches whose
    statistics would drift from the pretrained ones. Returns ``model`` (modified in place).
    """
    model.freeze_mica = True
    model.freeze_bn = bool(freeze_bn)
    for m in model.frozen_modules():
        for p in m.parameters():
            p.requires_grad_(False)
    model.train(model.training)
    return model


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as ``y = scale * x + shift`` per channel."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one convolution with bias (exact up to rounding)."""
    scale, shift = _bn_affine(bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    fused.bias.copy_(shift if conv.bias is None else conv.bias * scale + shift)
    return fused.to(conv.weight.device, conv.weight.dtype)


@torch.no_grad()
def fuse_for_inference(model: IResNet) -> IResNet:
    """Inference copy of ``model`` with every BN that follows a conv or feeds ``fc`` folded away.

    Folded: stem ``bn1`` into ``conv1``; in each block ``bn2`` into ``conv1``, ``bn3`` into ``conv2``
    and the shortcut BN into its 1x1 conv; head ``bn2`` and ``features`` into ``fc``. A block's
    ``bn1`` stays (it precedes a zero-padded conv, so folding it would change the borders). Same
    outputs as ``model.eval()`` up to float rounding, about a third fewer memory passes. The copy
    has other state-dict names: use it for inference only, never save it as a checkpoint.
    """
    import copy

    fused = copy.deepcopy(model).eval()
    fused.freeze_mica = False
    fused.freeze_bn = False
    fused.conv1, fused.bn1 = _fold_into_conv(fused.conv1, fused.bn1), nn.Identity()
    for stage in (fused.layer1, fused.layer2, fused.layer3, fused.layer4):
        for block in stage:
            block.conv1, block.bn2 = _fold_into_conv(block.conv1, block.bn2), nn.Identity()
            block.conv2, block.bn3 = _fold_into_conv(block.conv2, block.bn3), nn.Identity()
            if block.downsample is not None:
                block.downsample = nn.Sequential(_fold_into_conv(block.downsample[0], block.downsample[1]))
    # fc(flatten(bn2(x))) then features: fold bn2 (per channel, repeated over 7x7) and features.
    s_in, t_in = _bn_affine(fused.bn2)
    area = FEATURE_SIZE * FEATURE_SIZE
    s_in, t_in = s_in.repeat_interleave(area), t_in.repeat_interleave(area)
    s_out, t_out = _bn_affine(fused.features)
    fc = fused.fc
    bias = fc.bias + fc.weight @ t_in
    fc.weight.copy_(fc.weight * s_in.view(1, -1) * s_out.view(-1, 1))
    fc.bias.copy_(bias * s_out + t_out)
    fused.bn2, fused.features = nn.Identity(), nn.Identity()
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused


def _create(arch: str, **kwargs) -> IResNet:
    return IResNet(ARCFACE_ARCHS[arch], **kwargs)


def create_arcface(arch: str = "iresnet100", **kwargs) -> IResNet:
    """Build an IResNet by name (``iresnet18/34/50/100/200``); kwargs go to :class:`IResNet`.

    Raises:
        ValueError: unknown ``arch``.
    """
    if arch not in ARCFACE_ARCHS:
        raise ValueError(f"unknown ArcFace architecture '{arch}' (use one of {', '.join(ARCFACE_ARCHS)})")
    return _create(arch, **kwargs)


def iresnet18(**kwargs) -> IResNet:
    return _create("iresnet18", **kwargs)


def iresnet34(**kwargs) -> IResNet:
    return _create("iresnet34", **kwargs)


def iresnet50(**kwargs) -> IResNet:
    return _create("iresnet50", **kwargs)


def iresnet100(**kwargs) -> IResNet:
    return _create("iresnet100", **kwargs)


def iresnet200(**kwargs) -> IResNet:
    return _create("iresnet200", **kwargs)
