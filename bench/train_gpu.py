"""Training-step throughput on a GPU (issue 17): images/s and the fraction of the bf16 matmul peak
at batch 16 and at the largest batch that fits.

The step is the trainer's computation without its data loader (inputs already on the device, so
the number is what the GPU can do; the loader is measured apart by ``--loader``): MICA with random
weights (ArcFace frozen up to layer3 as in MICA, ``models.arcface.freeze_for_mica``), the mapping
network, FLAME's canonical vertices of random ground-truth identities, the per-vertex L1 loss (x1000,
``micalib.engine.losses.VertexLoss`` with unit weights), backward, AdamW step, under bf16 autocast. FLOPs of
one step are counted with ``torch.utils.flop_counter`` (convolutions and matrix products); the
fraction of peak is FLOP/s over the ``torch.mm`` bf16 peak of the same GPU (``bench/encode.py``).

    python bench/train_gpu.py --device cuda --json train_gpu.json
    python bench/train_gpu.py --device cpu --arch iresnet18 --batches 2 --steps 1   # the code path on a CPU
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def build(arch: str, device: str):
    """Random MICA on the synthetic FLAME, its trainable parameters and an AdamW optimiser."""
    from micalib.engine.losses import VertexLoss
    from models.arcface import freeze_for_mica
    from tests.synthetic_flame import write_synthetic_flame
    from tests.synthetic_weights import random_mica

    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_flame(Path(tmp), real=None)
        mica = random_mica(tmp, arch).to(device)
    freeze_for_mica(mica.arcface)
    mica.train()  # layer4, the head and the mapping network train; the frozen part stays in eval mode
    params = [p for p in mica.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    n_vertices = mica.flame.canonical(torch.zeros(1, mica.n_shape, device=device)).shape[1]
    loss = VertexLoss(torch.ones(n_vertices, device=device))
    return mica, opt, loss


def step(mica, opt, loss_fn, images, target, dtype) -> float:
    opt.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype != torch.float32):
        out = mica(images)
    loss = loss_fn(out["vertices"].float(), target)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(mica, opt, loss_fn, batch: int, device: str, dtype, steps: int) -> dict:
    """images/s and FLOPs of one step at ``batch``."""
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(batch)
    images = (torch.rand(batch, 3, 112, 112, generator=g) * 2 - 1).to(device)
    with torch.no_grad():
        target = mica.flame.canonical(torch.randn(batch, mica.n_shape, generator=g).to(device) * 0.5)
    step(mica, opt, loss_fn, images, target, dtype)  # warm-up (kernel selection)
    counter = FlopCounterMode(display=False)
    with counter:
        step(mica, opt, loss_fn, images, target, dtype)
    flops = counter.get_total_flops()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step(mica, opt, loss_fn, images, target, dtype)
    _sync(device)
    seconds = (time.perf_counter() - t) / steps
    return {"batch": batch, "step_s": seconds, "img_per_s": batch / seconds, "tflop_per_step": flops / 1e12,
            "tflop_per_s": flops / seconds / 1e12}


def largest_batch(mica, opt, loss_fn, device: str, dtype, start: int, limit: int) -> int:
    """The largest power-of-two multiple of ``start`` (up to ``limit``) whose step fits in memory."""
    best, batch = start, start
    while batch <= limit:
        try:
            measure(mica, opt, loss_fn, batch, device, dtype, steps=1)
            best = batch
            batch *= 2
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", default="iresnet100")
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--batches", type=int, nargs="+", default=[16], help="batches to measure (plus the largest)")
    p.add_argument("--largest", type=int, default=1024, help="search the largest batch up to this (0 = skip)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    mica, opt, loss_fn = build(args.arch, args.device)
    rows = [measure(mica, opt, loss_fn, b, args.device, dtype, args.steps) for b in args.batches]
    if args.largest:
        big = largest_batch(mica, opt, loss_fn, args.device, dtype, max(args.batches), args.largest)
        if big not in args.batches:
            rows.append({**measure(mica, opt, loss_fn, big, args.device, dtype, args.steps), "largest": True})
        else:
            next(r for r in rows if r["batch"] == big)["largest"] = True
    peak = None
    if args.device.startswith("cuda"):
        from bench.encode import cuda_matmul_peak

        peak = cuda_matmul_peak(dtype) / 1000.0  # TFLOP/s
    for r in rows:
        r["fraction_of_peak"] = None if peak is None else r["tflop_per_s"] / peak
        frac = "n/a" if peak is None else f"{100 * r['fraction_of_peak']:.1f}% of the {args.precision} matmul peak"
        print(f"batch {r['batch']:5d}: {r['img_per_s']:8.1f} img/s, {r['tflop_per_s']:7.2f} TFLOP/s, {frac}")
    result = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "arch": args.arch, "precision": args.precision, "peak_tflop_per_s": peak, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
