"""End-to-end speed of track.py: output frames per wall-clock second, and per stage.

Runs the whole tracker (MediaPipe landmarks, crop, keyframe intrinsics, per-frame fit, every
per-frame file and the overlay video) on a video, with a synthetic FLAME on the real topology when
../shared/data/flame_public is present (the same cost as the real model) and a zero identity, and a
decode + landmarks baseline from the same run (the first pass of the tracker), so machines compare.

Usage::

    python bench/track.py [--video ../shared/data/tracker/justin.mp4] [--fps 25] [--no-video]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=str(ROOT.parent / "shared" / "data" / "tracker" / "justin.mp4"))
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--no-video", action="store_true")
    ap.add_argument("--photometric", action="store_true", help="with the photometric refinement")
    ap.add_argument("--device", default="cpu", help="device of the photometric refinement")
    ap.add_argument("--workdir", default=None, help="folder for the assets and outputs (default: a temporary one)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from configs.config import load_cfg
    from micalib.tracking.frames import open_frames, prefetch, resample_indices
    from micalib.tracking.runner import TrackRunner
    from tests.synthetic_flame import shared_flame_public
    from tests.synthetic_tracking import shared_tracker_dir, write_tracker_assets

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_track_"))
    real = shared_flame_public() is not None and shared_tracker_dir() is not None
    assets = write_tracker_assets(work / "assets", seed=0, real=real)
    np.save(work / "zero.npy", np.zeros(300, np.float32))
    opts = ["model.flame_model_path", str(assets["flame_model_path"]),
            "model.flame_lmk_embedding_path", str(assets["flame_lmk_embedding_path"]),
            "tracker.mediapipe_embedding_path", str(assets["mediapipe_embedding_path"]),
            "tracker.l_eyelid_path", str(assets["l_eyelid_path"]), "tracker.r_eyelid_path", str(assets["r_eyelid_path"])]
    cfg = load_cfg(ROOT / "configs" / "tracker.yml", opts)
    # decode only (at --fps), for reference
    src = open_frames(args.video, args.fps)
    note = ""
    decodable = src._count_frames() if hasattr(src, "_count_frames") else src.n_input_frames
    if decodable < src.n_input_frames:  # the shared justin.mp4 decodes 300 of the 448 frames its header states
        note = f" (the file decodes {decodable} of the {src.n_input_frames} frames its header states; those are used)"
        src.n_input_frames = decodable
        src.indices = resample_indices(decodable, src.input_fps, args.fps)
    t0 = time.perf_counter()
    n = sum(1 for _ in prefetch(src))
    t_decode = time.perf_counter() - t0
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, nothing to resume
    runner = TrackRunner(cfg, args.video, out, identity_path=work / "zero.npy", fps=args.fps,
                         image_size=args.image_size, video=not args.no_video, source=src,
                         photometric=args.photometric, device=args.device)
    t0, c0 = time.perf_counter(), time.process_time()
    runner.run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    st = runner.timings.stages
    print(f"machine: {_cpu()}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"FLAME: synthetic on the {'real' if real else 'random'} topology; video {Path(args.video).name} "
          f"{src.size[0]}x{src.size[1]} -> {n} output frames at {args.fps} fps{note}")
    print(f"end to end: {wall:.1f} s, {n / wall:.1f} output frames/s (video {'off' if args.no_video else 'on'}, photometric {'on, ' + args.device if args.photometric else 'off'})")
    print(f"CPU time of all threads: {cpu / n * 1e3:.1f} ms per output frame "
          f"(<= {2e3 / 25:.0f} ms is what 25 frames/s on 2 idle cores allows)")
    print(f"decode only (--fps, prefetch thread): {n / t_decode:.1f} frames/s")
    lm = st.get("landmarks (decode + detect)")
    if lm:
        print(f"baseline decode + crop + MediaPipe (first pass): {n / lm:.1f} frames/s")
    second = wall - (lm or 0.0) - st.get("keyframes (intrinsics)", 0.0)
    print(f"second pass (decode, crop, fit, writes, overlay): {n / second:.1f} frames/s")
    for name, sec in st.items():
        if name != "total":
            print(f"  {name:32s} {sec:7.2f} s  {n / sec if sec > 0 else float('inf'):8.1f} frames/s")


if __name__ == "__main__":
    main()
