"""Building a training run from the config: ``build_trainer(cfg)`` and ``default_hooks``.

The one place that reads the training config: datasets, model (DDP, synchronised BatchNorm,
channels-last), AdamW + StepLR, GradScaler, loader, validator, TensorBoard writer, checkpointer and
the default hooks; then resume or initial weights. Config mistakes (unknown dataset, missing root,
batch larger than the data, missing weight files) fail here, before any training, with one line.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from loguru import logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from configs.config import resolve_path
from datasets import build as dsb
from datasets.loader import ResumableLoader, TrainState
from datasets.mica_dataset import collate_mica
from micalib.engine import hooks as hooks
from micalib.engine.checkpointer import CHECKPOINT_DIR, LAST_CHECKPOINT, Checkpointer, last_checkpoint
from micalib.engine.losses import VertexLoss
from micalib.engine.sync_batchnorm import convert_sync_batchnorm
from micalib.engine.trainer import MICAForward, Trainer
from micalib.engine.validator import Validator
from micalib.mica import MICA
from utils import dist as comm
from utils.device import resolve_device, resolve_precision
from utils.errors import MICAError
from utils.rng import seed_everything


def parameter_groups(mica: nn.Module, lr: float, arcface_lr: float) -> List[Dict[str, Any]]:
    """AdamW groups: the mapping network at ``lr``, ArcFace's trainable part at ``arcface_lr``."""
    groups = [
        {"name": "mapping", "params": [p for p in mica.regressor.parameters() if p.requires_grad], "lr": lr},
        {"name": "arcface", "params": [p for p in mica.arcface.parameters() if p.requires_grad], "lr": arcface_lr},
    ]
    return [g for g in groups if g["params"]]


def freeze_untrained(mica: nn.Module, groups: Sequence[Dict[str, Any]]) -> None:
    """``requires_grad=False`` on every parameter outside the optimiser groups (e.g. FLAME's), so DDP
    does not wait for gradients that never come."""
    trained = {id(p) for g in groups for p in g["params"]}
    for p in mica.parameters():
        if id(p) not in trained:
            p.requires_grad_(False)


def build_optimizer(groups: List[Dict[str, Any]], lr: float, weight_decay: float, impl: str = "auto") -> torch.optim.AdamW:
    """AdamW as MICA (``amsgrad=False``); ``impl`` "foreach"/"fused" pick torch's multi-tensor or fused kernels."""
    kwargs = {"foreach": True} if impl == "foreach" else {"fused": True} if impl == "fused" else {}
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, amsgrad=False, **kwargs)


def default_hooks(cfg, *, scheduler: Any, validator: Validator, checkpointer: Checkpointer, faces: np.ndarray,
                  writer: Any = None) -> List[hooks.HookBase]:
    """LR schedule, metrics, validation, images, checkpoints, timer -- in that order."""
    return [
        hooks.LRSchedulerHook(scheduler),
        hooks.MetricsHook(int(cfg.train.log_steps), writer),
        hooks.EvalHook(int(cfg.train.val_steps), validator, checkpointer, writer),
        hooks.VisualizationHook(int(cfg.train.vis_steps), output_dir_of(cfg) / str(cfg.train.vis_dir), faces, writer),
        hooks.PeriodicCheckpointer(int(cfg.train.checkpoint_steps), checkpointer),
        hooks.TimerHook(),
    ]


def output_dir_of(cfg) -> Path:
    """``cfg.output_dir`` as an absolute path (default ``output/mica``)."""
    return resolve_path(cfg.output_dir or "output/mica")


def training_device(cfg) -> torch.device:
    """``cfg.device`` resolved; under torchrun on CUDA, GPU ``LOCAL_RANK``."""
    dev = resolve_device(cfg.device)
    if dev.type == "cuda" and comm.get_world_size() > 1:
        dev = torch.device("cuda", comm.get_local_rank())
    return dev


def find_resume_checkpoint(cfg, resume: Optional[str | bool]) -> Optional[Path]:
    """Which checkpoint to resume from.

    Args:
        resume: a path; True/"auto" = the output folder's last checkpoint (error when there is none);
            False = never; None = ``cfg.train.resume`` (automatic: the last checkpoint if one exists).
    """
    pointer = output_dir_of(cfg) / CHECKPOINT_DIR / LAST_CHECKPOINT
    if resume is False:
        return None
    if isinstance(resume, (str, os.PathLike)) and str(resume) not in ("", "auto"):
        path = Path(resume).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--resume {path}: file not found (give a checkpoint written by train.py, "
                                    f"or --resume alone for the last one in {pointer.parent})")
        return path
    if resume is None and not bool(cfg.train.resume):
        return None
    path = last_checkpoint(output_dir_of(cfg))
    if path is None and resume in (True, "auto"):
        raise FileNotFoundError(f"--resume: no checkpoint in {pointer.parent} ({pointer.name} missing); "
                                f"check output_dir or start without --resume")
    return path


def build_trainer(cfg, resume: Optional[str | bool] = None, device: Optional[torch.device] = None,
                  extra_hooks: Sequence[hooks.HookBase] = ()) -> Trainer:
    """Datasets, model, optimiser, checkpointer and hooks from the config; resumes or loads initial weights.

    Args:
        cfg: frozen config (``configs.config.load_cfg``).
        resume: see :func:`find_resume_checkpoint`.
        device: override of ``cfg.device``.
        extra_hooks: appended after the default hooks.

    Raises:
        MICAError, FileNotFoundError: a config mistake (one line).
    """
    from models import masks

    rank, world = comm.get_rank(), comm.get_world_size()
    dev = device if device is not None else training_device(cfg)
    if bool(cfg.train.deterministic):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    seed, batch_size = int(cfg.seed), int(cfg.dataset.batch_size)
    seed_everything(seed + rank)
    amp_dtype = resolve_precision(cfg.precision, dev)
    if int(cfg.train.max_steps) < 1:
        raise MICAError(f"train.max_steps must be >= 1, not {cfg.train.max_steps}")
    out = output_dir_of(cfg)

    train_ds = dsb.build_train_dataset(cfg)
    val_ds = dsb.build_val_datasets(cfg)
    ckpt = find_resume_checkpoint(cfg, resume)
    # resuming: the checkpoint brings the weights, the initial ones are neither needed nor loaded
    mica = MICA.from_config(cfg, dev, load_weights=ckpt is None)
    if bool(cfg.train.channels_last):
        mica.arcface.to(memory_format=torch.channels_last)
    lr, arcface_lr = float(cfg.train.lr), float(cfg.train.arcface_lr)
    groups = parameter_groups(mica, lr, arcface_lr)
    freeze_untrained(mica, groups)
    if world > 1:
        convert_sync_batchnorm(mica)
        groups = parameter_groups(mica, lr, arcface_lr)  # converted BN layers hold new parameters
    optimizer = build_optimizer(groups, lr, float(cfg.train.weight_decay), str(cfg.train.optimizer_impl))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(cfg.train.lr_update_step), gamma=0.1)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (scaler disabled)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype == torch.float16)
    weights = torch.from_numpy(np.asarray(masks.from_config(cfg, mica.flame.n_vertices), dtype=np.float32))
    loss_fn = VertexLoss(weights).to(dev)
    model: nn.Module = MICAForward(mica)
    if world > 1:
        model = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    state = TrainState()
    loader = ResumableLoader(train_ds, batch_size, world, rank, seed, state, num_workers=int(cfg.dataset.num_workers),
                             collate_fn=collate_mica, pin_memory=dev.type == "cuda")
    validator = Validator(val_ds, loss_fn, collate_fn=collate_mica, output_dir=out, window=int(cfg.running_average),
                          num_workers=int(cfg.dataset.num_workers))
    checkpointer = Checkpointer(mica, out, state, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                validator=validator, loader=loader, seed=seed, batch_size=batch_size,
                                config_text=cfg.dump(), keep=int(cfg.train.keep_checkpoints),
                                keep_every=int(cfg.train.checkpoint_epochs_steps))
    writer = None
    if bool(cfg.train.write_summary) and comm.is_main_process():
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out / str(cfg.train.log_dir)))
    trainer = Trainer(mica, model, loader, optimizer, loss_fn, scaler, int(cfg.train.max_steps), amp_dtype=amp_dtype,
                      channels_last=bool(cfg.train.channels_last))
    faces = mica.flame.faces.detach().cpu().numpy()
    trainer.register_hooks(default_hooks(cfg, scheduler=scheduler, validator=validator, checkpointer=checkpointer,
                                         faces=faces, writer=writer) + list(extra_hooks))
    if ckpt is not None:
        named = isinstance(resume, (str, os.PathLike)) and str(resume) not in ("", "auto")  # --resume PATH
        checkpointer.resume(ckpt, reset_optimizer=bool(cfg.train.reset_optimizer), fallback=not named)
    if comm.is_main_process() and (amp_dtype != torch.float32 or cfg.train.channels_last
                                   or cfg.train.optimizer_impl != "auto"):
        logger.info(f"training precision {str(amp_dtype).replace('torch.', '')}, channels-last "
                    f"{bool(cfg.train.channels_last)}, AdamW {cfg.train.optimizer_impl}")
    return trainer
