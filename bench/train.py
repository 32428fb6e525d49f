"""Training throughput: our trainer configured as the original (the baseline) against the speed
options, measured in the same run, plus a loss-agreement check of bf16 against fp32.

    .venv/bin/python bench/train.py                                  # iresnet100, 8 actors x K=2, fp32 and bf16
    .venv/bin/python bench/train.py --precision bf16 --repeats 5 --loss-steps 0
    .venv/bin/python bench/train.py --arch iresnet18 --batch 2 --worlds 1 2 --precision fp32

Settings (each a fresh process, or ``--worlds 2`` gloo processes, on the synthetic FLAME and dataset
of tests/, nothing downloaded):

- ``baseline``: as the original trainer: fp32, the frozen stages' BatchNorm in train mode
  (``model.freeze_bn False``), no channels-last, torch's default AdamW;
- ``PRECISION``: ``precision PRECISION``, ``train.channels_last True``, ``train.optimizer_impl fused``
  (same BatchNorm mode).

Baseline and candidates run interleaved ``--repeats`` times (the machine may be shared); the table
shows medians over the repeats of images/s (from the wall time of the timed steps, and from the
median step, which a neighbour's burst disturbs less), forward and backward(+optimiser step) seconds
per step, and the speed-ups over the baseline. A "sample" is one image (an actor brings K=2).

Loss agreement (``--loss-steps N``, default 50; 0 = skip): the baseline and each non-fp32 candidate
train N steps from the same weights, seed and data (learning rates ``--lr``, default mica.yml's
1e-5); PASS when every per-step loss is within 3% of the baseline's and the mean of the last 10 steps
within 1%. The exit status is 1 when a check fails.
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

# Loss agreement bounds of the bf16 goal (bench/README.md "Training").
STEP_TOLERANCE = 0.03
TAIL_TOLERANCE = 0.01
TAIL_STEPS = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    """CPU model and family (``lscpu``), cores, torch version."""
    fields = {}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    model = fields.get("Model name", platform.processor() or "unknown CPU")
    return (f"{model}, CPU family {fields.get('CPU family', '?')} model {fields.get('Model', '?')}, "
            f"{os.cpu_count()} cores, torch {torch.__version__}")


def make_data(folder: Path, n_actors: int, arch: str) -> None:
    """Synthetic FLAME, dataset (LYHM, K=2 images per actor) and a random mica.tar in ``folder``."""
    from tests.synthetic_dataset import make_synthetic_mica_dataset
    from tests.synthetic_flame import write_synthetic_flame
    from tests.synthetic_weights import write_random_mica_tar

    write_synthetic_flame(folder / "flame", real=None)
    make_synthetic_mica_dataset(folder / "data", names=("LYHM",), n_actors=n_actors, n_images=2, lists_dir=folder / "lists")
    write_random_mica_tar(folder / "init.tar", arch=arch)


def setting_opts(name: str) -> dict[str, object]:
    if name == "baseline":
        return {"precision": "fp32", "model.freeze_bn": False, "train.channels_last": False,
                "train.optimizer_impl": "auto"}
    return {"precision": name, "model.freeze_bn": False, "train.channels_last": True, "train.optimizer_impl": "fused"}


def opts_for(folder: Path, arch: str, batch: int, steps: int, setting: str, lr: float) -> list[str]:
    f = folder / "flame"
    kv = {
        "dataset.root": folder / "data", "dataset.image_lists": folder / "lists", "dataset.training_data": "['LYHM']",
        "dataset.eval_data": "[]", "dataset.batch_size": batch, "dataset.K": 2, "dataset.num_workers": 0,
        "model.arch": arch, "model.use_pretrained": True, "pretrained_model_path": folder / "init.tar",
        "model.flame_model_path": f / "generic_model.pkl", "model.flame_lmk_embedding_path": f / "landmark_embedding.npy",
        "model.flame_masks_path": f / "FLAME_masks.pkl", "train.use_mask": True, "output_dir": folder / f"out_{setting}",
        "device": "cpu", "seed": 0, "train.max_steps": steps, "train.log_steps": 0, "train.val_steps": 0,
        "train.vis_steps": 0, "train.checkpoint_steps": 0, "train.write_summary": False, "train.resume": False,
        "train.lr": lr, "train.arcface_lr": lr, **setting_opts(setting),
    }
    return [str(x) for item in kv.items() for x in item]


def _worker(rank: int, world: int, port: int, opts: list[str], warmup: int, threads: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    from loguru import logger

    logger.remove()
    from configs.config import load_cfg
    from micalib.engine.builder import build_trainer
    from utils import dist as comm

    comm.init_distributed("cpu", timeout_s=1200)
    try:
        trainer = build_trainer(load_cfg(ROOT / "configs/mica.yml", opts), resume=False)
        losses, fwd, bwd = [], [], []
        for _ in range(warmup):
            trainer.run_step()
            losses.append(trainer.last_metrics["loss"])
        comm.synchronize()
        t0 = time.perf_counter()
        while trainer.state.step < trainer.max_steps:
            trainer.run_step()
            m = trainer.last_metrics
            losses.append(m["loss"])
            fwd.append(m["data_time"] + m["forward_time"])
            bwd.append(m["backward_time"])
        comm.synchronize()
        wall = time.perf_counter() - t0
        torch.save({"wall": wall, "steps": len(fwd), "forward": fwd, "backward": bwd, "losses": losses},
                   os.path.join(out, f"r{rank}.pt"))
    finally:
        comm.destroy_distributed()


def run(folder: Path, arch: str, batch: int, world: int, steps: int, warmup: int, setting: str,
        lr: float = 1e-5) -> dict[str, object]:
    threads = max(1, (os.cpu_count() or 1) // world)
    with tempfile.TemporaryDirectory() as res:
        opts = opts_for(folder, arch, batch, steps + warmup, setting, lr)
        mp.spawn(_worker, args=(world, _free_port(), opts, warmup, threads, res), nprocs=world, join=True)
        rs = [torch.load(Path(res) / f"r{r}.pt", weights_only=True) for r in range(world)]
    wall = max(r["wall"] for r in rs)
    n = rs[0]["steps"]
    per_step = [max(r["forward"][i] + r["backward"][i] for r in rs) for i in range(n)]
    return {"setting": setting, "world": world, "threads": threads, "images_per_s": n * world * batch * 2 / wall,
            "median_step_images_per_s": world * batch * 2 / statistics.median(per_step),
            "forward": statistics.median(rs[0]["forward"]), "backward": statistics.median(rs[0]["backward"]),
            "losses": rs[0]["losses"]}


def loss_check(base: list[float], cand: list[float], name: str) -> bool:
    worst = max(abs(c - b) / abs(b) for b, c in zip(base, cand, strict=True))
    tail_b, tail_c = statistics.fmean(base[-TAIL_STEPS:]), statistics.fmean(cand[-TAIL_STEPS:])
    tail = abs(tail_c - tail_b) / abs(tail_b)
    ok = worst <= STEP_TOLERANCE and tail <= TAIL_TOLERANCE
    print(f"loss agreement {name} vs fp32 baseline, steps 1-{len(base)}: largest per-step difference "
          f"{100 * worst:.2f}% (<= {100 * STEP_TOLERANCE:.0f}%), mean of steps {len(base) - TAIL_STEPS + 1}-{len(base)} "
          f"{tail_c:.4f} vs {tail_b:.4f} ({100 * tail:.2f}%, <= {100 * TAIL_TOLERANCE:.0f}%): {'PASS' if ok else 'FAIL'}",
          flush=True)
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="iresnet100")
    p.add_argument("--batch", type=int, default=8, help="actors per process and step (K=2 images each)")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], help="candidate settings (fp32, bf16, fp16)")
    p.add_argument("--worlds", type=int, nargs="+", default=[1], help="gloo processes (threads split evenly)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per setting")
    p.add_argument("--loss-steps", type=int, default=50, help="steps of the loss-agreement check (0 = skip)")
    p.add_argument("--lr", type=float, default=1e-5, help="train.lr and train.arcface_lr (configs/mica.yml: 1e-5)")
    args = p.parse_args()
    settings = ["baseline"] + list(args.precision)
    print(f"machine: {machine()}", flush=True)
    rows = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        need = args.batch * max(args.worlds) * 4  # 4 steps per epoch; longer runs start new epochs
        make_data(folder, need, args.arch)
        for world in args.worlds:
            runs: dict[str, list[dict[str, object]]] = {s: [] for s in settings}
            load = [os.getloadavg()[0]]
            for i in range(args.repeats):
                for s in settings:
                    r = run(folder, args.arch, args.batch, world, args.steps, args.warmup, s, args.lr)
                    runs[s].append(r)
                    load.append(os.getloadavg()[0])
                    print(f"repeat {i + 1} {s} x{world}: {r['images_per_s']:.2f} images/s "
                          f"({r['median_step_images_per_s']:.2f} at the median step), forward {r['forward']:.2f} s, "
                          f"backward+step {r['backward']:.2f} s, load {load[-1]:.1f}", flush=True)
            base = statistics.median(r["images_per_s"] for r in runs["baseline"])
            base_step = statistics.median(r["median_step_images_per_s"] for r in runs["baseline"])
            for s in settings:
                ips = statistics.median(r["images_per_s"] for r in runs[s])
                step_ips = statistics.median(r["median_step_images_per_s"] for r in runs[s])
                rows.append((s, world, runs[s][0]["threads"], ips, step_ips, statistics.median(r["forward"] for r in runs[s]),
                             statistics.median(r["backward"] for r in runs[s]), ips / base, step_ips / base_step,
                             statistics.median(load)))
        if args.loss_steps > 0:
            ref = run(folder, args.arch, args.batch, 1, args.loss_steps - 1, 1, "baseline", args.lr)["losses"]
            for s in args.precision:
                if s != "fp32":
                    cand = run(folder, args.arch, args.batch, 1, args.loss_steps - 1, 1, s, args.lr)["losses"]
                    ok = loss_check(ref, cand, s) and ok
    print(f"\nmachine: {machine()}; {args.arch}, {args.batch} actors x K=2 per process, lr {args.lr:g}, medians of "
          f"{args.repeats} interleaved runs of {args.steps} timed steps")
    print("| setting | processes x threads | images/s (wall) | images/s (median step) | forward s/step | "
          "backward+step s/step | speed-up (wall / median step) | load avg |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for s, world, threads, ips, step_ips, fwd, bwd, speed, step_speed, load in rows:
        print(f"| {s} | {world} x {threads} | {ips:.2f} | {step_ips:.2f} | {fwd:.2f} | {bwd:.3f} | "
              f"{speed:.2f}x / {step_speed:.2f}x | {load:.1f} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
