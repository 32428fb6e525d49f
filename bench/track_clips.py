"""The metric camera on real clips (issue 22): the first 100 frames against the whole clip.

For each clip, ``track.py`` runs twice (the first ``--frames`` output frames, then all of them) with
a stand-in FLAME (the real topology from ../shared/data/flame_public with random bases when present,
else the random topology) and a zero identity, so the figures are regression figures, not accuracy.
Printed per run: the fitted focal length (source pixels), its 95% interval, who decided it (the
motion or the prior), the prior's band; and across the two runs: focal and mean distance over the
shared frames (agreement goal 1%), both focal lengths inside the prior's band, the whole clip's focal
inside the short run's interval, and where both say "motion", focal within 10%.

Clips: the original tracker's wojtek and duda (``fetch`` github:Zielon/metrical-tracker, copy
``input/{wojtek,duda}/video.mp4`` to /work/clips/NAME/video.mp4 or ``--clips``; never commit them)
and ../shared/data/tracker/justin.mp4.

Usage::

    python bench/track_clips.py [--clips /work/clips] [--frames 100] [--only duda] [--window 0]

``--window`` sets ``tracker.fit.calib_window_s`` (default 4 s: both runs then calibrate on the same
first seconds, so they agree by construction; 0: each on its whole clip, the figures that show how
much the keyframes of different spans disagree).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_description  # noqa: E402


def _run(cfg, video: Path, out: Path, ident: Path, frames: int | None) -> tuple[dict, np.ndarray, int]:
    """One track.py run (no video): the run record's camera entry, per-frame t, frames with a face."""
    from micalib.tracking.frames import open_frames
    from micalib.tracking.outputs import read_frame
    from micalib.tracking.runner import TrackRunner

    src = open_frames(video, 25.0)
    if frames is not None:
        src.indices = src.indices[:frames]
    shutil.rmtree(out, ignore_errors=True)
    runner = TrackRunner.from_config(cfg, video, out, identity_path=ident, fps=25.0, video=False, source=src)
    path = runner.run()
    cam = json.loads((path / ".track_run.json").read_text())["camera"]
    t = np.stack([np.asarray(read_frame(path / "checkpoint" / f"{k:05d}.frame")["opencv"]["t"]).reshape(3)
                  for k in range(len(src))])
    with open(path / "tracking.csv") as f:
        faces = sum(1 for line in f.readlines()[1:] if line.split(",")[3] == "1")
    return cam, t, faces


def _line(name: str, cam: dict, n: int, faces: int) -> str:
    return (f"  {name:6s} {n:4d} frames ({faces} with a face): focal {cam['focal']:8.1f} px, 95% "
            f"[{cam['low']:.1f}, {cam['high']:.1f}], decided by the {cam['decided_by']} "
            f"(landmarks' share {cam['data_share']:.2f}), prior band [{cam['prior_low']:.0f}, {cam['prior_high']:.0f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", default=os.environ.get("MICA_TRACKER_CLIPS", "/work/clips"))
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--only", default=None, help="one clip: wojtek, duda or justin")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--window", type=float, default=None,
                    help="tracker.fit.calib_window_s for both runs (default: the config's; 0 = the whole clip)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from configs.config import load_cfg
    from tests.synthetic_flame import shared_flame_public
    from tests.synthetic_tracking import shared_tracker_dir, write_tracker_assets

    clips = {"wojtek": Path(args.clips) / "wojtek" / "video.mp4", "duda": Path(args.clips) / "duda" / "video.mp4",
             "justin": ROOT.parent / "shared" / "data" / "tracker" / "justin.mp4"}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_clips_"))
    real = shared_flame_public() is not None and shared_tracker_dir() is not None
    assets = write_tracker_assets(work / "assets", seed=0, real=real)
    np.save(work / "zero.npy", np.zeros(300, np.float32))
    cfg = load_cfg(ROOT / "configs" / "tracker.yml", [
        "model.flame_model_path", str(assets["flame_model_path"]),
        "model.flame_lmk_embedding_path", str(assets["flame_lmk_embedding_path"]),
        "tracker.mediapipe_embedding_path", str(assets["mediapipe_embedding_path"]),
        "tracker.l_eyelid_path", str(assets["l_eyelid_path"]), "tracker.r_eyelid_path", str(assets["r_eyelid_path"])]
        + ([] if args.window is None else ["tracker.fit.calib_window_s", str(args.window)]))
    load = os.getloadavg()
    print(f"machine: {cpu_description()}, {os.cpu_count()} cores, load {load[0]:.1f} at the start; FLAME: stand-in "
          f"on the {'real' if real else 'random'} topology, zero identity; 25 fps output; calibration window "
          f"{cfg.tracker.fit.calib_window_s:g} s (0: the whole clip)")
    for name, video in clips.items():
        if (args.only and name != args.only) or not video.is_file():
            if not args.only or name == args.only:
                print(f"{name}: {video} absent, skipped")
            continue
        t0 = time.perf_counter()
        short, t_s, f_s = _run(cfg, video, work / "short", work / "zero.npy", args.frames)
        whole, t_w, f_w = _run(cfg, video, work / "whole", work / "zero.npy", None)
        n = min(len(t_s), len(t_w))
        d_ratio = t_s[:n, 2].mean() / t_w[:n, 2].mean()
        f_ratio = short["focal"] / whole["focal"]
        print(f"{name} ({time.perf_counter() - t0:.0f} s):")
        print(_line("first", short, len(t_s), f_s))
        print(_line("whole", whole, len(t_w), f_w))
        both_motion = short["decided_by"] == whole["decided_by"] == "motion"
        inside = all(c["prior_low"] <= c["focal"] <= c["prior_high"] for c in (short, whole))
        print(f"  agree: focal {abs(f_ratio - 1):.2%}, mean distance over frames 0-{n - 1} {abs(d_ratio - 1):.2%} "
              f"(goal 1%: {'met' if max(abs(f_ratio - 1), abs(d_ratio - 1)) <= 0.01 else 'NOT met'}); "
              f"distance {t_s[:n, 2].mean():.3f} / {t_w[:n, 2].mean():.3f} m; both inside the prior's band: "
              f"{'yes' if inside else 'NO'}; whole inside the short run's interval: "
              f"{'yes' if short['low'] <= whole['focal'] <= short['high'] else 'NO'}"
              + (f"; both decided by the motion, within 10%: {'yes' if abs(f_ratio - 1) <= 0.1 else 'NO'}"
                 if both_motion else ""))
    load = os.getloadavg()
    print(f"load at the end {load[0]:.1f} (2 cores; other work was running when above 1.5)")


if __name__ == "__main__":
    main()
