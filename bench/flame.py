"""FLAME decode speed: canonical path vs full LBS vs the bare matmul (the limit).

Meshes per second at batch 1 and 64 for
- ``bare``: ``v_template + betas @ shapedirs`` on a contiguous (300, V*3) basis (no checks, the limit);
- ``canonical``: ``FLAME.canonical(shape)`` (what MICA decodes);
- ``full``: ``FLAME.forward(shape)`` (blend shapes, pose correctives, skinning, 68 landmarks).
Calls are interleaved round-robin and the median time per call is kept, so the printed ratios come
from one run on the same (noisy, shared) machine.

Usage::

    python bench/flame.py [--model data/FLAME2020/generic_model.pkl --lmk ...] [--device cpu]
                          [--threads 1] [--write-readme]

Without ``--model``, a synthetic FLAME in the real format (real topology when ../shared is present)
is written to a temporary folder.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.flame import FLAME  # noqa: E402
from utils.device import resolve_device  # noqa: E402
from utils.errors import run_main  # noqa: E402
from utils.io import atomic_write_text  # noqa: E402

BATCHES = (1, 64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(fns: dict[str, Callable[[], object]], device: torch.device, min_time: float,
                     warmup: int = 5) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved until ``min_time`` elapses."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    while time.perf_counter() - start < min_time or min(len(s) for s in samples.values()) < 10:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def run(flame: FLAME, device: torch.device, min_time: float) -> list[dict]:
    """One row per batch size: meshes/s of each path and ratios to the bare matmul."""
    flame = flame.to(device)
    basis = flame.shapedirs[:300].contiguous()  # the bare limit: its own contiguous copy
    vt = flame.v_template.reshape(1, -1)
    rows = []
    for b in BATCHES:
        shape = torch.randn(b, flame.n_shape, device=device)
        fns = {
            "bare": lambda shape=shape, b=b: (vt + shape @ basis).view(b, -1, 3),
            "canonical": lambda shape=shape: flame.canonical(shape),
            "full": lambda shape=shape: flame(shape),
        }
        with torch.inference_mode():
            t = time_round_robin(fns, device, min_time)
        rows.append({"batch": b, **{f"{k}_mps": b / v for k, v in t.items()},
                     "canonical_ratio": t["canonical"] / t["bare"], "full_ratio": t["full"] / t["bare"]})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| batch | bare matmul (meshes/s) | canonical (meshes/s) | full LBS (meshes/s) | "
             "canonical / bare time | full / bare time |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['bare_mps']:,.0f} | {r['canonical_mps']:,.0f} | {r['full_mps']:,.0f} "
                     f"| {r['canonical_ratio']:.2f}x | {r['full_ratio']:.2f}x |")
    return "\n".join(lines)


def update_readme(section_body: str) -> None:
    """Replace only the body of the ``## FLAME`` section of bench/README.md."""
    path = ROOT / "bench" / "README.md"
    text = path.read_text(encoding="utf-8")
    head, sep, rest = text.partition("## FLAME\n")
    if not sep:
        text = text.rstrip("\n") + "\n\n## FLAME\n\n" + section_body.strip() + "\n"
    else:
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        text = head + "## FLAME\n\n" + section_body.strip() + "\n\n" + tail
    atomic_write_text(path, text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="", help="generic_model.pkl (default: a synthetic FLAME)")
    p.add_argument("--lmk", default="", help="landmark_embedding.npy (with --model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of timing per batch size")
    p.add_argument("--write-readme", action="store_true", help="write the table into bench/README.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.model:
        flame = FLAME.from_files(args.model, args.lmk or Path(args.model).with_name("landmark_embedding.npy"))
        source = args.model
    else:
        sys.path.insert(0, str(ROOT))
        from tests.synthetic_flame import write_synthetic_flame

        folder = write_synthetic_flame(tempfile.mkdtemp(prefix="bench_flame_"), real=None)
        flame = FLAME.from_files(folder / "generic_model.pkl", folder / "landmark_embedding.npy")
        source = "synthetic FLAME (tests/synthetic_flame.py)"
    rows = run(flame, device, args.min_time)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()}, {os.cpu_count()} cores"
    info = (f"{flame.n_vertices} vertices, {flame.n_shape} shape coefficients, float32, {source}; "
            f"device {device} ({dev_name}), torch {torch.__version__}, {args.threads} CPU thread(s)")
    out = table(rows)
    print(info)
    print(out)
    if args.write_readme:
        update_readme("\n".join([
            "Command: `python bench/flame.py --write-readme` (options: `--device`, `--threads`, `--model`).",
            "Meshes per second; ratios are median call times relative to the bare",
            "`v_template + betas @ shapedirs` matmul, measured interleaved in one run.",
            "Goal: canonical within 1.3x of the bare matmul.", "", f"Last run: {info}.", "", out]))
    return 0


if __name__ == "__main__":
    run_main(main)
