"""The training data stream: a DataLoader over this process's shard that can resume mid-epoch.

:class:`ResumableLoader` hands out one batch per optimiser step and keeps the run position
(``TrainState.epoch`` and ``TrainState.offset``, the batches of that epoch already consumed) in the
state object it is given, so a checkpoint of that object plus the RNG states restarts the stream at
the same sample. Worker seeds depend only on (seed, rank, epoch), never on the global torch RNG.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from datasets.sampler import ResumableDistributedSampler
from utils.errors import MICAError
from utils.rng import seed_worker


@dataclass
class TrainState:
    """Position of a run: finished optimiser steps, epoch, batches of that epoch already consumed."""

    step: int = 0
    epoch: int = 0
    offset: int = 0


class ResumableLoader:
    """``next()`` -> the next batch of this rank's shard; advances ``state.epoch`` / ``state.offset``.

    Args:
        dataset: items as ``datasets.MICADataset`` (``set_epoch`` is called each epoch when present).
        batch_size: actors per process and step (``drop_last``).
        world_size, rank: the process group's layout (each rank reads its own shard).
        seed: base seed of the shuffle and of the worker seeds.
        state: the run position this loader advances (shared with the trainer and checkpointer).
        num_workers, collate_fn, pin_memory: as ``torch.utils.data.DataLoader``.

    Raises:
        MICAError: fewer actors per process than ``batch_size``.
    """

    def __init__(self, dataset: Dataset, batch_size: int, world_size: int, rank: int, seed: int, state: TrainState,
                 num_workers: int = 0, collate_fn: Callable | None = None, pin_memory: bool = False) -> None:
        if len(dataset) // world_size < batch_size:
            raise MICAError(f"dataset.batch_size = {batch_size} is larger than the {len(dataset) // world_size} "
                            f"training actors of each of the {world_size} processes; lower dataset.batch_size")
        self.dataset = dataset
        self.batch_size, self.rank, self.seed = int(batch_size), int(rank), int(seed)
        self.state = state
        self.sampler = ResumableDistributedSampler(dataset, world_size, rank, seed=self.seed)
        self.batches_per_epoch = self.sampler.num_samples // self.batch_size
        self._generator = torch.Generator()
        self._loader = DataLoader(dataset, batch_size=self.batch_size, sampler=self.sampler,
                                  num_workers=int(num_workers), collate_fn=collate_fn, drop_last=True,
                                  pin_memory=pin_memory, worker_init_fn=seed_worker, generator=self._generator,
                                  persistent_workers=False)
        self._iter: Iterator | None = None

    def restart(self) -> None:
        """Drop the running iterator: the next batch is read from ``state``'s epoch and offset."""
        self._iter = None

    def next(self) -> dict[str, Any]:
        if self._iter is None:
            st = self.state
            self.sampler.set_epoch(st.epoch)
            self.sampler.set_start(st.offset * self.batch_size)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(st.epoch)
            self._generator.manual_seed(self.seed * 1_000_003 + self.rank * 1009 + st.epoch)
            self._iter = iter(self._loader)
        batch = next(self._iter)
        self.state.offset += 1
        if self.state.offset >= self.batches_per_epoch:
            self.state.epoch += 1
            self.state.offset = 0
            self._iter = None
        return batch
