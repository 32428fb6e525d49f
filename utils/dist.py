"""Distributed helpers in the style of detectron2's ``comm``: written once, work with one process.

``torchrun`` (or SLURM/HTCondor wrappers around it) sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; ``init_distributed()`` reads them (``env://``) and starts a
process group with NCCL on CUDA and GLOO on CPU. Without a process group every helper degrades to
the single-process answer: rank 0, world size 1, barriers and reductions are no-ops.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from loguru import logger

from utils.errors import MICAError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global ``rank``, ``local_rank`` on its machine, ``world_size``."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_initialized() -> bool:
    """True when a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def get_rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def get_local_rank() -> int:
    """Rank on this machine (``LOCAL_RANK`` set by torchrun; 0 otherwise)."""
    if not is_initialized():
        return 0
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0 (the only process that logs, writes TensorBoard and checkpoints)."""
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes; no-op with one process."""
    if get_world_size() > 1:
        dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise MICAError(f"environment variable {name}='{value}' is not an integer (torchrun sets it; unset it to run one process)") from None


def dist_info_from_env() -> DistInfo:
    """Rank, local rank and world size from the torchrun environment (0, 0, 1 when unset)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise MICAError(f"inconsistent torchrun environment RANK={rank} WORLD_SIZE={world} (launch with torchrun --nproc_per_node N)")
    return DistInfo(rank=rank, local_rank=local, world_size=world)


def init_distributed(device_type: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Start the default process group from the torchrun environment when ``WORLD_SIZE > 1``.

    Args:
        device_type: "cuda" picks NCCL (and selects GPU ``LOCAL_RANK``), anything else GLOO;
            None = "cuda" when CUDA is available, else "cpu".
        timeout_s: collective timeout in seconds.
    Returns:
        ``DistInfo`` of this process (rank 0 / world 1 without torchrun).
    Raises:
        MICAError: the environment is inconsistent or there are fewer GPUs than local ranks.
    """
    info = dist_info_from_env()
    if not info.distributed or is_initialized():
        return DistInfo(get_rank(), info.local_rank if is_initialized() else 0, get_world_size())
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise MICAError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} GPU(s) are visible "
                            f"(lower torchrun --nproc_per_node or set device cpu)")
        torch.cuda.set_device(info.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(key):
            raise MICAError(f"WORLD_SIZE={info.world_size} but {key} is not set (launch with torchrun, see jobs/torchrun.sh)")
    dist.init_process_group(backend=backend, init_method="env://", rank=info.rank, world_size=info.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    logger.debug(f"process group up: backend {backend}, rank {info.rank}/{info.world_size}, local rank {info.local_rank}")
    return info


def destroy_distributed() -> None:
    """Tear the default process group down (no-op without one)."""
    if is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all processes (a new tensor; the input is left alone)."""
    out = tensor.detach().clone()
    if get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(values: torch.Tensor | dict[str, float]) -> torch.Tensor | dict[str, float]:
    """Mean over all processes of a tensor, or of each value of a dict of floats (same keys on every rank)."""
    world = get_world_size()
    if isinstance(values, dict):
        keys = sorted(values)
        if not keys:
            return {}
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        t = _reduce_on_backend_device(t) / world
        return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}
    return all_reduce_sum(values) / world


def _reduce_on_backend_device(t: torch.Tensor) -> torch.Tensor:
    """All-reduce (sum) a CPU tensor, moving it to the current GPU when the backend is NCCL."""
    if get_world_size() == 1:
        return t
    if dist.get_backend() == "nccl":
        return all_reduce_sum(t.to(torch.device("cuda", torch.cuda.current_device()))).cpu()
    return all_reduce_sum(t)


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects; ``[obj]`` with one process)."""
    world = get_world_size()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every process."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
