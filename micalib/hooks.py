"""Trainer hooks (detectron2's protocol, smaller): LR schedule, metrics, validation, images, checkpoints.

A hook gets ``before_train``, ``before_step``, ``after_step`` and ``after_train`` calls; ``after_train``
runs even when a step raised. ``trainer.state.step`` is the number of finished optimiser steps when
``after_step`` runs. Registration order (see ``micalib.trainer.default_hooks``): LR schedule, metrics,
validation, visualisation, checkpoints -- so a checkpoint sees the stepped scheduler and the
validator's latest best values. Hooks that write files or TensorBoard do so on rank 0 only; hooks
that run collectives (metrics reduction, validation, checkpoint RNG gathering) run on every rank.
"""
from __future__ import annotations

import time
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING, Dict, List

import numpy as np
from loguru import logger

from utils import dist as comm

if TYPE_CHECKING:  # pragma: no cover
    from micalib.trainer import Trainer


class HookBase:
    """No-op hook; subclasses override what they need. ``self.trainer`` is a weak proxy."""

    trainer: "Trainer"

    def attach(self, trainer: "Trainer") -> None:
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
    """Steps the scheduler after every optimiser step (StepLR with step_size = lr_update_step)."""

    def after_step(self) -> None:
        self.trainer.scheduler.step()


class MetricsHook(HookBase):
    """Every ``period`` steps: losses averaged over the window and over ranks, learning rates, data
    and step time -> loguru, tqdm postfix and TensorBoard (``train_loss/*``, ``lr/*``, ``time/*``)."""

    def __init__(self, period: int) -> None:
        self.period = period
        self._window: Dict[str, List[float]] = defaultdict(list)

    def after_step(self) -> None:
        t = self.trainer
        for k, v in t.last_metrics.items():
            self._window[k].append(v)
        step = t.state.step
        if not (_every(step, self.period) or step == t.max_steps):
            return
        means = comm.all_reduce_mean({k: float(np.mean(v)) for k, v in self._window.items()})
        self._window.clear()
        lrs = {f"lr/group{i}_{g.get('name', i)}": g["lr"] for i, g in enumerate(t.optimizer.param_groups)}
        if not comm.is_main_process():
            return
        if t.writer is not None:
            for k, v in means.items():
                prefix = "time/" if k.endswith("_time") else "train_loss/"
                t.writer.add_scalar(prefix + k, v, global_step=step)
            for k, v in lrs.items():
                t.writer.add_scalar(k, v, global_step=step)
        text = " ".join(f"{k} {v:.5g}" for k, v in sorted(means.items()))
        lr_text = " ".join(f"{g.get('name', i)} {g['lr']:.3g}" for i, g in enumerate(t.optimizer.param_groups))
        logger.info(f"step {step}/{t.max_steps} epoch {t.state.epoch} | {text} | lr {lr_text}")
        if t.progress is not None:
            t.progress.set_postfix(loss=f"{means.get('loss', float('nan')):.4f}")


class EvalHook(HookBase):
    """Every ``period`` steps (and at the end): ``trainer.validate()`` on all ranks, then a barrier."""

    def __init__(self, period: int) -> None:
        self.period = period
        self._last = -1

    def _run(self) -> None:
        step = self.trainer.state.step
        if step == self._last:
            return
        self._last = step
        self.trainer.validate()
        comm.synchronize()

    def after_step(self) -> None:
        if _every(self.trainer.state.step, self.period):
            self._run()

    def after_train(self) -> None:
        if self.trainer.completed and self.period > 0:
            self._run()


class VisualizationHook(HookBase):
    """Every ``period`` steps on rank 0: input crops beside predicted and ground-truth renders."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_step(self) -> None:
        t = self.trainer
        if _every(t.state.step, self.period) and comm.is_main_process():
            t.visualize_last_batch()


class PeriodicCheckpointer(HookBase):
    """Every ``period`` steps and when training completes: ``trainer.save_checkpoint()``."""

    def __init__(self, period: int) -> None:
        self.period = period
        self._last = -1

    def _save(self) -> None:
        step = self.trainer.state.step
        if step != self._last:
            self._last = step
            self.trainer.save_checkpoint()

    def after_step(self) -> None:
        if _every(self.trainer.state.step, self.period):
            self._save()

    def after_train(self) -> None:
        if self.trainer.completed:
            self._save()
            self.trainer.save_final_model()


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
