"""utils/dist.py: single-process fallbacks and a real 2-process GLOO group (spawned here)."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from utils import dist as comm
from utils.errors import MICAError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_single_process_fallbacks(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert comm.get_rank() == 0 and comm.get_world_size() == 1 and comm.is_main_process()
    info = comm.init_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed) == (0, 1, False)
    assert not comm.is_initialized()
    comm.synchronize()
    t = torch.tensor([1.0, 3.0])
    assert torch.equal(comm.all_reduce_mean(t), t)
    assert comm.all_reduce_mean({"a": 2.5}) == {"a": 2.5}
    assert comm.all_gather_object({"x": 1}) == [{"x": 1}]


def test_bad_environment_is_one_line_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(MICAError, match="RANK=5 WORLD_SIZE=2"):
        comm.init_distributed("cpu")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(MICAError, match="MASTER_ADDR"):
        comm.init_distributed("cpu")


def _worker(rank: int, world: int, port: int, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    info = comm.init_distributed("cpu", timeout_s=60)
    try:
        out = {
            "info": (info.rank, info.local_rank, info.world_size),
            "rank": comm.get_rank(), "world": comm.get_world_size(), "main": comm.is_main_process(),
            # rank r contributes r+1: the mean over 2 ranks is 1.5, the sum 3.
            "mean_t": comm.all_reduce_mean(torch.tensor([float(rank + 1), 10.0 * rank])).tolist(),
            "sum_t": comm.all_reduce_sum(torch.tensor([rank + 1])).tolist(),
            "mean_d": comm.all_reduce_mean({"b": float(rank), "a": 4.0 + rank}),
            "gather": comm.all_gather_object(f"r{rank}"),
            "bcast": comm.broadcast_object({"from": rank}, src=1),
        }
        comm.synchronize()
        torch.save(out, os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        comm.destroy_distributed()


@pytest.mark.slow
def test_two_process_gloo(tmp_path):
    port = free_port()
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert r["info"] == (rank, rank, 2)
        assert (r["rank"], r["world"], r["main"]) == (rank, 2, rank == 0)
        assert r["mean_t"] == [1.5, 5.0]
        assert r["sum_t"] == [3]
        assert r["mean_d"] == {"a": 4.5, "b": 0.5}
        assert r["gather"] == ["r0", "r1"]
        assert r["bcast"] == {"from": 1}
