"""Tracker input speed: decoding a video, the face crop, and MediaPipe landmarks, per frame.

Stages (median and mean milliseconds per frame over the first ``--frames`` output frames):
  decode (every input frame), decode at ``--fps`` (per output frame; dropped frames only grabbed),
  crop (the 1080p frame to the ``--image-size`` crop), MediaPipe in video mode on the crop and on the
  full frame and in image mode on the crop (stages interleaved per frame; wall and CPU time of all
  threads), and the whole input stage (decode at --fps + crop + landmarks on the crop) run
  sequentially and with ``frames.prefetch`` (decoding in a background thread).

Usage::

    python bench/track_input.py [--video ../shared/data/tracker/justin.mp4] [--fps 25] [--frames 150]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_description  # noqa: E402
from micalib.tracking.crop import box_from_landmarks, crop_matrix, warp  # noqa: E402
from micalib.tracking.frames import open_frames, prefetch  # noqa: E402
from micalib.tracking.landmarks import MEDIAPIPE_IBUG68, MediaPipeLandmarker  # noqa: E402


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
    print(f"{cpu_description()}, {os.cpu_count()} cores; {src}")

    def clock() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()  # wall, CPU of all threads of this process

    # one pass, stages interleaved per frame so that all see the same (shared, noisy) machine state
    with MediaPipeLandmarker(video_mode=False) as lm:
        first = next(iter(src))[2]
        box = box_from_landmarks(lm.detect(first)[MEDIAPIPE_IBUG68])
    M = crop_matrix(box, args.image_size)
    size = (args.image_size, args.image_size)
    names = [f"decode at --fps {args.fps:g} (per output frame)", f"crop {box[1] - box[0]} px box -> {args.image_size}",
             f"MediaPipe video mode, {args.image_size} crop", f"MediaPipe video mode, full {src.size[0]}x{src.size[1]}",
             f"MediaPipe image mode (face detector every frame), {args.image_size} crop"]
    rows = {name: ([], []) for name in names}

    def add(name, a, b):
        rows[name][0].append(b[0] - a[0])
        rows[name][1].append(b[1] - a[1])

    with MediaPipeLandmarker(video_mode=True) as lm_crop, MediaPipeLandmarker(video_mode=True) as lm_full, \
            MediaPipeLandmarker(video_mode=False) as lm_image:
        it = iter(src)
        for _ in range(n):
            t0 = clock()
            item = next(it, None)
            t1 = clock()
            if item is None:
                break
            crop = warp(item[2], M, size)
            t2 = clock()
            lm_crop.detect(crop)
            t3 = clock()
            lm_full.detect(item[2])
            t4 = clock()
            lm_image.detect(crop)
            t5 = clock()
            for name, a, b in zip(names, (t0, t1, t2, t3, t4), (t1, t2, t3, t4, t5), strict=True):
                add(name, a, b)
        it.close()
    name = "decode, every input frame"
    rows[name] = ([], [])
    it = iter(every)
    for _ in range(n):
        a = clock()
        if next(it, None) is None:
            break
        add(name, a, clock())
    it.close()

    # the whole input stage, sequential and with decoding prefetched, alternated twice (best kept)
    runs: dict[str, list[tuple[float, float]]] = {}
    for _ in range(2):
        for label, make in (("decode + crop + MediaPipe on the crop, sequential", lambda: iter(src)),
                            ("decode + crop + MediaPipe on the crop, decoding prefetched", lambda: prefetch(src, depth=4))):
            with MediaPipeLandmarker(video_mode=True) as lm:
                a = clock()
                count = 0
                frames = make()
                for _, _, rgb in frames:
                    lm.detect(warp(rgb, M, size))
                    count += 1
                    if count >= n:
                        break
                frames.close()
                b = clock()
            runs.setdefault(label, []).append(((b[0] - a[0]) / count, (b[1] - a[1]) / count))

    print(f"{'stage':58s} {'wall ms/frame (median, mean)':>30s} {'CPU ms/frame (median)':>22s}")
    for label, (wall, cpu) in rows.items():
        print(f"{label:58s} {statistics.median(wall) * 1e3:14.2f} {statistics.mean(wall) * 1e3:14.2f} "
              f"{statistics.median(cpu) * 1e3:22.2f}")
    for label, results in runs.items():
        wall, cpu = min(results)
        print(f"{label:58s} {wall * 1e3:14.2f} {'':14s} {cpu * 1e3:22.2f}   -> {1 / wall:.1f} output frames/s")
    print(f"{n} output frames; numpy {np.__version__}")


if __name__ == "__main__":
    main()
