"""Random-weight checkpoints in the real formats, for tests and benchmarks (nothing downloaded).

- ``write_random_mica_tar(path, flame=None, arch='iresnet100', seed=0)``: a ``mica.tar``-format file
  (``arcface`` state dict + ``flameModel`` with ``regressor.*`` and, when a FLAME module is given,
  its ``generator.*`` buffers), as the official code saves it.
- ``write_random_backbone(path, arch)``: an insightface arcface_torch ``backbone.pth`` (bare
  IResNet state dict).
- ``official_training_checkpoint(arch, seed, flame)`` / ``write_official_training_checkpoint``: a
  checkpoint as the official trainer's ``save_checkpoint`` writes it (``arcface``, ``flameModel``,
  ``opt`` = AdamW state after one step, ``scheduler`` = StepLR state, ``validator`` with
  ``embeddings_lyhm`` lists of float32 numpy arrays and ``best_model`` floats incl. ``inf``,
  ``epoch``, ``global_step``, ``batch_size``), pickled under numpy-1 names as its environment
  (torch 1.13, numpy 1.23) did (``tests/legacy_pickle.torch_save_numpy1``).
- ``random_mica(flame_dir, arch)``: a MICA model in eval mode (random ArcFace and mapping network,
  the FLAME of ``flame_dir`` with 300 shape and 100 expression coefficients).

The random ArcFace is *well conditioned* rather than insightface-initialised (insightface's N(0, 0.1)
convolutions overflow to NaN through 49 blocks without trained BN statistics): He-normal
convolutions, the residual branch damped by its last BN (weight 0.2), random BN running
statistics. Embeddings then vary with the input like a trained network's do, which keeps
precision measurements on random weights meaningful.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from micalib.mica import MICA
from models.arcface import IBasicBlock, IResNet, create_arcface
from models.flame import FLAME
from models.mapping import MappingNetwork

# Weight of each block's last BN: keeps the residual stream's growth over ~50 blocks modest.
RESIDUAL_BN_WEIGHT = 0.2


def random_arcface(arch: str = "iresnet100", seed: int = 0) -> IResNet:
    """A well-conditioned random-weight IResNet (eval mode), deterministic in ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    model = create_arcface(arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                n = m.num_features
                m.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.num_batches_tracked.fill_(1000)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / math.sqrt(m.in_features))
                m.bias.copy_(0.01 * torch.randn(m.out_features, generator=gen))
            elif isinstance(m, nn.PReLU):
                m.weight.copy_(0.25 + 0.05 * torch.randn(m.weight.shape, generator=gen))
        for m in model.modules():
            if isinstance(m, IBasicBlock):
                m.bn3.weight.mul_(RESIDUAL_BN_WEIGHT)
        model.features.weight.fill_(1.0)
    return model.eval()


def random_mapping_network(n_layers: int = 3, n_shape: int = 300, seed: int = 0) -> MappingNetwork:
    """The mapping network with its own (Kaiming) initialisation, deterministic in ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MappingNetwork(512, 300, n_layers, n_shape)


def random_mica(flame_dir: str | Path, arch: str = "iresnet100", seed: int = 0) -> MICA:
    """MICA with :func:`random_arcface` (``seed``), the mapping network of seed 1 and the FLAME
    model files in ``flame_dir`` (e.g. ``tests/synthetic_flame.write_synthetic_flame``), in eval mode."""
    d = Path(flame_dir)
    flame = FLAME.from_files(d / "generic_model.pkl", d / "landmark_embedding.npy", 300, 100)
    return MICA(random_arcface(arch, seed), random_mapping_network(3, 300, 1), flame).eval()


def write_random_mica_tar(path: str | Path, flame: nn.Module | None = None, arch: str = "iresnet100",
                          seed: int = 0, mapping_layers: int = 3, n_shape: int = 300,
                          extra: dict | None = None) -> Path:
    """Write a random-weight checkpoint in the ``mica.tar`` format; returns ``path``.

    Args:
        path: output file (written atomically).
        flame: a FLAME module (models.flame.FLAME) whose ``mica_buffers()`` are stored as
            ``flameModel['generator.*']`` like the official file; None leaves them out.
        arch: ArcFace depth (iresnet100 is what the official file holds; iresnet18 is ~4x smaller).
        seed: seed of every random weight.
        mapping_layers, n_shape: mapping network size.
        extra: further top-level entries (e.g. a training checkpoint's ``epoch``).
    """
    from utils.checkpoint import save_mica_checkpoint

    arcface = random_arcface(arch, seed)
    regressor = random_mapping_network(mapping_layers, n_shape, seed + 1)
    return save_mica_checkpoint(path, arcface, regressor, flame, extra)


def official_training_checkpoint(arch: str = "iresnet18", seed: int = 0, flame: nn.Module | None = None,
                                 lr: float = 1e-5, arcface_lr: float = 1e-5, weight_decay: float = 2e-4,
                                 lr_update_step: int = 100000, global_step: int = 1) -> dict:
    """The dict the official trainer's ``save_checkpoint`` saves (layout: MICA_FACTS, ``mica.tar``).

    Its AdamW holds the groups of ``parameters_to_optimize``: ``flameModel.parameters()`` (the
    mapping network, then FLAME's ``eye_pose`` (1, 6) and ``neck_pose`` (1, 3), never trained) at
    ``lr`` and every ArcFace parameter at ``arcface_lr``; it has taken one step on random gradients
    of the trained parameters (layer4, bn2, fc, features.bias: the frozen stages and
    ``features.weight`` get none). Its StepLR has ``step_size=1`` and was stepped once per
    ``lr_update_step`` of the ``global_step`` steps, as the official loop does. The validator holds
    per-actor lists of float32 (512,) numpy embeddings (one actor with an emptied list) and the
    best-model record with ``inf`` where nothing was measured.
    """
    import numpy as np

    gen = torch.Generator().manual_seed(seed + 7)
    arcface = random_arcface(arch, seed)
    regressor = random_mapping_network(3, 300, seed + 1)
    flame_params = [nn.Parameter(torch.zeros(1, 6), requires_grad=False),   # generator.eye_pose
                    nn.Parameter(torch.zeros(1, 3), requires_grad=False)]   # generator.neck_pose
    opt = torch.optim.AdamW([{"params": list(regressor.parameters()) + flame_params, "lr": lr},
                             {"params": arcface.parameters(), "lr": arcface_lr}],
                            lr=lr, weight_decay=weight_decay, amsgrad=False)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    trainable = list(regressor.parameters()) + [p for n, p in arcface.named_parameters()
                                                if n.split(".")[0] in ("layer4", "bn2", "fc") or n == "features.bias"]
    for p in trainable:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    opt.step()
    for _ in range(global_step // lr_update_step):
        scheduler.step()
    flame_model = {f"regressor.{k}": v for k, v in regressor.state_dict().items()}
    if flame is not None:
        flame_model.update({f"generator.{k}": v for k, v in flame.mica_buffers().items()})
    rng = np.random.default_rng(seed)
    embeddings = {"00001": [rng.normal(size=512).astype(np.float32) for _ in range(3)],
                  "00002": [rng.normal(size=512).astype(np.float32)],
                  "00003": []}
    validator = {"embeddings_lyhm": embeddings,
                 "best_model": {"average": 1.25, "smoothed_average": float("inf"),
                                "running_average": float("inf"), "now_mean": None, "counter": 2}}
    return {"flameModel": flame_model, "arcface": arcface.state_dict(), "opt": opt.state_dict(),
            "scheduler": scheduler.state_dict(), "validator": validator, "epoch": 3, "global_step": global_step,
            "batch_size": 8}


def write_official_training_checkpoint(path: str | Path, arch: str = "iresnet18", seed: int = 0,
                                       flame: nn.Module | None = None, **kwargs) -> Path:
    """Write :func:`official_training_checkpoint` (``kwargs`` passed on) as ``torch.save`` under
    numpy-1 global names."""
    from tests.legacy_pickle import torch_save_numpy1
    from utils.io import atomic_write_bytes

    atomic_write_bytes(path, torch_save_numpy1(official_training_checkpoint(arch, seed, flame, **kwargs)))
    return Path(path)


def write_random_backbone(path: str | Path, arch: str = "iresnet100", seed: int = 0) -> Path:
    """Write a random-weight insightface arcface_torch ``backbone.pth`` (bare IResNet state dict)."""
    import io as _io

    from utils.io import atomic_write_bytes

    buf = _io.BytesIO()
    torch.save(random_arcface(arch, seed).state_dict(), buf)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
