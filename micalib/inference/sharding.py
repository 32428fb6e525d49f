"""Splitting a run over processes and machines: ``torchrun`` ranks or independent ``--shard K/N`` jobs.

The rule (one place): the run's units in sorted order, unit i goes to shard i mod N. A unit is what
must stay in one process: an image for the demo; with ``--fuse`` a sub-folder (its images are
averaged); an item of a benchmark export (a NoW image, a Stirling (quality, subject) group).

Two ways to get shard K of N:

- ``torchrun --nnodes M --nproc_per_node G demo.py ...``: K = RANK, N = WORLD_SIZE; a gloo process
  group (barriers and small gathers only) lets rank 0 write the summary after all ranks finished.
  Each rank uses GPU ``LOCAL_RANK`` and the CPU cores divided by the ranks of its machine.
- ``--shard K/N`` (e.g. K = ``$SLURM_ARRAY_TASK_ID``): the same split without torch.distributed; the
  jobs never talk to each other, and ``python -m micalib.inference.merge_summaries OUT`` writes the summary
  from their completion records afterwards. ``--shard`` under torchrun is an error.

Re-running with any other N finishes what is missing: whether an input is done is decided by its
completion record and its files (``micalib.inference.records``), never by the shard that made it.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from utils.errors import MICAError

T = TypeVar("T")

# collectives wait this long for the slowest rank (a shard of a large folder can take days)
BARRIER_TIMEOUT_S = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``; ``distributed``: a torchrun rank (a process group is up)."""

    index: int = 0
    count: int = 1
    distributed: bool = False
    local_rank: int = 0
    local_world: int = 1

    @property
    def sharded(self) -> bool:
        return self.count > 1

    @property
    def independent(self) -> bool:
        """A ``--shard`` job: no other shard to wait for, no summary of its own."""
        return self.sharded and not self.distributed

    @property
    def leader(self) -> bool:
        """This process holds the output lock and writes ``summary.csv``: the only process, or rank 0
        of a torchrun run (a ``--shard`` job does neither: the shards must not refuse each other)."""
        return not self.independent and self.index == 0

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, units: Sequence[T], key: Callable[[T], Hashable] = None) -> list[T]:
        """The units of this shard: unit i of the sorted order (by ``key``) goes to shard i mod N.
        Returned in their given order."""
        if self.count == 1:
            return list(units)
        order = sorted(range(len(units)), key=(lambda i: key(units[i])) if key else (lambda i: units[i]))
        mine = {i for rank, i in enumerate(order) if rank % self.count == self.index}
        return [u for i, u in enumerate(units) if i in mine]

    def select_groups(self, units: Sequence[T], group: Callable[[T], str]) -> list[T]:
        """The units whose group (e.g. sub-folder) falls to this shard: the sorted groups are the
        units of the rule."""
        if self.count == 1:
            return list(units)
        mine = set(self.select(sorted({group(u) for u in units})))
        return [u for u in units if group(u) in mine]


def parse_shard(text: str) -> Shard:
    """``"K/N"`` with 0 <= K < N -> ``Shard(K, N)``.

    Raises:
        MICAError: anything else (one line with the fix).
    """
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if m is None:
        raise MICAError(f"--shard {text}: expected K/N, e.g. --shard 0/4 "
                        f"(K = $SLURM_ARRAY_TASK_ID, N = the array size)")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= k < n:
        raise MICAError(f"--shard {text}: K must be 0..N-1 and N at least 1 (an array 0-{max(n - 1, 0)} for N={n})")
    return Shard(k, n)


def under_torchrun() -> bool:
    """True when torchrun started this process as one of several (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
    except ValueError:
        return True  # let init_distributed name the bad variable


def resolve_shard(shard_arg: str | None) -> Shard:
    """This process's shard: from torchrun's environment (starting the gloo process group), from
    ``--shard K/N``, or the whole run.

    Raises:
        MICAError: ``--shard`` under torchrun, a malformed ``--shard``, an inconsistent torchrun
            environment.
    """
    if under_torchrun():
        if shard_arg is not None:
            raise MICAError(f"--shard {shard_arg} cannot be combined with torchrun (torchrun already splits the "
                            f"inputs over its ranks); drop --shard, or run one plain process per shard")
        from utils.dist import init_distributed

        info = init_distributed("cpu", timeout_s=BARRIER_TIMEOUT_S)  # gloo: barriers and small gathers only
        local_world = _env_int("LOCAL_WORLD_SIZE", 1)
        return Shard(info.rank, info.world_size, True, info.local_rank, max(1, local_world))
    if shard_arg is None:
        return Shard()
    return parse_shard(shard_arg)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, "") or default)
    except ValueError:
        return default


def usable_cores() -> int:
    """The CPU cores this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def rank_cores(shard: Shard) -> int:
    """This process's share of the machine's cores: the usable cores over the ranks on this machine."""
    return max(1, usable_cores() // max(1, shard.local_world))


def rank_device(device: str | None, shard: Shard) -> str | None:
    """One GPU per rank: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` under torchrun when CUDA is
    available; anything else (and every device outside torchrun) is kept."""
    if not shard.distributed or device not in (None, "auto", "cuda"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    if shard.local_rank >= torch.cuda.device_count():
        raise MICAError(f"LOCAL_RANK {shard.local_rank} but only {torch.cuda.device_count()} GPU(s) are visible "
                        f"(lower torchrun --nproc_per_node)")
    torch.cuda.set_device(shard.local_rank)
    return f"cuda:{shard.local_rank}"


def barrier(shard: Shard) -> None:
    """Wait for every rank of a torchrun run (no-op otherwise)."""
    if shard.distributed:
        from utils.dist import synchronize

        synchronize()


def gather(shard: Shard, obj):
    """``[obj of rank 0, ...]`` in a torchrun run, ``[obj]`` otherwise (small objects only)."""
    if not shard.distributed:
        return [obj]
    from utils.dist import all_gather_object

    return all_gather_object(obj)
