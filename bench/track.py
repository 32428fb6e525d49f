
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


def stage_cpu(cfg, video: str, fps: float, size: int, n: int, with_video: bool) -> dict[str, float]:
    """CPU milliseconds per output frame of each stage, measured one stage after the other in this
    thread on the first ``n`` output frames (process CPU time, so the decoder's and MediaPipe's own
    threads count; independent of the load of other processes)."""
    from concurrent.futures import Future

    from configs.config import resolve_path
    from micalib.tracking import crop as cropmod
    from micalib.tracking.depth import DepthMesh, depth_mm, frame_geometry
    from micalib.tracking.fitting import LandmarkFitter
    from micalib.tracking.focal_prior import make_prior
    from micalib.tracking.frames import open_frames
    from micalib.tracking.keyframes import calibrate, choose_keyframes
    from micalib.tracking.landmarks import MEDIAPIPE_IBUG68, MediaPipeLandmarker
    from micalib.tracking.model import TrackingFLAME, load_eyelids, load_mediapipe_embedding, observations
    from micalib.tracking.options import FitSettings
    from micalib.tracking.outputs import frame_dict, save_frame
    from micalib.tracking.overlay import VideoWriter
    from micalib.tracking.writer import DEPTH_PNG_COMPRESSION, overlay_frame, ply_metres
    from models.flame import FLAME
    from utils.png import encode_png

    cpu: dict[str, float] = {}

    def timed(name, fn, *a):
        t0 = time.process_time()
        r = fn(*a)
        cpu[name] = cpu.get(name, 0.0) + time.process_time() - t0
        return r

    src = open_frames(video, fps)
    it = iter(src)
    det = MediaPipeLandmarker(video_mode=True)
    crops, lms, box = [], [], None
    tmp = Path(tempfile.mkdtemp(prefix="bench_stages_"))
    try:
        for _ in range(n):
            _k, _i, rgb = timed("decode 1080p (+ dropped frames) -> RGB", next, it)
            if box is None:
                box = cropmod.box_from_landmarks(det.detect(rgb)[MEDIAPIPE_IBUG68], cfg.tracker.bbox_scale)
                det.reset()
            crop = timed("crop (warp to 512)", cropmod.warp, rgb, cropmod.crop_matrix(box, size), (size, size))
            lms.append(timed("MediaPipe on the crop", det.detect, crop))
            crops.append(crop)
            timed("crop cache write + read", lambda c: np.frombuffer(bytearray(c.tobytes()), np.uint8), crop)
        det.close()
        it.close()
        flame = FLAME.from_config(cfg)
        emb = load_mediapipe_embedding(resolve_path(cfg.tracker.mediapipe_embedding_path))
        lids = load_eyelids(resolve_path(cfg.tracker.l_eyelid_path), resolve_path(cfg.tracker.r_eyelid_path), flame.n_vertices)
        model = TrackingFLAME(flame, np.zeros(300), emb, lids, tuple(int(v) for v in cfg.tracker.iris_vertices), ibug68=False)
        fitter = LandmarkFitter(model, FitSettings.from_section(cfg.tracker.fit), (size, size))
        obs = [observations(model, p.astype(np.float64), None) for p in lms]
        keys = timed("keyframes (choice + intrinsics)", choose_keyframes, fitter, [o for o, _v in obs],
                     [v for _o, v in obs], range(n), fitter.s.keyframes)
        timed("keyframes (choice + intrinsics)", calibrate, fitter, [obs[j] for j in keys],
              make_prior(fitter.s, src.size, size / (box[1] - box[0]), None))
        kk, prev = fitter.intr.k, None
        dmesh = DepthMesh.build(model.faces, flame.n_vertices, None)
        writer = VideoWriter(tmp / "v.mp4", fps, (3 * size, size)) if with_video else None
        for k in range(n):
            o, v = obs[k]
            st = timed("fit (Levenberg-Marquardt)", lambda o=o, v=v, prev=prev: fitter.fit_frame(o, v, prev, prev).state)
            prev = st
            geom = timed("full FLAME mesh + one 512 raster (per frame)", frame_geometry, model, dmesh, st, kk, size)
            verts = geom.verts
            timed("input/NNNNN.png (encode + write)",
                  lambda k=k: (tmp / "f.png").write_bytes(encode_png(crops[k], int(cfg.tracker.png_compression))))
            timed("mesh/NNNNN.ply (bytes + write)", lambda verts=verts: (tmp / "f.ply").write_bytes(ply_metres(verts, model.faces)))
            timed("checkpoint/NNNNN.frame (dict + save)", lambda st=st, k=k: save_frame(
                tmp / "f.frame", frame_dict(st.exp, st.pose, st.eyelids, np.zeros(300), st.r, st.t, kk, (size, size), k, k)))
            timed("depth/NNNNN.png (depth + encode + write)", lambda geom=geom: (tmp / "d.png").write_bytes(encode_png(
                depth_mm(geom.fragments, geom.depth_offset, dmesh, size, size), DEPTH_PNG_COMPRESSION)))
            if writer is not None:
                fut: Future = Future()
                fut.set_result(geom)
                img = timed("overlay (shade + green/red dots)", overlay_frame, crops[k], o, fut, model.faces)
                timed("video.mp4 (mp4v encode)", writer.write, img)
        if writer is not None:
            writer.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {name: sec / n * 1e3 for name, sec in cpu.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=str(ROOT.parent / "shared" / "data" / "tracker" / "justin.mp4"))
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--no-video", action="store_true")
    ap.add_argument("--fit-process", type=int, choices=(0, 1), default=1,
                    help="tracker.fit_process: 1 = the fits in a forked process (the default), 0 = in the frame loop")
    ap.add_argument("--photometric", action="store_true", help="with the photometric refinement")
    ap.add_argument("--device", default="cpu", help="device of the photometric refinement")
    ap.add_argument("--workdir", default=None, help="folder for the assets and outputs (default: a temporary one)")
    ap.add_argument("--stage-frames", type=int, default=60,
                    help="frames for the per-stage CPU table (each stage alone, in one thread); 0 = skip")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    load_start = os.getloadavg()
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
            "tracker.l_eyelid_path", str(assets["l_eyelid_path"]), "tracker.r_eyelid_path", str(assets["r_eyelid_path"]),
            "model.flame_masks_path", str(assets["flame_masks_path"]),
            "tracker.fit_process", str(bool(args.fit_process))]
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
    runner = TrackRunner.from_config(cfg, args.video, out, identity_path=work / "zero.npy", fps=args.fps,
                                     image_size=args.image_size, video=not args.no_video, source=src,
                                     photometric=args.photometric, device=args.device)
    def cpu_now() -> float:  # this process's CPU and its waited-for children's (the fitting process)
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    t0, c0 = time.perf_counter(), cpu_now()
    runner.run()
    wall, cpu = time.perf_counter() - t0, cpu_now() - c0
    st = runner.timings.seconds
    print(f"machine: {cpu_description()}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"FLAME: synthetic on the {'real' if real else 'random'} topology; video {Path(args.video).name} "
          f"{src.size[0]}x{src.size[1]} -> {n} output frames at {args.fps} fps{note}")
    print(f"end to end: {wall:.1f} s, {n / wall:.1f} output frames/s (video {'off' if args.no_video else 'on'}, "
          f"photometric {'on, ' + args.device if args.photometric else 'off'}, fit process {'on' if args.fit_process else 'off'})")
    print(f"CPU time of all threads (and of the fitting process): {cpu / n * 1e3:.1f} ms per output frame "
          f"(<= {2e3 / 25:.0f} ms is what 25 frames/s on 2 idle cores allows)")
    print(f"decode only (--fps, prefetch thread): {n / t_decode:.1f} frames/s")
    lm = st.get("landmarks (decode + detect)")
    if lm:
        print(f"baseline decode + crop + MediaPipe (first pass, with the input PNGs): {n / lm:.1f} frames/s")
    second = wall - (lm or 0.0) - st.get("keyframes (intrinsics)", 0.0)
    print(f"second pass (crops from the cache or decoded, fit, writes, overlay): {n / second:.1f} frames/s")
    for name, sec in st.items():
        if name != "total":
            print(f"  {name:32s} {sec:7.2f} s  {n / sec if sec > 0 else float('inf'):8.1f} frames/s")
    load_end = os.getloadavg()
    print(f"load average (1, 5, 15 min) at the start {load_start[0]:.1f} {load_start[1]:.1f} {load_start[2]:.1f}, "
          f"at the end {load_end[0]:.1f} {load_end[1]:.1f} {load_end[2]:.1f} (2 cores)")
    fixed = st.get("keyframes (intrinsics)", 0.0)
    print(f"fixed cost per video: keyframe intrinsics {fixed:.2f} s wall ({fixed / n * 1e3:.1f} ms per frame of this clip)")
    if args.stage_frames > 0:
        table = stage_cpu(cfg, args.video, args.fps, args.image_size, min(args.stage_frames, n), not args.no_video)
        total = sum(table.values())
        print(f"CPU ms per output frame, each stage alone on {min(args.stage_frames, n)} frames (load-independent):")
        for name, ms in table.items():
            print(f"  {name:40s} {ms:6.2f}")
        print(f"  {'sum':40s} {total:6.2f}  -> 2 cores allow 80 ms per frame at 25 frames/s: "
              f"{'fits' if total <= 80 else 'does not fit'} ({2e3 / total:.0f} frames/s if both cores were "
              "busy with it all the time)")


if __name__ == "__main__":
    main()
