"""Validation on FLORENCE (or any ``dataset.eval_data``): per-dataset loss and best-model files.

Every process validates its own share of the actors (actor ``i`` goes to rank ``i % world``); the
per-image loss sums and counts are all-reduced, so the numbers do not depend on the process count.
Each validation item is one actor with its first ``eval_K`` images (``datasets.MICADataset`` in eval
mode); the loss is the training loss (masked per-vertex L1 x1000) against the actor's canonical FLAME.

Best models, as in the original: ``best_models/best_average.tar`` whenever the overall validation loss
is the lowest so far (the original's ``best_model_1.tar``), and ``best_models/best_running_average.tar``
whenever the running average ``r <- r (n-1)/n + loss/n`` (``n = running_average``, 7; the first
value starts it) is the lowest so far (the original's ``best_model_3.tar``). NaN losses are logged
and ignored.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from utils import dist as comm

BEST_DIR = "best_models"
BEST_AVERAGE = "best_average.tar"
BEST_RUNNING = "best_running_average.tar"
# Images per forward pass.
CHUNK = 64


class BestModelTracker:
    """Lowest validation loss and lowest running average (window ``n``); NaN values are ignored."""

    def __init__(self, window: int = 7) -> None:
        if window < 1:
            raise ValueError(f"running_average must be >= 1, not {window}")
        self.window = int(window)
        self.best_average = math.inf
        self.best_running = math.inf
        self.running: float | None = None
        self.count = 0

    def update(self, average: float) -> dict[str, bool]:
        """Feed one validation loss; returns which best values improved (``average``, ``running``)."""
        if not math.isfinite(average):
            logger.warning(f"validation loss is {average}; ignored for the best models")
            return {"average": False, "running": False}
        n = self.window
        self.running = average if self.running is None else self.running * (n - 1) / n + average / n
        self.count += 1
        improved = {"average": average < self.best_average, "running": self.running < self.best_running}
        if improved["average"]:
            self.best_average = average
        if improved["running"]:
            self.best_running = self.running
        return improved

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "best_average": self.best_average, "best_running": self.best_running,
                "running": self.running, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`, or the official trainer's ``best_model`` record.

        The official record (``utils/best_model.py``: ``average``, ``smoothed_average``,
        ``running_average``, ``now_mean``, ``counter``) maps as: ``average`` (lowest validation loss)
        -> ``best_average``, ``smoothed_average`` (lowest running average) -> ``best_running``,
        ``running_average`` (the running average now) -> ``running``, ``counter`` (validations seen;
        None before the first) -> ``count``. ``now_mean`` (its best NoW mean; no benchmark runs
        during training here) has no counterpart and is dropped. The window is this run's
        ``running_average``: the official record does not store it.

        Raises:
            KeyError: neither layout.
        """
        if "best_average" not in state and "smoothed_average" in state:
            counter = state["counter"]
            running = None if counter is None else float(state["running_average"])
            state = {"best_average": state["average"], "best_running": state["smoothed_average"],
                     "running": running if running is None or math.isfinite(running) else None,
                     "count": 0 if counter is None else counter}
        self.best_average = float(state["best_average"])
        self.best_running = float(state["best_running"])
        self.running = None if state["running"] is None else float(state["running"])
        self.count = int(state["count"])


class Validator:
    """Validation losses per dataset, plus best-model bookkeeping.

    Args:
        datasets: validation datasets (each with a ``name``), items as ``datasets.MICADataset``.
        loss_fn: ``micalib.engine.losses.VertexLoss`` (has ``per_sample(pred, gt) -> (N,)``).
        collate_fn: batch collation (``datasets.collate_mica``).
        output_dir: run folder; best models go to ``output_dir/best_models``.
        window: running-average window (``running_average``).
    """

    def __init__(self, datasets: Sequence[Dataset], loss_fn: nn.Module, collate_fn=None,
                 output_dir: Path | str = ".", window: int = 7, num_workers: int = 0) -> None:
        self.datasets = list(datasets)
        self.loss_fn = loss_fn
        self.collate_fn = collate_fn
        self.output_dir = Path(output_dir)
        self.num_workers = int(num_workers)
        self.best = BestModelTracker(window)
        self.history: list[dict[str, float]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"best_model": self.best.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Best values of :meth:`state_dict` or of the official trainer's ``validator`` entry (whose
        ``embeddings_lyhm``, ArcFace embeddings of validation actors for a plot it no longer draws,
        are not used here)."""
        if "best_model" in state:
            self.best.load_state_dict(state["best_model"])

    @torch.no_grad()
    def losses(self, mica: nn.Module) -> dict[str, float]:
        """``{"loss_NAME": mean per-image loss, ..., "average": mean over all images}`` (all ranks take part)."""
        device = next(mica.parameters()).device
        rank, world = comm.get_rank(), comm.get_world_size()
        was_training = mica.training
        mica.eval()
        sums = torch.zeros(len(self.datasets), 2, dtype=torch.float64, device=device)
        try:
            for d, ds in enumerate(self.datasets):
                mine = list(range(rank, len(ds), world))
                if not mine:
                    continue
                loader = DataLoader(Subset(ds, mine), batch_size=1, shuffle=False, collate_fn=self.collate_fn,
                                    num_workers=min(self.num_workers, len(mine)))
                for batch in loader:
                    images = batch["arcface"].to(device)
                    B, K = images.shape[:2]
                    images = images.reshape(B * K, *images.shape[2:])
                    gt = mica.flame.canonical(batch["identity"].to(device, torch.float32)).float()
                    gt = gt.repeat_interleave(K, dim=0)
                    for s in range(0, images.shape[0], CHUNK):
                        pred = mica.decode(mica.encode(images[s:s + CHUNK]))["vertices"].float()
                        per = self.loss_fn.per_sample(pred, gt[s:s + CHUNK]).double()
                        sums[d, 0] += per.sum()
                        sums[d, 1] += per.numel()
        finally:
            mica.train(was_training)
        sums = comm.all_reduce_sum(sums).cpu()
        out: dict[str, float] = {}
        for d, ds in enumerate(self.datasets):
            name = getattr(ds, "name", str(d))
            out[f"loss_{name}"] = float(sums[d, 0] / sums[d, 1]) if sums[d, 1] > 0 else float("nan")
        total = sums.sum(dim=0)
        out["average"] = float(total[0] / total[1]) if total[1] > 0 else float("nan")
        return out

    def run(self, mica: nn.Module, step: int, save_fn: Callable[[Path], None] | None = None) -> dict[str, float]:
        """Validate, update the best models (``save_fn(path)`` on rank 0) and return the losses
        plus ``running_average``. No datasets: empty dict."""
        if not self.datasets:
            return {}
        out = self.losses(mica)
        improved = self.best.update(out["average"])
        if self.best.running is not None:
            out["running_average"] = self.best.running
        self.history.append({"step": float(step), **out})
        if comm.is_main_process():
            text = " ".join(f"{k} {v:.5f}" for k, v in out.items())
            logger.info(f"validation at step {step}: {text}")
            if save_fn is not None:
                if improved["average"]:
                    save_fn(self.output_dir / BEST_DIR / BEST_AVERAGE)
                    logger.info(f"best validation loss {self.best.best_average:.5f} at step {step}")
                if improved["running"]:
                    save_fn(self.output_dir / BEST_DIR / BEST_RUNNING)
                    logger.info(f"best running average {self.best.best_running:.5f} at step {step}")
        return out
