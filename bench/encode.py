"""Encoder throughput: images -> FLAME coefficients -> vertices, per backend, precision and batch.

    .venv/bin/python bench/encode.py [--arch iresnet100] [--batches 1 16] [--precisions fp32 bf16]
                                     [--backends eager onnxruntime onnxruntime-int8 compile] [--rounds 3]
                                     [--accuracy 32] [--json out.json] [--device cpu|cuda]

Random, well-conditioned weights (tests/synthetic_weights.py) and a synthetic FLAME: speed does not
depend on the values. Every configuration is timed in interleaved rounds (round-robin, best of
``--rounds``) so that load from other processes on a shared machine hits all of them alike; results
are printed as ratios to the fp32 eager batch-1 figure of the same run. Also printed: FLOPs per
image (``torch.utils.flop_counter``: 2 per multiply-add) and the achieved fraction of this machine's
matmul peak for the dtype, measured here with large matrix products (best of several sizes, each
both as ``torch.mm`` and as a channels-last 1x1 convolution: on AMD CPUs MKL's fp32 ``torch.mm``
reaches only ~40% of what oneDNN's convolution kernels do, so ``torch.mm`` alone understates it).

``onnxruntime-int8`` is the statically quantised model (``micalib.export.quantize``, calibrated on
``--calib`` synthetic inputs); ``--accuracy N`` also compares it with torch fp32 on N other inputs:
cosine of the identity codes and coefficients, vertex deviation in mm against the spread of the
vertices across inputs.

``--device cuda`` times the torch backends on the GPU (fp32, which PyTorch runs as TF32 in cuDNN's
convolutions by default, bf16, fp16), each call ending with the results copied back to the host as
in the demo; the peaks there are ``torch.mm`` products of 8192x8192 matrices.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from loguru import logger  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.machine import cpu_description  # noqa: E402
from micalib.export.quantize import _ShapeAndCode, compare_with_torch, export_int8, synthetic_calibration  # noqa: E402
from micalib.mica import MICA  # noqa: E402
from micalib.predictor import Predictor  # noqa: E402
from models.flame import FLAME  # noqa: E402
from tests.synthetic_flame import write_synthetic_flame  # noqa: E402
from tests.synthetic_weights import random_mica  # noqa: E402
from utils.io import atomic_write_text  # noqa: E402

PEAK_SIZES = (1024, 2048, 3072, 4096)
PEAK_CONV_SHAPES = ((512, 128), (1024, 64), (2048, 64))  # (channels, side): 1x1 convolutions
# oneDNN builds its kernels for a new shape over the first two calls; the third is steady state.
WARMUP_CALLS = 3


def device_description(device: str) -> str:
    """The CPU (:func:`cpu_description`), or for CUDA the GPU's name and memory."""
    if device != "cuda":
        return cpu_description()
    prop = torch.cuda.get_device_properties(0)
    return f"{prop.name}, {prop.total_memory / 2 ** 30:.0f} GiB, {prop.multi_processor_count} SMs, CUDA {torch.version.cuda}"


def cuda_matmul_peak(dtype: torch.dtype, rounds: int = 3, n: int = 8192) -> float:
    """Best GFLOP/s of an n x n x n ``torch.mm`` in ``dtype`` on the current GPU; float32 as TF32, the
    way cuDNN runs the network's fp32 convolutions by default."""
    a = torch.randn(n, n, device="cuda").to(dtype)
    b = torch.randn(n, n, device="cuda").to(dtype)
    best = 0.0
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    with torch.no_grad():
        for i in range(rounds + 1):
            torch.cuda.synchronize()
            t = time.perf_counter()
            torch.mm(a, b)
            torch.cuda.synchronize()
            if i:  # the first call loads the kernel
                best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    return best


def matmul_peak(dtype: torch.dtype, rounds: int = 3, device: str = "cpu") -> float:
    """Best GFLOP/s of a matrix product in ``dtype`` over a few sizes: square ``torch.mm`` (MKL for
    fp32) and (pixels x channels) @ (channels x channels) as a channels-last 1x1 convolution (oneDNN,
    the library that runs the network's convolutions). On CUDA: :func:`cuda_matmul_peak`."""
    if device == "cuda":
        return cuda_matmul_peak(dtype, rounds)
    best = 0.0
    with torch.no_grad():
        ops = []
        for n in PEAK_SIZES:
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            ops.append((lambda a=a, b=b: torch.mm(a, b), 2 * n ** 3))
        for channels, side in PEAK_CONV_SHAPES:
            x = torch.randn(1, channels, side, side).to(dtype).contiguous(memory_format=torch.channels_last)
            w = torch.randn(channels, channels, 1, 1).to(dtype).contiguous(memory_format=torch.channels_last)
            ops.append((lambda x=x, w=w: torch.nn.functional.conv2d(x, w), 2 * channels ** 2 * side ** 2))
        for op, flop in ops:
            op()
            for _ in range(rounds):
                t = time.perf_counter()
                op()
                best = max(best, flop / (time.perf_counter() - t) / 1e9)
    return best


def flops_per_image(model: MICA) -> float:
    """FLOPs of one image through ArcFace, mapping network and FLAME canonical decode."""
    x = torch.zeros(1, 3, 112, 112)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.decode(model.encode(x))
    return float(counter.get_total_flops())


def int8_accuracy(model: MICA, flame: FLAME, tmp: Path, args: argparse.Namespace) -> dict:
    """int8 ONNX vs torch fp32 on ``args.accuracy`` inputs other than the calibration ones."""
    path = export_int8(model.arcface, model.regressor, tmp / "mica_int8_code.onnx",
                       synthetic_calibration(args.calib, seed=12345), with_code=True)
    images = synthetic_calibration(args.accuracy, seed=777)
    res = compare_with_torch(_ShapeAndCode(model.arcface, model.regressor).eval(), path, images)
    with torch.no_grad():
        v8, v32 = (flame.canonical(torch.from_numpy(r[0])).numpy() * 1000 for r in (res["onnx"], res["torch"]))
    dev = np.linalg.norm(v8 - v32, axis=-1)
    spread = np.linalg.norm(v32 - v32.mean(0), axis=-1).mean()
    codes = res["torch"][1]
    between = (codes @ codes.T)[~np.eye(len(codes), dtype=bool)].mean()
    shape_err = np.abs(res["onnx"][0] - res["torch"][0]).max() / np.abs(res["torch"][0]).max()
    out = dict(code_cos_min=float(res["cosine"][1].min()), code_cos_mean=float(res["cosine"][1].mean()),
               code_cos_between_inputs=float(between), shape_cos_min=float(res["cosine"][0].min()),
               shape_cos_mean=float(res["cosine"][0].mean()), shape_max_err_rel=float(shape_err),
               vertex_dev_mean_mm=float(dev.mean()), vertex_dev_max_mm=float(dev.max()), vertex_spread_mm=float(spread))
    print(f"int8 vs fp32 torch ({args.accuracy} inputs): identity-code cosine min {out['code_cos_min']:.5f} mean "
          f"{out['code_cos_mean']:.5f} (between inputs {between:.3f}); coefficient cosine min {out['shape_cos_min']:.5f}, "
          f"max abs err / max abs {100 * shape_err:.1f}%; vertex deviation mean {dev.mean():.5f} / max {dev.max():.5f} mm, "
          f"spread across inputs {spread:.4f} mm ({100 * dev.mean() / spread:.0f}%)")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="iresnet100")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--backends", nargs="+", default=["eager", "onnxruntime", "onnxruntime-int8"],
                   help="auto (what demo.py --precision auto runs: its precision and layout), plain (fp32, BN kept, contiguous: "
                        "the reference auto must never be slower than), eager (BN folded), unfused (eager, BN kept), compile (torch.compile of eager), onnxruntime, "
                        "onnxruntime-int8 (micalib.export.quantize); onnxruntime backends split a batch across threads "
                        "(Predictor's default), add -serial (e.g. onnxruntime-int8-serial) for one multi-threaded run")
    p.add_argument("--calib", type=int, default=32, help="synthetic calibration inputs for onnxruntime-int8")
    p.add_argument("--accuracy", type=int, default=32, help="inputs for the int8 accuracy check (0 = skip)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads (0 = default)")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: torch backends only (onnxruntime is timed on the CPU)")
    args = p.parse_args()
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench/encode.py: --device cuda but CUDA is not available")
        args.backends = [b for b in args.backends if not b.startswith("onnxruntime")]
    if args.threads:
        torch.set_num_threads(args.threads)
    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    tmp = Path(tempfile.mkdtemp(prefix="bench_encode_"))
    flame_dir = write_synthetic_flame(tmp / "flame", real=None)
    model = random_mica(flame_dir, args.arch)
    flame = model.flame
    gflop = flops_per_image(model) / 1e9
    cpu = device_description(args.device)
    print(f"{args.arch}: {gflop:.2f} GFLOPs per image (ArcFace + mapping + FLAME), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {cpu}", flush=True)
    peak_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if args.device == "cuda":
        peak_dtypes["fp16"] = torch.float16

    runners: Dict[Tuple[str, str, int], Callable[[], None]] = {}
    for backend in args.backends:
        for prec in (args.precisions[:1] if backend == "auto" else args.precisions):
            if backend.startswith("onnxruntime") and prec != "fp32":
                continue
            serial = backend.endswith("-serial")
            if backend.startswith("onnxruntime-int8"):
                prec = "int8"
                int8_path = tmp / "mica_int8.onnx"
                if not int8_path.exists():
                    export_int8(model.arcface, model.regressor, int8_path, synthetic_calibration(args.calib, seed=12345))
                pred = Predictor(flame, onnx_path=int8_path, backend="onnxruntime", device="cpu",
                                 batch_size=max(args.batches), batch_parallel=not serial)
            elif backend.startswith("onnxruntime"):
                from micalib.export.onnx_graph import export_onnx

                onnx_path = tmp / "mica.onnx"
                if not onnx_path.exists():
                    export_onnx(model.image_to_shape(), onnx_path)
                pred = Predictor(flame, onnx_path=onnx_path, backend="onnxruntime", device="cpu",
                                 batch_size=max(args.batches), batch_parallel=not serial)
            elif backend == "plain":  # the reference the issue names: unfused, contiguous, fp32
                if prec != "fp32":
                    continue
                pred = Predictor(model=model, device=args.device, precision="fp32", batch_size=max(args.batches),
                                 fuse=False, channels_last=False)
            elif backend == "auto":  # what demo.py --precision auto runs here (its own plan)
                pred = Predictor(model=model, device=args.device, precision="auto", batch_size=max(args.batches))
                prec = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[pred.encoder.precision_label]
                print("auto plan: " + ", ".join(f"{k} {v}" for k, v in pred.plan.items()))
            else:
                pred = Predictor(model=model, device=args.device, precision=prec, batch_size=max(args.batches),
                                 fuse=backend != "unfused", compile=backend == "compile")
            for b in args.batches:
                x = (torch.rand(b, 3, 112, 112, generator=torch.Generator().manual_seed(b)) * 2 - 1).numpy()
                runners[(backend, prec, b)] = (lambda pr=pred, xx=x: pr(xx))

    for key, run in runners.items():  # warm-up: compilation, oneDNN primitive creation (2-3 calls)
        t = time.perf_counter()
        for _ in range(WARMUP_CALLS):
            run()
        if key[0] == "compile":
            print(f"warm-up {key}: {time.perf_counter() - t:.1f} s", flush=True)
    best: Dict[Tuple[str, str, int], float] = {k: 0.0 for k in runners}
    peaks = {name: 0.0 for name in peak_dtypes}
    for r in range(args.rounds):
        for name, dtype in peak_dtypes.items():
            peaks[name] = max(peaks[name], matmul_peak(dtype, 1, args.device))
        for key, run in runners.items():
            t = time.perf_counter()
            run()
            best[key] = max(best[key], key[2] / (time.perf_counter() - t))
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    base = best.get(("eager", "fp32", 1)) or next(iter(best.values()))
    print("matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    print(f"{'backend':<26}{'precision':<10}{'batch':>6}{'img/s':>9}{'x fp32 eager b1':>17}{'GFLOP/s':>9}{'% peak':>8}")
    rows: List[dict] = []
    for (backend, prec, b), ips in best.items():
        achieved = ips * gflop
        frac = achieved / peaks[prec] if prec in peaks else float("nan")  # no int8 peak measured
        pct = f"{100 * frac:>7.0f}%" if frac == frac else f"{'-':>8}"
        print(f"{backend:<26}{prec:<10}{b:>6}{ips:>9.2f}{ips / base:>17.2f}{achieved:>9.0f}{pct}")
        rows.append(dict(backend=backend, precision=prec, batch=b, images_per_s=ips, ratio=ips / base,
                         gflops=achieved, peak_fraction=frac if frac == frac else None))
    for b in args.batches:  # the goal: auto never slower than the plain model, on every CPU measured
        autos = [ips for (be, _, bb), ips in best.items() if be == "auto" and bb == b]
        plain = best.get(("plain", "fp32", b))
        if autos and plain:
            print(f"batch {b}: auto / plain fp32 = {autos[0] / plain:.2f}x ({autos[0]:.2f} vs {plain:.2f} img/s)")
    int8 = any(b.startswith("onnxruntime-int8") for b in args.backends)
    accuracy = int8_accuracy(model, flame, tmp, args) if int8 and args.accuracy else {}
    shutil.rmtree(tmp, ignore_errors=True)  # the ONNX files (~330 MB for iresnet100)
    if args.json:
        atomic_write_text(args.json, json.dumps(dict(arch=args.arch, cpu=cpu, gflop_per_image=gflop, peaks=peaks, rows=rows,
                                                     int8_accuracy=accuracy), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
