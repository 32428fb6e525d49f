"""Trainer hooks (detectron2's protocol, smaller): LR schedule, metrics, validation, images, checkpoints.

A hook gets ``before_train``, ``before_step``, ``after_step`` and ``after_train`` calls; ``after_train``
runs even when a step raised. ``trainer.state.step`` is the number of finished optimiser steps when
``after_step`` runs. Each hook owns what it works with (scheduler, TensorBoard writer, validator,
renderer, checkpointer); the trainer provides the step, its optimiser, the last losses and the last batch.
Registration order (``micalib.engine.builder.default_hooks``): LR schedule, metrics, validation,
visualisation, checkpoints, timer -- so a checkpoint sees the stepped scheduler and the validator's
latest best values. Hooks that write files or TensorBoard do so on rank 0 only; hooks that run
collectives (metrics reduction, validation, checkpoint RNG gathering) run on every rank.
"""
from __future__ import annotations

import time
import weakref
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from loguru import logger

from micalib.engine.checkpointer import Checkpointer
from micalib.engine.validator import Validator
from micalib.render.preview import fit_camera, make_grid, render_mesh
from utils import dist as comm
from utils.image_io import write_image

if TYPE_CHECKING:  # pragma: no cover
    from micalib.engine.trainer import Trainer

# Side of each tile of the training image grid (pixels).
VIS_SIZE = 224


class HookBase:
    """No-op hook; subclasses override what they need. ``self.trainer`` is a weak proxy."""

    trainer: Trainer

    def attach(self, trainer: Trainer) -> None:
        self.trainer = weakref.proxy(trainer)

    def before_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass

    def after_train(self) -> None:
        pass


def _every(step: int, period: int) -> bool:
    return period > 0 and step > 0 and step % period == 0


class LRSchedulerHook(HookBase):
    """Steps ``scheduler`` after every optimiser step (StepLR with step_size = lr_update_step)."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def after_step(self) -> None:
        self.scheduler.step()


class MetricsHook(HookBase):
    """Every ``period`` steps: losses averaged over the window and over ranks, learning rates, data
    and step time -> loguru, tqdm postfix and TensorBoard (``train_loss/*``, ``lr/*``, ``time/*``).
    Owns the TensorBoard ``writer`` (rank 0, may be None): flushed and closed after training."""

    def __init__(self, period: int, writer: Any = None) -> None:
        self.period = period
        self.writer = writer
        self._window: dict[str, list[float]] = defaultdict(list)

    def after_step(self) -> None:
        t = self.trainer
        for k, v in t.last_metrics.items():
            self._window[k].append(v)
        step = t.state.step
        if not (_every(step, self.period) or step == t.max_steps):
            return
        means = comm.all_reduce_mean({k: float(np.mean(v)) for k, v in self._window.items()})
        self._window.clear()
        groups = t.optimizer.param_groups
        if not comm.is_main_process():
            return
        if self.writer is not None:
            for k, v in means.items():
                prefix = "time/" if k.endswith("_time") else "train_loss/"
                self.writer.add_scalar(prefix + k, v, global_step=step)
            for i, g in enumerate(groups):
                self.writer.add_scalar(f"lr/group{i}_{g.get('name', i)}", g["lr"], global_step=step)
        text = " ".join(f"{k} {v:.5g}" for k, v in sorted(means.items()))
        lr_text = " ".join(f"{g.get('name', i)} {g['lr']:.3g}" for i, g in enumerate(groups))
        logger.info(f"step {step}/{t.max_steps} epoch {t.state.epoch} | {text} | lr {lr_text}")
        if t.progress is not None:
            t.progress.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}")

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.flush()


class EvalHook(HookBase):
    """Every ``period`` steps (and at the end): ``validator.run`` on all ranks, then a barrier. Best
    models go through ``checkpointer.save_best``; losses to TensorBoard (``val/*``) on rank 0."""

    def __init__(self, period: int, validator: Validator, checkpointer: Checkpointer | None = None,
                 writer: Any = None) -> None:
        self.period = period
        self.validator = validator
        self.checkpointer = checkpointer
        self.writer = writer
        self._last = -1

    def validate(self) -> dict[str, float]:
        """Validation losses now (all ranks take part); best models saved by rank 0."""
        step = self.trainer.state.step
        save = self.checkpointer.save_best if self.checkpointer is not None else None
        results = self.validator.run(self.trainer.mica, step, save_fn=save)
        if comm.is_main_process() and self.writer is not None:
            for k, v in results.items():
                self.writer.add_scalar(f"val/{k}", v, global_step=step)
        return results

    def _run(self) -> None:
        step = self.trainer.state.step
        if step == self._last:
            return
        self._last = step
        self.validate()
        comm.synchronize()

    def after_step(self) -> None:
        if _every(self.trainer.state.step, self.period):
            self._run()

    def after_train(self) -> None:
        if self.trainer.completed and self.period > 0:
            self._run()


class VisualizationHook(HookBase):
    """Every ``period`` steps on rank 0: input crops beside predicted and ground-truth renders of the
    trainer's last batch, one row per sample -> ``vis_dir/STEP.jpg`` and TensorBoard."""

    def __init__(self, period: int, vis_dir: Path | str, faces: np.ndarray, writer: Any = None) -> None:
        self.period = period
        self.vis_dir = Path(vis_dir)
        self.faces = np.asarray(faces)
        self.writer = writer

    def grid(self, batch: dict[str, Any]) -> np.ndarray:
        """``images`` (N, 3, 112, 112) in [-1, 1], ``pred`` / ``gt`` (N, V, 3) -> (N rows x 3) uint8 grid."""
        tiles = []
        for i in range(batch["images"].shape[0]):
            crop = (batch["images"][i].float().cpu().numpy().transpose(1, 2, 0) * 127.5 + 127.5).clip(0, 255)
            crop = cv2.resize(crop.astype(np.uint8), (VIS_SIZE, VIS_SIZE), interpolation=cv2.INTER_LINEAR)
            gt = batch["gt"][i].float().cpu().numpy()
            cam = fit_camera(gt, VIS_SIZE)  # one camera: size differences stay visible
            pred = render_mesh(batch["pred"][i].float().cpu().numpy(), self.faces, size=VIS_SIZE, camera=cam)
            tiles += [crop, pred, render_mesh(gt, self.faces, size=VIS_SIZE, camera=cam)]
        return make_grid(tiles, nrow=3)

    def visualize(self) -> np.ndarray | None:
        """Write the grid of the trainer's last batch (None before the first step)."""
        batch = self.trainer.last_batch
        if batch is None:
            return None
        grid = self.grid(batch)
        step = self.trainer.state.step
        if self.writer is not None:
            self.writer.add_image("train/crop_pred_gt", grid, global_step=step, dataformats="HWC")
        write_image(self.vis_dir / f"{step:08d}.jpg", grid)
        return grid

    def after_step(self) -> None:
        if _every(self.trainer.state.step, self.period) and comm.is_main_process():
            self.visualize()


class PeriodicCheckpointer(HookBase):
    """Every ``period`` steps and when training completes: ``checkpointer.save()``; at the end also
    the final ``model.tar``."""

    def __init__(self, period: int, checkpointer: Checkpointer) -> None:
        self.period = period
        self.checkpointer = checkpointer
        self._last = -1

    def _save(self) -> None:
        step = self.trainer.state.step
        if step != self._last:
            self._last = step
            self.checkpointer.save()

    def after_step(self) -> None:
        if _every(self.trainer.state.step, self.period):
            self._save()

    def after_train(self) -> None:
        if self.trainer.completed:
            self._save()
            self.checkpointer.save_final()


class TimerHook(HookBase):
    """Wall time of the whole run, logged at the end (rank 0)."""

    def before_train(self) -> None:
        self._start = time.perf_counter()
        self._start_step = self.trainer.state.step

    def after_train(self) -> None:
        done = self.trainer.state.step - self._start_step
        secs = time.perf_counter() - self._start
        if comm.is_main_process() and done > 0:
            logger.info(f"{done} steps in {secs:.1f} s ({secs / done:.3f} s/step)")


class CallbackHook(HookBase):
    """Calls ``fn(trainer)`` after every step (tests use it to interrupt a run)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def after_step(self) -> None:
        self.fn(self.trainer)


__all__ = ["HookBase", "LRSchedulerHook", "MetricsHook", "EvalHook", "VisualizationHook",
           "PeriodicCheckpointer", "TimerHook", "CallbackHook"]
