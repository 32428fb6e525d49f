"""MICA's training loop: ``Trainer.run_step`` (data, loss, backward, step) and the hook protocol.

One optimiser step: a batch of ``batch_size`` actors x ``K`` images (one DataLoader batch per
process), ArcFace -> mapping network -> canonical FLAME for every image, the ground truth =
canonical FLAME of the actor's ``identity`` shared by its K images, masked per-vertex L1 (x1000),
backward, step. Everything else is a hook (``micalib/engine/hooks.py``: LR schedule, metrics, validation,
images, checkpoints, timing), and everything is built from the config in
``micalib/engine/builder.py`` (``build_trainer``, ``default_hooks``); checkpoints and resuming are
``micalib/engine/checkpointer.py``.

Multi-process (``torchrun``): the model is wrapped in ``DistributedDataParallel``, every process reads
its own shard (``datasets.loader.ResumableLoader``), ``batch_size`` is per process, and trainable
BatchNorm layers (ArcFace layer4 and head) are synchronised across processes (unlike MICA, whose
BatchNorm is per-process everywhere, because the batch statistics then do not depend on how the
batch is split). The BatchNorm layers of the frozen stages (stem, layer1..3) are not synchronised:
as in MICA, each process normalises them with its own batch statistics and updates its own running
statistics from there (DDP copies rank 0's buffers to every process before each forward), and rank
0's are saved. So N processes x batch b train exactly like one process with batch N*b only with
``model.freeze_bn True``. Rank 0 alone logs, writes TensorBoard and checkpoints.

ArcFace's frozen stages: by default, as MICA, ``train()`` puts their BatchNorm layers in train mode
(no gradient, but batch statistics and updated running statistics); ``model.freeze_bn True`` keeps
them in eval mode, unlike MICA (see ``models.arcface.freeze_for_mica``). Their forward always runs
under ``torch.no_grad`` (as MICA), also inside bf16 autocast.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypeVar

import torch
from loguru import logger
from torch import nn
from tqdm import tqdm

from datasets.loader import ResumableLoader, TrainState
from utils import dist as comm
from utils.device import autocast
from utils.errors import MICAError

# Samples kept from the last batch for the training image grid.
VIS_SAMPLES = 4

H = TypeVar("H")


class NonFiniteLossError(MICAError):
    """The training loss became NaN/inf (diverged run or broken data)."""


class MICAForward(nn.Module):
    """What DDP wraps: ``images (N, 3, 112, 112) -> predicted canonical vertices (N, V, 3)`` in metres."""

    def __init__(self, mica: nn.Module) -> None:
        super().__init__()
        self.mica = mica

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.mica.decode(self.mica.encode(images))["vertices"]


class Trainer:
    """Runs optimiser steps on a MICA model and calls its hooks.

    Args:
        mica: the model (``arcface``, ``regressor``, ``flame``; ``encode``/``decode``), on its device,
            ArcFace frozen (``models.arcface.freeze_for_mica``).
        model: what the forward calls: :class:`MICAForward` of ``mica``, DDP-wrapped with several processes.
        loader: the training batches; its ``state`` is the run position (``self.state``).
        optimizer: AdamW over the trained parameters.
        loss_fn: ``micalib.engine.losses.VertexLoss``.
        scaler: ``torch.amp.GradScaler`` (enabled for fp16 only).
        max_steps: optimiser steps in all.
        amp_dtype: autocast dtype (float32 = off).
        channels_last: feed the images in channels-last memory format (the model must be converted too).
    """

    def __init__(self, mica: nn.Module, model: nn.Module, loader: ResumableLoader, optimizer: torch.optim.Optimizer,
                 loss_fn: nn.Module, scaler: torch.amp.GradScaler, max_steps: int,
                 amp_dtype: torch.dtype = torch.float32, channels_last: bool = False) -> None:
        self.mica, self.model, self.loader = mica, model, loader
        self.optimizer, self.loss_fn, self.scaler = optimizer, loss_fn, scaler
        self.max_steps, self.amp_dtype, self.channels_last = int(max_steps), amp_dtype, bool(channels_last)
        self.device = next(mica.parameters()).device
        self.world_size = comm.get_world_size()
        self.state: TrainState = loader.state
        self.completed = False
        self.last_metrics: dict[str, float] = {}
        self.last_batch: dict[str, torch.Tensor] | None = None
        self.progress: tqdm | None = None
        self.hooks: list = []

    # -------------------------------------------------------------------------------------------
    def register_hooks(self, hooks: Sequence) -> None:
        """Append hooks (called in registration order)."""
        for h in hooks:
            h.attach(self)
            self.hooks.append(h)

    def hook(self, kind: type[H]) -> H:
        """The first registered hook of type ``kind`` (KeyError when there is none)."""
        for h in self.hooks:
            if isinstance(h, kind):
                return h
        raise KeyError(f"no {kind.__name__} registered")

    def train(self) -> None:
        """Run until ``max_steps``; hooks' ``after_train`` runs even when a step fails."""
        self.completed = self.state.step >= self.max_steps
        if comm.is_main_process():
            logger.info(f"training from step {self.state.step} to {self.max_steps} on {self.world_size} process(es), "
                        f"{self.loader.batch_size} actors x K per process and step, "
                        f"{self.loader.batches_per_epoch} steps per epoch")
        self.progress = tqdm(total=self.max_steps, initial=self.state.step, desc="train", dynamic_ncols=True,
                             disable=not comm.is_main_process())
        try:
            for h in self.hooks:
                h.before_train()
            while self.state.step < self.max_steps:
                for h in self.hooks:
                    h.before_step()
                self.run_step()
                self.progress.update(1)
                for h in self.hooks:
                    h.after_step()
            self.completed = True
        finally:
            try:
                for h in self.hooks:
                    h.after_train()
            finally:
                self.progress.close()

    # -------------------------------------------------------------------------------------------
    def run_step(self) -> None:
        """One optimiser step: data, forward, loss, backward, step."""
        self.mica.train()
        t0 = time.perf_counter()
        batch = self.loader.next()
        images = batch["arcface"].to(self.device, non_blocking=True)
        B, K = images.shape[:2]
        images = images.reshape(B * K, *images.shape[2:])
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            gt = self.mica.flame.canonical(batch["identity"].to(self.device, torch.float32)).float()
        gt = gt.repeat_interleave(K, dim=0)
        t1 = time.perf_counter()

        with autocast(self.device, self.amp_dtype):
            pred = self.model(images)
        loss = self.loss_fn(pred.float(), gt)
        step = self.state.step + 1
        bad = not bool(torch.isfinite(loss))
        if self.world_size > 1:  # every process stops at the same step, not only the one that diverged
            bad = comm.all_reduce_sum(torch.tensor([float(bad)], device=self.device)).item() > 0
        if bad:
            value = loss.item() if not torch.isfinite(loss) else "not finite on another process"
            raise NonFiniteLossError(f"training loss is {value} at step {step} (lower train.lr / "
                                     f"train.arcface_lr or check the data; resume from the last checkpoint)")
        t2 = time.perf_counter()  # the finiteness check waited for the forward pass (also on CUDA)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)  # with fp16: skipped when a gradient overflowed, scale lowered
        self.scaler.update()
        self.state.step = step
        t3 = time.perf_counter()
        self.last_metrics = {"loss": float(loss.detach()), "data_time": t1 - t0, "step_time": t3 - t1,
                             "forward_time": t2 - t1, "backward_time": t3 - t2}
        self.last_batch = {"images": images[:VIS_SAMPLES].detach(), "pred": pred[:VIS_SAMPLES].detach().float(),
                           "gt": gt[:VIS_SAMPLES]}
