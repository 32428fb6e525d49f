"""Training throughput on CPU: samples/s for batch 2 and 8, 1 vs 2 gloo processes, data vs compute
time, peak memory. Uses the synthetic FLAME and dataset of tests/ (nothing is downloaded).

    .venv/bin/python bench/train.py                       # iresnet18, batches 2 and 8, 1 and 2 processes
    .venv/bin/python bench/train.py --arch iresnet100 --steps 5 --batches 8 --worlds 1

A "sample" is one image (an actor brings K of them); ``batch`` is actors per process and step.
Prints one line per setting and a Markdown table for bench/README.md.
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data(folder: Path, n_actors: int, arch: str) -> None:
    """Synthetic FLAME, dataset (LYHM, K=2 images per actor) and a random mica.tar in ``folder``."""
    from tests.synthetic_dataset import make_synthetic_mica_dataset
    from tests.synthetic_flame import write_synthetic_flame
    from tests.synthetic_weights import write_random_mica_tar

    write_synthetic_flame(folder / "flame")
    make_synthetic_mica_dataset(folder / "data", names=("LYHM",), n_actors=n_actors, n_images=2, lists_dir=folder / "lists")
    write_random_mica_tar(folder / "init.tar", arch=arch)


def opts_for(folder: Path, arch: str, batch: int, steps: int, workers: int) -> List[str]:
    f = folder / "flame"
    kv = {
        "dataset.root": folder / "data", "dataset.image_lists": folder / "lists", "dataset.training_data": "['LYHM']",
        "dataset.eval_data": "[]", "dataset.batch_size": batch, "dataset.K": 2, "dataset.num_workers": workers,
        "model.arch": arch, "model.use_pretrained": True, "pretrained_model_path": folder / "init.tar",
        "model.flame_model_path": f / "generic_model.pkl", "model.flame_lmk_embedding_path": f / "landmark_embedding.npy",
        "model.flame_masks_path": f / "FLAME_masks.pkl", "train.use_mask": True, "output_dir": folder / f"out_{batch}",
        "device": "cpu", "train.max_steps": steps, "train.log_steps": 0, "train.val_steps": 0, "train.vis_steps": 0,
        "train.checkpoint_steps": 0, "train.write_summary": False, "train.resume": False,
    }
    return [str(x) for item in kv.items() for x in item]


def _worker(rank: int, world: int, port: int, opts: List[str], warmup: int, threads: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    from loguru import logger

    logger.remove()
    from configs.config import load_cfg
    from micalib.train_builder import build_trainer
    from utils import dist as comm

    comm.init_distributed("cpu", timeout_s=600)
    try:
        trainer = build_trainer(load_cfg(ROOT / "configs/mica.yml", opts), resume=False)
        trainer.progress = None
        for _ in range(warmup):
            trainer.run_step()
        data, comp = [], []
        comm.synchronize()
        t0 = time.perf_counter()
        while trainer.state.step < trainer.max_steps:
            trainer.run_step()
            data.append(trainer.last_metrics["data_time"])
            comp.append(trainer.last_metrics["step_time"])
        comm.synchronize()
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        torch.save({"wall": wall, "steps": len(data), "data": sum(data), "compute": sum(comp), "peak_mb": peak_mb},
                   os.path.join(out, f"r{rank}.pt"))
    finally:
        comm.destroy_distributed()


def measure(folder: Path, arch: str, batch: int, world: int, steps: int, warmup: int, workers: int) -> Dict[str, float]:
    threads = max(1, (os.cpu_count() or 1) // world)
    with tempfile.TemporaryDirectory() as res:
        opts = opts_for(folder, arch, batch, steps + warmup, workers)
        mp.spawn(_worker, args=(world, _free_port(), opts, warmup, threads, res), nprocs=world, join=True)
        rs = [torch.load(Path(res) / f"r{r}.pt", weights_only=True) for r in range(world)]
    wall = max(r["wall"] for r in rs)
    n = rs[0]["steps"]
    images = n * world * batch * 2
    return {"arch": arch, "batch": batch, "world": world, "threads": threads, "images_per_s": images / wall,
            "s_per_step": wall / n, "data_frac": sum(r["data"] for r in rs) / sum(r["data"] + r["compute"] for r in rs),
            "peak_mb_per_proc": max(r["peak_mb"] for r in rs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="iresnet18")
    p.add_argument("--batches", type=int, nargs="+", default=[2, 8])
    p.add_argument("--worlds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=4, help="timed steps per setting")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers per process")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        need = max(args.batches) * max(args.worlds) * (args.steps + args.warmup)
        make_data(folder, need, args.arch)
        for batch in args.batches:
            for world in args.worlds:
                r = measure(folder, args.arch, batch, world, args.steps, args.warmup, args.workers)
                rows.append(r)
                print(r, flush=True)
    print("\n| arch | actors/process x K | processes x threads | images/s | s/step | data time | peak RSS/process |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['arch']} | {r['batch']} x 2 | {r['world']} x {r['threads']} | {r['images_per_s']:.1f} | "
              f"{r['s_per_step']:.2f} | {100 * r['data_frac']:.1f}% | {r['peak_mb_per_proc']:.0f} MB |")


if __name__ == "__main__":
    main()
