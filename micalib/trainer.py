"""MICA training: AdamW + StepLR, masked per-vertex L1 (x1000), real DDP, resumable checkpoints.

One optimiser step (``Trainer.run_step``): a batch of ``batch_size`` actors x ``K`` images (one
DataLoader batch per process), ArcFace -> mapping network -> canonical FLAME for every image, the
ground truth = canonical FLAME of the actor's ``betas`` shared by its K images, loss, backward, step.
Everything else (LR schedule, metrics, validation, images, checkpoints) is a hook
(``micalib/hooks.py``).

Multi-process (``torchrun``): the model is wrapped in ``DistributedDataParallel``, every process reads
its own shard through :class:`ResumableDistributedSampler` (``set_epoch`` each epoch), ``batch_size``
is per process, and trainable BatchNorm layers (ArcFace layer4 and head) are synchronised across
processes (unlike MICA, whose BatchNorm is per-process everywhere, because the batch statistics
then do not depend on how the batch is split). The BatchNorm layers of the frozen stages (stem,
layer1..3) are not synchronised: as in MICA, each process normalises them with its own batch
statistics and updates its own running statistics from there (DDP copies rank 0's buffers to every
process before each forward), and rank 0's are saved. So N processes x batch b train exactly like
one process with batch N*b only with ``model.freeze_bn True``. Rank 0 alone logs, writes TensorBoard
and checkpoints.

ArcFace's frozen stages: by default, as MICA, ``train()`` puts their BatchNorm layers in train mode
(no gradient, but batch statistics and updated running statistics); ``model.freeze_bn True`` keeps
them in eval mode, unlike MICA (see ``models.arcface.freeze_for_mica``).

Checkpoints (``output_dir/checkpoints/model_XXXXXXXX.tar``) are in the ``mica.tar`` format (the demo
and test.py read them) plus ``opt``, ``scheduler``, ``validator``, ``global_step``, ``epoch``,
``epoch_offset`` (batches already consumed in that epoch), ``batch_size``, ``world_size``, ``config``
and ``rng`` (Python, NumPy, torch and CUDA generator states of every rank). ``last_checkpoint`` names
the newest; the last ``keep_checkpoints`` are kept (steps divisible by ``checkpoint_epochs_steps``
are kept for good). A run resumed from one continues at the same step, learning rate, sample and
random state: with ``train.deterministic`` it ends bit-identical to an uninterrupted run.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import torch
from loguru import logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from configs.config import resolve_path
from datasets import build as dsb
from datasets.mica_dataset import collate_mica
from datasets.sampler import ResumableDistributedSampler
from micalib import hooks
from micalib.losses import VertexLoss
from micalib.mica import MICA
from micalib.sync_batchnorm import convert_sync_batchnorm
from micalib.validator import Validator
from utils import dist as comm
from utils.checkpoint import load_arcface_into, load_mica_checkpoint, load_regressor_into, save_mica_checkpoint
from utils.device import autocast, resolve_device, resolve_precision
from utils.errors import MICAError
from utils.image_io import write_image
from utils.io import atomic_write_text
from utils.rng import get_rng_state, seed_everything, seed_worker, set_rng_state

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last_checkpoint"
FINAL_MODEL = "model.tar"
# Images pushed through the network at once during validation.
VAL_CHUNK = 64
# Samples shown in the training image grid.
VIS_SAMPLES = 4


class NonFiniteLossError(MICAError):
    """The training loss became NaN/inf (diverged run or broken data)."""


# ------------------------------------------------------------------------------------------------
# The module DDP wraps
# ------------------------------------------------------------------------------------------------
class MICAForward(nn.Module):
    """What DDP wraps: ``images (N, 3, 112, 112) -> predicted canonical vertices (N, V, 3)`` in metres."""

    def __init__(self, mica: nn.Module) -> None:
        super().__init__()
        self.mica = mica

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.mica.decode(self.mica.encode(images))["vertices"]


def parameter_groups(mica: nn.Module, lr: float, arcface_lr: float) -> List[Dict[str, Any]]:
    """AdamW groups: the mapping network at ``lr``, ArcFace's trainable part at ``arcface_lr``."""
    groups = [
        {"name": "mapping", "params": [p for p in mica.regressor.parameters() if p.requires_grad], "lr": lr},
        {"name": "arcface", "params": [p for p in mica.arcface.parameters() if p.requires_grad], "lr": arcface_lr},
    ]
    return [g for g in groups if g["params"]]


def freeze_untrained(mica: nn.Module, groups: Sequence[Mapping[str, Any]]) -> None:
    """``requires_grad=False`` on every parameter outside the optimiser groups (e.g. FLAME's), so DDP
    does not wait for gradients that never come."""
    trained = {id(p) for g in groups for p in g["params"]}
    for p in mica.parameters():
        if id(p) not in trained:
            p.requires_grad_(False)


# ------------------------------------------------------------------------------------------------
# Run position
# ------------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """Position of a run: finished optimiser steps, epoch, batches of that epoch already consumed."""

    step: int = 0
    epoch: int = 0
    offset: int = 0


# ------------------------------------------------------------------------------------------------
# Trainer
# ------------------------------------------------------------------------------------------------
class Trainer:
    """Trains a MICA model (``arcface``, ``regressor``, ``flame`` children; ``encode``/``decode``).

    Args:
        mica: the model, already on ``device``, ArcFace frozen (``models.arcface.freeze_for_mica``).
        train_dataset: items with ``arcface`` (K, 3, 112, 112) and ``betas`` (n_shape,)
            (``datasets.MICADataset``); ``set_epoch`` is called each epoch when present.
        collate_fn: batch collation (``datasets.collate_mica``).
        val_datasets: validation datasets (items with all ``eval_K`` images of an actor); may be empty.
        vertex_weights: ``(V,)`` loss weights.
        output_dir: run folder (checkpoints, logs, images, config.yaml).
        batch_size: actors per process and step; max_steps: optimiser steps in all.
        lr, arcface_lr, weight_decay, lr_update_step: AdamW groups and StepLR(0.1) period.
        seed: base seed (each rank adds its rank); num_workers: DataLoader workers.
        keep_checkpoints: periodic checkpoints kept (0 = all); keep_every: steps kept for good (0 = none).
        running_average: window of the validation running average.
        amp_dtype: autocast dtype (float32 = off).
        write_summary: TensorBoard on rank 0.
    """

    def __init__(self, mica: nn.Module, train_dataset: Dataset, *, output_dir: os.PathLike | str,
                 vertex_weights: torch.Tensor, batch_size: int, max_steps: int, lr: float, arcface_lr: float,
                 weight_decay: float, lr_update_step: int, seed: int = 0, num_workers: int = 0,
                 collate_fn=None, val_datasets: Sequence[Dataset] = (), keep_checkpoints: int = 3,
                 keep_every: int = 0, running_average: int = 7, amp_dtype: torch.dtype = torch.float32,
                 write_summary: bool = True, vis_dir: str = "train_images", log_dir: str = "logs",
                 config_text: str = "") -> None:

        self.device = next(mica.parameters()).device
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.output_dir = Path(output_dir)
        self.mica = mica
        self.batch_size, self.max_steps = int(batch_size), int(max_steps)
        self.seed, self.amp_dtype, self.config_text = int(seed), amp_dtype, config_text
        self.keep_checkpoints, self.keep_every = int(keep_checkpoints), int(keep_every)
        self.vis_dir = self.output_dir / vis_dir
        self.state = TrainState()
        self.completed = False
        self.last_metrics: Dict[str, float] = {}
        self._last_batch: Optional[Dict[str, torch.Tensor]] = None
        self.progress: Optional[tqdm] = None

        groups = parameter_groups(mica, lr, arcface_lr)
        freeze_untrained(mica, groups)
        if self.world_size > 1:
            convert_sync_batchnorm(mica)
            groups = parameter_groups(mica, lr, arcface_lr)  # converted BN layers hold new parameters
        self.optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, amsgrad=False)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=int(lr_update_step), gamma=0.1)
        self.loss_fn = VertexLoss(vertex_weights).to(self.device)
        # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (scaler disabled)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16)
        forward = MICAForward(mica)
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model: nn.Module = DistributedDataParallel(forward, device_ids=ids)
        else:
            self.model = forward

        self.train_dataset = train_dataset
        if len(train_dataset) // self.world_size < self.batch_size:
            raise MICAError(f"dataset.batch_size = {batch_size} is larger than the {len(train_dataset) // self.world_size} "
                            f"training actors of each of the {self.world_size} processes; lower dataset.batch_size")
        self.sampler = ResumableDistributedSampler(train_dataset, self.world_size, self.rank, seed=self.seed)
        self.batches_per_epoch = self.sampler.num_samples // self.batch_size
        self._loader_generator = torch.Generator()
        self.loader = DataLoader(train_dataset, batch_size=self.batch_size, sampler=self.sampler,
                                 num_workers=int(num_workers), collate_fn=collate_fn, drop_last=True,
                                 pin_memory=self.device.type == "cuda", worker_init_fn=seed_worker,
                                 generator=self._loader_generator, persistent_workers=False)
        self._data_iter: Optional[Iterator] = None
        self.validator = Validator(val_datasets, self.loss_fn, collate_fn=collate_fn, output_dir=self.output_dir,
                                   window=running_average, num_workers=int(num_workers))

        self.writer = None
        if write_summary and comm.is_main_process():
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(self.output_dir / log_dir))
        self.hooks: List = []

    # -------------------------------------------------------------------------------------------
    def register_hooks(self, hooks: Sequence) -> None:
        """Append hooks (called in registration order)."""
        for h in hooks:
            h.attach(self)
            self.hooks.append(h)

    def train(self) -> None:
        """Run until ``max_steps``; hooks' ``after_train`` runs even when a step fails."""
        self.completed = self.state.step >= self.max_steps
        if comm.is_main_process():
            logger.info(f"training from step {self.state.step} to {self.max_steps} on {self.world_size} process(es), "
                        f"{self.batch_size} actors x K per process and step, {self.batches_per_epoch} steps per epoch")
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
                if self.writer is not None:
                    self.writer.flush()

    def _next_batch(self) -> Dict[str, Any]:
        """Next batch of this rank's shard; advances ``state.epoch``/``state.offset``."""
        if self._data_iter is None:
            st = self.state
            self.sampler.set_epoch(st.epoch)
            self.sampler.set_start(st.offset * self.batch_size)
            if hasattr(self.train_dataset, "set_epoch"):
                self.train_dataset.set_epoch(st.epoch)
            # Worker seeds depend only on (seed, rank, epoch), never on the global torch RNG.
            self._loader_generator.manual_seed(self.seed * 1_000_003 + self.rank * 1009 + st.epoch)
            self._data_iter = iter(self.loader)
        batch = next(self._data_iter)
        self.state.offset += 1
        if self.state.offset >= self.batches_per_epoch:
            self.state.epoch += 1
            self.state.offset = 0
            self._data_iter = None
        return batch

    def ground_truth(self, betas: torch.Tensor) -> torch.Tensor:
        """``(B, n_shape)`` FLAME identity -> ``(B, V, 3)`` canonical vertices in metres (no gradient)."""
        with torch.no_grad():
            return self.mica.flame.canonical(betas.to(self.device, torch.float32)).float()

    def run_step(self) -> None:
        """One optimiser step: data, forward, loss, backward, step."""
        self.mica.train()
        t0 = time.perf_counter()
        batch = self._next_batch()
        images = batch["arcface"].to(self.device, non_blocking=True)
        B, K = images.shape[:2]
        images = images.reshape(B * K, *images.shape[2:])
        gt = self.ground_truth(batch["betas"]).repeat_interleave(K, dim=0)
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
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)  # with fp16: skipped when a gradient overflowed, scale lowered
        self.scaler.update()
        self.state.step = step
        t2 = time.perf_counter()
        self.last_metrics = {"loss": float(loss.detach()), "data_time": t1 - t0, "step_time": t2 - t1}
        self._last_batch = {"images": images[:VIS_SAMPLES].detach(), "pred": pred[:VIS_SAMPLES].detach().float(),
                            "gt": gt[:VIS_SAMPLES]}

    # -------------------------------------------------------------------------------------------
    def validate(self) -> Dict[str, float]:
        """Validation losses (all ranks take part); best models saved by rank 0."""
        results = self.validator.run(self.mica, self.state.step, save_fn=self._save_best)
        if comm.is_main_process() and self.writer is not None and results:
            for k, v in results.items():
                self.writer.add_scalar(f"val/{k}", v, global_step=self.state.step)
        return results

    def _save_best(self, path: Path) -> None:
        self._write_checkpoint(path, self._training_extra(rng=None))

    def visualize_last_batch(self) -> Optional[np.ndarray]:
        """Grid of input crops | predicted | ground-truth renders -> TensorBoard and ``vis_dir`` (rank 0)."""
        if self._last_batch is None:
            return None
        from micalib.renderer import fit_camera, make_grid, render_mesh

        b = self._last_batch
        faces = self.mica.flame.faces.detach().cpu().numpy()
        tiles = []
        for i in range(b["images"].shape[0]):
            crop = ((b["images"][i].float().cpu().numpy().transpose(1, 2, 0) * 127.5) + 127.5).clip(0, 255).astype(np.uint8)
            size = 224
            crop = _resize_uint8(crop, size)
            cam = fit_camera(b["gt"][i].cpu().numpy(), size)  # one camera: size differences stay visible
            pred = render_mesh(b["pred"][i].cpu().numpy(), faces, size=size, camera=cam)
            gt = render_mesh(b["gt"][i].cpu().numpy(), faces, size=size, camera=cam)
            tiles += [crop, _as_rgb_uint8(pred), _as_rgb_uint8(gt)]
        grid = make_grid(tiles, nrow=3)
        step = self.state.step
        if self.writer is not None:
            self.writer.add_image("train/crop_pred_gt", grid, global_step=step, dataformats="HWC")
        write_image(self.vis_dir / f"{step:08d}.jpg", grid)
        return grid

    # -------------------------------------------------------------------------------------------
    def _training_extra(self, rng: Optional[List[Dict[str, Any]]]) -> Dict[str, Any]:
        extra = {
            "opt": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict(),
            "validator": self.validator.state_dict(),
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

    def _write_checkpoint(self, path: Path, extra: Dict[str, Any]) -> None:

        save_mica_checkpoint(path, self.mica.arcface, self.mica.regressor, self.mica.flame, extra)

    def checkpoint_dir(self) -> Path:
        return self.output_dir / CHECKPOINT_DIR

    def save_checkpoint(self) -> Optional[Path]:
        """Periodic checkpoint at the current step (collective: gathers every rank's RNG state)."""
        rng = comm.all_gather_object(get_rng_state(self.device))
        path = None
        if comm.is_main_process():
            ckpt_dir = self.checkpoint_dir()
            path = ckpt_dir / f"model_{self.state.step:08d}.tar"
            self._write_checkpoint(path, self._training_extra(rng))
            atomic_write_text(ckpt_dir / LAST_CHECKPOINT, path.name + "\n")
            self._prune(ckpt_dir)
            logger.info(f"checkpoint {path}")
        comm.synchronize()
        return path

    def save_final_model(self) -> None:
        """``output_dir/model.tar`` (mica.tar format with the training state), rank 0."""
        if comm.is_main_process():
            path = self.output_dir / FINAL_MODEL
            self._write_checkpoint(path, self._training_extra(rng=None))
            logger.info(f"final model {path}")
        comm.synchronize()

    def _prune(self, ckpt_dir: Path) -> None:
        if self.keep_checkpoints <= 0:
            return
        files = sorted(ckpt_dir.glob("model_*.tar"))
        kept = files[-self.keep_checkpoints:]
        for f in files:
            if f in kept:
                continue
            try:
                step = int(f.stem.split("_")[1])
            except (IndexError, ValueError):
                continue
            if self.keep_every > 0 and step % self.keep_every == 0:
                continue
            f.unlink(missing_ok=True)

    def last_checkpoint(self) -> Optional[Path]:
        """The checkpoint named in ``checkpoints/last_checkpoint`` (None when there is none)."""
        pointer = self.checkpoint_dir() / LAST_CHECKPOINT
        if not pointer.is_file():
            return None
        path = self.checkpoint_dir() / pointer.read_text(encoding="utf-8").strip()
        if not path.is_file():
            raise MICAError(f"{pointer} names {path.name}, which does not exist (delete {pointer} to start over "
                            f"or set train.resume False)")
        return path

    def resume(self, path: os.PathLike | str, reset_optimizer: bool = False) -> None:
        """Restore weights, optimiser, scheduler, validator, position and RNG state from ``path``.

        Raises:
            MICAError: not a training checkpoint of this project, or incompatible with this run.
        """

        path = Path(path)
        ckpt = load_mica_checkpoint(path)
        extra = ckpt["extra"]
        if "global_step" not in extra or "opt" not in extra:
            raise MICAError(f"{path} holds weights only, no training state (start from it with -m {path} "
                            f"instead of resuming)")
        load_arcface_into(self.mica.arcface, ckpt["arcface"], str(path))
        load_regressor_into(self.mica.regressor, ckpt["regressor"], str(path))
        if not reset_optimizer:
            try:
                self.optimizer.load_state_dict(extra["opt"])
                self.scheduler.load_state_dict(extra["scheduler"])
                if extra.get("grad_scaler"):  # empty when written by a run without fp16
                    self.scaler.load_state_dict(extra["grad_scaler"])
            except (ValueError, KeyError) as e:
                raise MICAError(f"{path}: optimiser state does not fit this model ({e}); set train.reset_optimizer True") from None
        if "validator" in extra:
            self.validator.load_state_dict(extra["validator"])
        self.state = TrainState(int(extra["global_step"]), int(extra.get("epoch", 0)), int(extra.get("epoch_offset", 0)))
        same_layout = int(extra.get("world_size", 1)) == self.world_size and int(extra.get("batch_size", -1)) == self.batch_size
        if not same_layout:
            logger.warning(f"{path} was written with {extra.get('world_size')} process(es) x batch {extra.get('batch_size')}, "
                           f"this run has {self.world_size} x {self.batch_size}: the epoch restarts and the data order differs")
            self.state.offset = 0
        rng = extra.get("rng")
        if rng is not None and same_layout and len(rng) == self.world_size:
            set_rng_state(rng[self.rank], self.device)
        else:
            seed_everything(self.seed + self.rank + self.state.step)
        self._data_iter = None
        if comm.is_main_process():
            lrs = ", ".join(f"{g.get('name')} {g['lr']:.3g}" for g in self.optimizer.param_groups)
            logger.info(f"resumed from {path} at step {self.state.step} (epoch {self.state.epoch}, "
                        f"batch {self.state.offset}), lr {lrs}")


def _resize_uint8(img: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


def _as_rgb_uint8(img: Any) -> np.ndarray:
    """Renderer output (HxW, HxWx3/4; float in [0,1] or uint8; numpy or tensor) -> HxWx3 uint8."""
    if torch.is_tensor(img):
        img = img.detach().cpu().numpy()
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (1, 3, 4) and img.shape[-1] not in (1, 3, 4):
        img = img.transpose(1, 2, 0)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8) if img.max() <= 1.0 + 1e-6 else np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


# ------------------------------------------------------------------------------------------------
# Building from the config
# ------------------------------------------------------------------------------------------------
def default_hooks(cfg) -> List:
    """LR schedule, metrics, validation, images, checkpoints, timer -- in that order."""

    return [
        hooks.LRSchedulerHook(),
        hooks.MetricsHook(int(cfg.train.log_steps)),
        hooks.EvalHook(int(cfg.train.val_steps)),
        hooks.VisualizationHook(int(cfg.train.vis_steps)),
        hooks.PeriodicCheckpointer(int(cfg.train.checkpoint_steps)),
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
    if not pointer.is_file():
        if resume in (True, "auto"):
            raise FileNotFoundError(f"--resume: no checkpoint in {pointer.parent} ({pointer.name} missing); "
                                    f"check output_dir or start without --resume")
        return None
    path = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    if not path.is_file():
        raise MICAError(f"{pointer} names {path.name}, which does not exist (delete {pointer} to start over)")
    return path


def build_trainer(cfg, resume: Optional[str | bool] = None, device: Optional[torch.device] = None,
                  extra_hooks: Sequence = ()) -> Trainer:
    """Datasets, model, optimiser and hooks from the config; resumes or loads initial weights.

    Config mistakes (unknown dataset, missing root, batch larger than the data, missing weight
    files) fail here, before any training, with one line.

    Args:
        cfg: frozen config (``configs.config.load_cfg``).
        resume: see :func:`find_resume_checkpoint`.
        device: override of ``cfg.device``.
        extra_hooks: appended after the default hooks.
    """
    from models import masks

    rank = comm.get_rank()
    dev = device if device is not None else training_device(cfg)
    if bool(cfg.train.deterministic):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    seed_everything(int(cfg.seed) + rank)
    amp_dtype = resolve_precision(cfg.precision, dev)
    if int(cfg.train.max_steps) < 1:
        raise MICAError(f"train.max_steps must be >= 1, not {cfg.train.max_steps}")

    train_ds = dsb.build_train_dataset(cfg)
    val_ds = dsb.build_val_datasets(cfg)
    ckpt = find_resume_checkpoint(cfg, resume)
    # resuming: the checkpoint brings the weights, the initial ones are neither needed nor loaded
    mica = MICA.from_config(cfg, dev, load_weights=ckpt is None)
    weights = torch.from_numpy(np.asarray(masks.from_config(cfg, mica.flame.n_vertices), dtype=np.float32))
    trainer = Trainer(
        mica, train_ds, output_dir=output_dir_of(cfg), vertex_weights=weights,
        batch_size=int(cfg.dataset.batch_size), max_steps=int(cfg.train.max_steps), lr=float(cfg.train.lr),
        arcface_lr=float(cfg.train.arcface_lr), weight_decay=float(cfg.train.weight_decay),
        lr_update_step=int(cfg.train.lr_update_step), seed=int(cfg.seed), num_workers=int(cfg.dataset.num_workers),
        collate_fn=collate_mica, val_datasets=val_ds, keep_checkpoints=int(cfg.train.keep_checkpoints),
        keep_every=int(cfg.train.checkpoint_epochs_steps), running_average=int(cfg.running_average),
        amp_dtype=amp_dtype, write_summary=bool(cfg.train.write_summary), vis_dir=str(cfg.train.vis_dir),
        log_dir=str(cfg.train.log_dir), config_text=cfg.dump())
    trainer.register_hooks(list(default_hooks(cfg)) + list(extra_hooks))
    if ckpt is not None:
        trainer.resume(ckpt, reset_optimizer=bool(cfg.train.reset_optimizer))
    return trainer
