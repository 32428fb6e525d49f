"""Tracker input speed: decoding a video, the face crop, and MediaPipe landmarks, per frame.

Stages (median and mean milliseconds per frame over the first ``--frames`` output frames):
  decode (every input frame), decode at ``--fps`` (per output frame; dropped frames only grabbed),
  crop (the 1080p frame to the ``--image-size`` crop), MediaPipe in video mode on the crop and on the
  full frame, and the whole input stage (decode at --fps + crop + landmarks on the crop) run
  sequentially and with ``frames.prefetch`` (decoding in a background thread).

Usage::

    python bench/track_input.py [--video ../shared/data/tracker/justin.mp4] [--fps 25] [--frames 150]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from micalib.tracking.crop import box_from_landmarks, crop_matrix, warp  # noqa: E402
from micalib.tracking.frames import open_frames, prefetch  # noqa: E402
from micalib.tracking.landmarks import MEDIAPIPE_IBUG68, MediaPipeLandmarker  # noqa: E402


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _stats(times: list[float]) -> str:
    return f"{statistics.median(times) * 1e3:6.2f} ms median, {statistics.mean(times) * 1e3:6.2f} ms mean"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=str(ROOT.parent / "shared" / "data" / "tracker" / "justin.mp4"))
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--image-size", type=int, default=512)
    args = ap.parse_args()
    n = args.frames

    every = open_frames(args.video)
    src = open_frames(args.video, fps=args.fps)
    print(f"{_cpu()}, {os.cpu_count()} cores; {src}")

    def timed(iterable, limit: int, keep: bool = False) -> tuple[list[float], list]:
        """Seconds per item of ``iterable`` (its first ``limit`` items) and, with ``keep``, the items."""
        times, kept = [], []
        it = iter(iterable)
        for _ in range(limit):
            t = time.perf_counter()
            item = next(it, None)
            if item is None:
                break
            times.append(time.perf_counter() - t)
            if keep:
                kept.append(item[2].copy())
        close = getattr(it, "close", None)
        if close is not None:
            close()
        return times, kept

    rows = {}
    rows["decode, every input frame"], _ = timed(every, n)
    rows[f"decode at --fps {args.fps:g} (per output frame)"], frames = timed(src, n, keep=True)
    first = frames[0]
    frames = frames[:100]

    with MediaPipeLandmarker(video_mode=False) as lm:
        box = box_from_landmarks(lm.detect(first)[MEDIAPIPE_IBUG68])
    M = crop_matrix(box, args.image_size)
    size = (args.image_size, args.image_size)
    t_crop, t_mp_crop, t_mp_full = [], [], []
    for rgb in frames:
        t = time.perf_counter()
        warp(rgb, M, size)
        t_crop.append(time.perf_counter() - t)
    rows[f"crop {box[1] - box[0]} px box -> {args.image_size}"] = t_crop
    with MediaPipeLandmarker(video_mode=True) as lm:
        crops = [warp(rgb, M, size) for rgb in frames]
        for c in crops:
            t = time.perf_counter()
            lm.detect(c)
            t_mp_crop.append(time.perf_counter() - t)
    rows[f"MediaPipe video mode, {args.image_size} crop"] = t_mp_crop
    with MediaPipeLandmarker(video_mode=True) as lm:
        for rgb in frames:
            t = time.perf_counter()
            lm.detect(rgb)
            t_mp_full.append(time.perf_counter() - t)
    rows[f"MediaPipe video mode, full {src.size[0]}x{src.size[1]} frame"] = t_mp_full

    for label, it in (("decode + crop + MediaPipe, sequential", lambda: iter(src)),
                      ("decode + crop + MediaPipe, decoding prefetched", lambda: prefetch(src, depth=4))):
        with MediaPipeLandmarker(video_mode=True) as lm:
            t0 = time.perf_counter()
            count = 0
            for _, _, rgb in it():
                lm.detect(warp(rgb, M, size))
                count += 1
                if count >= n:
                    break
            wall = time.perf_counter() - t0
        rows[label] = [wall / count] * count
        print(f"{label}: {count / wall:.1f} output frames per second")

    for label, times in rows.items():
        print(f"{label:55s} {_stats(times)}")
    print(f"per-frame figures from {n} frames (crop and full-frame MediaPipe: {len(frames)}); numpy {np.__version__}")


if __name__ == "__main__":
    main()
