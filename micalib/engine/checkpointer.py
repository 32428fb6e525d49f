"""Training checkpoints: save (atomic), prune, ``last_checkpoint``, resume, config dump, RNG state.

Files (``output_dir/checkpoints/model_XXXXXXXX.tar``, ``output_dir/model.tar``,
``output_dir/best_models/*.tar``) are in the ``mica.tar`` format (the demo and test.py read them) plus
``opt``, ``scheduler``, ``grad_scaler``, ``validator``, ``global_step``, ``epoch``, ``epoch_offset``
(batches already consumed in that epoch), ``batch_size``, ``world_size``, ``seed``, ``config`` and,
in periodic checkpoints, ``rng`` (Python, NumPy, torch and CUDA generator states of every rank).
``checkpoints/last_checkpoint`` names the newest periodic one; the last ``keep`` are kept (steps
divisible by ``keep_every`` are kept for good). A run resumed from one continues at the same step,
learning rate, sample and random state: with ``train.deterministic`` it ends bit-identical to an
uninterrupted run.

Checkpoints of the official trainer (``opt``, ``scheduler``, ``validator``, ``epoch``,
``global_step``, ``batch_size``, as its ``save_checkpoint`` writes them) resume too: weights, AdamW
moments (mapped by parameter name: the official optimiser holds every ArcFace parameter and FLAME's
``eye_pose``/``neck_pose``, ours only the trained ones), learning rates, step, epoch and best
validation values. What they do
not hold starts afresh: the RNG states and the position inside the epoch (the epoch restarts), the
loss scale; the official ``StepLR`` (``step_size`` 1, stepped every ``lr_update_step`` steps)
becomes ours (``step_size = lr_update_step``, stepped every step) at the same learning rate.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from loguru import logger
from torch import nn

from datasets.loader import ResumableLoader, TrainState
from utils import dist as comm
from utils.checkpoint import load_arcface_into, load_mica_checkpoint, load_regressor_into, save_mica_checkpoint
from utils.errors import MICAError
from utils.io import atomic_write_text
from utils.rng import get_rng_state, seed_everything, set_rng_state

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last_checkpoint"
FINAL_MODEL = "model.tar"
CONFIG_FILE = "config.yaml"


def write_config(output_dir: os.PathLike | str, config_text: str) -> Path:
    """``output_dir/config.yaml`` (the full merged config, atomic)."""
    path = Path(output_dir) / CONFIG_FILE
    atomic_write_text(path, config_text)
    return path


def last_checkpoint(output_dir: os.PathLike | str) -> Optional[Path]:
    """The checkpoint named in ``output_dir/checkpoints/last_checkpoint`` (None when there is none).

    Raises:
        MICAError: the pointer names a file that does not exist.
    """
    pointer = Path(output_dir) / CHECKPOINT_DIR / LAST_CHECKPOINT
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    if not path.is_file():
        raise MICAError(f"{pointer} names {path.name}, which does not exist (delete {pointer} to start over)")
    return path


def _is_official(extra: Mapping[str, Any]) -> bool:
    """Written by the official trainer: our files always carry ``world_size`` and ``seed``."""
    return "world_size" not in extra and "seed" not in extra


def _param_names(module: nn.Module) -> Dict[int, str]:
    return {id(p): n for n, p in module.named_parameters()}


def official_optimizer_state(opt_state: Mapping[str, Any], mica: nn.Module,
                             optimizer: torch.optim.Optimizer, source: str) -> Dict[str, Any]:
    """The official trainer's AdamW ``state_dict`` re-indexed for ``optimizer`` (by parameter name).

    The official groups are ``[flameModel.parameters(), arcface.parameters()]``: the mapping
    network's parameters, then FLAME's (``eye_pose``, ``neck_pose``, never trained), then every ArcFace
    parameter, frozen ones included; ours hold only the trained parameters (``mapping``, ``arcface``).
    Moments of a parameter we do not train are dropped; the groups' hyperparameters (learning
    rate, ``initial_lr``, betas, eps, weight decay) are the checkpoint's.
    """
    groups = opt_state.get("param_groups", [])
    reg_names = [f"regressor.{n}" for n, _ in mica.regressor.named_parameters()]
    arc_names = [f"arcface.{n}" for n, _ in mica.arcface.named_parameters()]
    if len(groups) != 2 or len(groups[0]["params"]) < len(reg_names) or len(groups[1]["params"]) != len(arc_names):
        raise MICAError(f"{source}: its optimiser state does not fit this model (official layout, "
                        f"{[len(g['params']) for g in groups]} parameters per group); set train.reset_optimizer True")
    by_name: Dict[str, Any] = {}
    for name, index in zip(reg_names, groups[0]["params"]):
        by_name[name] = index
    for name, index in zip(arc_names, groups[1]["params"]):
        by_name[name] = index
    names = _param_names(mica)
    state, new_groups, k = {}, [], 0
    for ours, theirs in zip(optimizer.param_groups, groups):
        hyper = {key: v for key, v in theirs.items() if key not in ("params", "foreach", "fused", "capturable",
                                                                    "differentiable", "maximize")}
        new_groups.append({**{key: v for key, v in ours.items() if key != "params"}, **hyper, "params": []})
        for p in ours["params"]:
            old = by_name.get(names.get(id(p), ""))
            if old is not None and old in opt_state["state"]:
                state[k] = opt_state["state"][old]
            new_groups[-1]["params"].append(k)
            k += 1
    return {"state": state, "param_groups": new_groups}


class Checkpointer:
    """Saves and restores everything a run needs to continue exactly.

    Args:
        mica: the MICA model (``arcface``, ``regressor``, ``flame``); not the DDP wrapper.
        output_dir: run folder (``checkpoints/``, ``model.tar``, ``config.yaml``).
        state: the run position (shared with the trainer and the loader).
        optimizer, scheduler, scaler: their ``state_dict`` go to ``opt``, ``scheduler``, ``grad_scaler``.
        validator: ``micalib.engine.validator.Validator`` (best values) or None.
        loader: restarted after a resume (the epoch and offset come from the checkpoint).
        seed, batch_size: stored and compared on resume; each rank reseeds with ``seed + rank + step``
            when a checkpoint has no usable RNG state.
        config_text: the merged config (``config`` entry and ``config.yaml``).
        keep: periodic checkpoints kept (0 = all); keep_every: steps kept for good (0 = none).
    """

    def __init__(self, mica: nn.Module, output_dir: os.PathLike | str, state: TrainState, *,
                 optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, validator: Any = None,
                 loader: Optional[ResumableLoader] = None, seed: int = 0, batch_size: int = 1,
                 config_text: str = "", keep: int = 3, keep_every: int = 0) -> None:
        self.mica = mica
        self.output_dir = Path(output_dir)
        self.state = state
        self.optimizer, self.scheduler, self.scaler, self.validator = optimizer, scheduler, scaler, validator
        self.loader = loader
        self.seed, self.batch_size, self.config_text = int(seed), int(batch_size), config_text
        self.keep, self.keep_every = int(keep), int(keep_every)
        self.device = next(mica.parameters()).device
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / CHECKPOINT_DIR

    # -------------------------------------------------------------------------------------------
    def _extra(self, rng: Optional[List[Dict[str, Any]]]) -> Dict[str, Any]:
        extra = {
            "opt": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "validator": self.validator.state_dict() if self.validator is not None else {},
            "global_step": self.state.step,
            "epoch": self.state.epoch,
            "epoch_offset": self.state.offset,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
            "config": self.config_text,
        }
        if rng is not None:
            extra["rng"] = rng
        return extra

    def write(self, path: os.PathLike | str, rng: Optional[List[Dict[str, Any]]] = None) -> Path:
        """Write a checkpoint of the current state to ``path`` (atomic; call on rank 0)."""
        return save_mica_checkpoint(path, self.mica.arcface, self.mica.regressor, self.mica.flame, self._extra(rng))

    def save(self) -> Optional[Path]:
        """Periodic checkpoint at the current step, ``last_checkpoint`` updated, old ones pruned.

        Collective (gathers every rank's RNG state); rank 0 writes. Returns the path on rank 0.
        """
        rng = comm.all_gather_object(get_rng_state(self.device))
        path = None
        if comm.is_main_process():
            path = self.checkpoint_dir / f"model_{self.state.step:08d}.tar"
            self.write(path, rng)
            atomic_write_text(self.checkpoint_dir / LAST_CHECKPOINT, path.name + "\n")
            self.prune()
            logger.info(f"checkpoint {path}")
        comm.synchronize()
        return path

    def save_final(self) -> None:
        """``output_dir/model.tar`` (mica.tar format with the training state), rank 0; collective."""
        if comm.is_main_process():
            path = self.write(self.output_dir / FINAL_MODEL)
            logger.info(f"final model {path}")
        comm.synchronize()

    def save_best(self, path: os.PathLike | str) -> None:
        """A best-model file (rank 0; no RNG state)."""
        self.write(path)

    def save_config(self) -> Path:
        """``config.yaml`` beside the run."""
        return write_config(self.output_dir, self.config_text)

    def prune(self) -> None:
        """Delete periodic checkpoints beyond the newest ``keep`` (those at multiples of ``keep_every`` stay)."""
        if self.keep <= 0:
            return
        files = sorted(self.checkpoint_dir.glob("model_*.tar"))
        for f in files[:-self.keep]:
            try:
                step = int(f.stem.split("_")[1])
            except (IndexError, ValueError):
                continue
            if self.keep_every > 0 and step % self.keep_every == 0:
                continue
            f.unlink(missing_ok=True)

    def last_checkpoint(self) -> Optional[Path]:
        """The newest periodic checkpoint of this run (see :func:`last_checkpoint`)."""
        return last_checkpoint(self.output_dir)

    # -------------------------------------------------------------------------------------------
    def _load_intact(self, path: Path, fallback: bool) -> tuple[Path, Dict[str, Any]]:
        """``path`` read; with ``fallback``, an unreadable periodic checkpoint (cut off by a kill or a
        full disk while written) gives way to the newest older one of this run that reads, with a
        warning."""
        fix = (f"it was cut off while being written (a kill, a full disk); delete it to resume from the one "
               f"before, or pass --resume with an older checkpoint of {self.checkpoint_dir}")
        try:
            return path, load_mica_checkpoint(path, fix)
        except MICAError as error:
            if not fallback:
                raise
            older = sorted((p for p in self.checkpoint_dir.glob("model_*.tar") if p.name < path.name), reverse=True)
            for candidate in older:
                try:
                    ckpt = load_mica_checkpoint(candidate, fix)
                except MICAError:
                    continue
                if comm.is_main_process():
                    logger.warning(f"the last checkpoint is unreadable ({error}); resuming from {candidate}, "
                                   f"the newest intact one")
                return candidate, ckpt
            raise

    def resume(self, path: os.PathLike | str, reset_optimizer: bool = False, fallback: bool = False) -> None:
        """Restore weights, optimiser, scheduler, loss scale, validator, position and RNG state from ``path``
        (``fallback``: from the newest intact checkpoint of this run when ``path`` is unreadable).

        Raises:
            MICAError: not a training checkpoint, or incompatible with this run.
        """
        path, ckpt = self._load_intact(Path(path), fallback)
        extra = ckpt["extra"]
        if "global_step" not in extra or "opt" not in extra:
            raise MICAError(f"{path} holds weights only, no training state (start from it with -m {path} "
                            f"instead of resuming)")
        official = _is_official(extra)
        load_arcface_into(self.mica.arcface, ckpt["arcface"], str(path))
        load_regressor_into(self.mica.regressor, ckpt["regressor"], str(path))
        step = int(extra["global_step"])
        if not reset_optimizer:
            self._load_optimizer(extra, path, official, step)
        if self.validator is not None and isinstance(extra.get("validator"), Mapping):
            try:
                self.validator.load_state_dict(extra["validator"])
            except (KeyError, TypeError, ValueError) as e:
                raise MICAError(f"{path}: validator state not understood ({e}); resume from another checkpoint "
                                f"or start over with --no-resume") from None
        self.state.step = step
        self.state.epoch = int(extra.get("epoch", 0))
        self.state.offset = int(extra.get("epoch_offset", 0))
        same_layout = (int(extra.get("world_size", 1)) == self.world_size
                       and int(extra.get("batch_size", -1)) == self.batch_size)
        if not same_layout:
            logger.warning(f"{path} was written with {extra.get('world_size', 1)} process(es) x batch "
                           f"{extra.get('batch_size')}, this run has {self.world_size} x {self.batch_size}: "
                           f"the epoch restarts and the data order differs")
            self.state.offset = 0
        rng = extra.get("rng")
        if rng is not None and same_layout and len(rng) == self.world_size:
            set_rng_state(rng[self.rank], self.device)
        else:
            seed_everything(self.seed + self.rank + self.state.step)
        if official and comm.is_main_process():
            logger.warning(f"{path} was written by the original MICA trainer: it holds no random-generator "
                           f"states or position inside epoch {self.state.epoch} (that epoch restarts), and "
                           f"its validation embeddings are not used")
        if self.loader is not None:
            self.loader.restart()
        if comm.is_main_process():
            lrs = ", ".join(f"{g.get('name')} {g['lr']:.3g}" for g in self.optimizer.param_groups)
            logger.info(f"resumed from {path} at step {self.state.step} (epoch {self.state.epoch}, "
                        f"batch {self.state.offset}), lr {lrs}")

    def _load_optimizer(self, extra: Mapping[str, Any], path: Path, official: bool, step: int) -> None:
        impl = [{k: g[k] for k in ("foreach", "fused") if k in g} for g in self.optimizer.param_groups]
        names = [g.get("name") for g in self.optimizer.param_groups]
        try:
            if official:
                self.optimizer.load_state_dict(official_optimizer_state(extra["opt"], self.mica, self.optimizer, str(path)))
                sched = self.scheduler.state_dict()
                sched.update(last_epoch=step, base_lrs=list(extra["scheduler"].get("base_lrs", sched["base_lrs"])),
                             _last_lr=[g["lr"] for g in self.optimizer.param_groups])
                self.scheduler.load_state_dict(sched)
            else:
                self.optimizer.load_state_dict(extra["opt"])
                self.scheduler.load_state_dict(extra["scheduler"])
                if extra.get("grad_scaler"):  # empty when written by a run without fp16
                    self.scaler.load_state_dict(extra["grad_scaler"])
        except (ValueError, KeyError, TypeError) as e:
            raise MICAError(f"{path}: optimiser state does not fit this model ({e}); "
                            f"set train.reset_optimizer True") from None
        # how AdamW runs (train.optimizer) is this run's choice, not part of the saved state
        for g, keep, name in zip(self.optimizer.param_groups, impl, names):
            g.update(keep)
            if name is not None:
                g["name"] = name
