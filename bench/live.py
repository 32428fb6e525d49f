"""Live tracking of a video file played at its own frame rate (``track.py --live``): tracked
frames/s, latency p50/p95, time to the first result, drops after the warm-up, CPU ms per tracked
frame, and whether one local WebSocket client received every tracked frame in order.

A synthetic FLAME on the real topology when ../shared/data/flame_public is present (the same cost
as the real model), as bench/track.py; MediaPipe on each crop; no viewer.

Usage::

    python bench/live.py --video ../shared/data/tracker/justin.mp4 --identity ../shared/data/tracker/justin_identity.npy
    python bench/live.py --video /work/clips/duda/video.mp4 [-o]   # -o: also write the per-frame files
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_description  # noqa: E402


def client(url: str, box: dict) -> None:
    """One local client: every message, checking that frame numbers arrive in order."""
    from micalib.live.websocket import ConnectionClosed, WebSocketClient

    c = WebSocketClient(url, timeout=None)
    frames, in_order = [], True
    try:
        while True:
            m = c.recv()
            if isinstance(m, bytes):
                continue
            d = json.loads(m)
            if d["type"] == "frame":
                in_order &= not frames or d["frame"] == frames[-1] + 1
                frames.append(d["frame"])
            if d["type"] == "end":
                break
    except ConnectionClosed:
        pass
    box.update(frames=frames, in_order=in_order)


def stage_cpu(cfg, o, video: str, n: int) -> dict[str, float]:
    """CPU ms per frame of each stage, one stage after the other in this thread over ``n`` frames
    after the warm-up (process CPU time, so MediaPipe's and FFmpeg's own threads count): what one
    tracked frame costs, independent of how loaded the machine is (not of how fast its cores are)."""
    import time

    import cv2

    from micalib.live.build import build_tracker
    from micalib.live.messages import frame_message
    from micalib.live.sources import Captured
    from micalib.live.stream import text
    from micalib.tracking.model import observations

    cap = cv2.VideoCapture(video)
    fps = cap.get(cv2.CAP_PROP_FPS)
    tracker = build_tracker(cfg, o)
    k, cpu = 0, {}
    while not tracker.tracking:  # the warm-up; the last call fits the intrinsics (timed once)
        ok, bgr = cap.read()
        t0 = time.process_time()
        tracker.process(Captured(k, 0.0, k / fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
        last = time.process_time() - t0
        k += 1
    warm_ms = 1000.0 * last
    t0 = time.process_time()
    frames = []
    for _ in range(n):
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cpu["decode + RGB (1080p)"] = time.process_time() - t0
    t0 = time.process_time()
    framed = [tracker.framing(Captured(k + i, 0.0, 0.0, rgb)) for i, rgb in enumerate(frames)]
    cpu["crop + MediaPipe"] = time.process_time() - t0
    t0 = time.process_time()
    states, fitter = [], tracker.fitter
    for _crop, mp, ib in framed:
        obs, valid = observations(tracker.model, mp, ib)
        st = fitter.fit_frame(obs, valid & (fitter.set_w > 0), tracker.prev, tracker.prev).state
        tracker.prev = st
        states.append(st)
    cpu["fit"] = time.process_time() - t0
    t0 = time.process_time()
    for i, st in enumerate(states):
        text(frame_message(i, i, 0.0, 0.0, True, st.exp, st.pose, st.eyelids, st.r, st.t, tracker.k, False, 0))
    cpu["message (JSON)"] = time.process_time() - t0
    t0 = time.process_time()
    for crop, _, _ in framed:
        cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    cpu["crop JPEG (--send-crops)"] = time.process_time() - t0
    t0 = time.process_time()
    for st in states:
        tracker.model.vertices(st.exp, st.pose, st.eyelids)
    cpu["posed vertices (viewer subscribed)"] = time.process_time() - t0
    out = {key: 1000.0 * v / max(len(frames), 1) for key, v in cpu.items()}
    out[f"intrinsics fit at the warm-up's end (once, {k} frames)"] = warm_ms
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", default=str(ROOT.parent / "shared" / "data" / "tracker" / "justin.mp4"))
    p.add_argument("--identity", default=None, help="identity.npy (default zeros)")
    p.add_argument("-o", "--output", action="store_true", help="write the per-frame files (into a temp folder)")
    p.add_argument("--send-crops", action="store_true")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--loops", type=int, default=1, help="play the clip this many times in a row (one warm-up)")
    p.add_argument("--stages", type=int, default=0, metavar="N",
                   help="instead of a live run: CPU ms per frame of each stage over N frames")
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    load_start = os.getloadavg()
    from configs.config import load_cfg
    from micalib.live.build import LiveOptions, build_session
    from tests.synthetic_flame import shared_flame_public
    from tests.synthetic_tracking import shared_tracker_dir, write_tracker_assets

    work = Path(tempfile.mkdtemp(prefix="bench_live_"))
    real = shared_flame_public() is not None and shared_tracker_dir() is not None
    assets = write_tracker_assets(work / "assets", seed=0, real=real)
    ident = args.identity
    if ident is None:
        ident = str(work / "zero.npy")
        np.save(ident, np.zeros(300, np.float32))
    opts = ["model.flame_model_path", str(assets["flame_model_path"]),
            "model.flame_lmk_embedding_path", str(assets["flame_lmk_embedding_path"]),
            "tracker.mediapipe_embedding_path", str(assets["mediapipe_embedding_path"]),
            "tracker.l_eyelid_path", str(assets["l_eyelid_path"]), "tracker.r_eyelid_path", str(assets["r_eyelid_path"])]
    cfg = load_cfg(ROOT / "configs" / "tracker.yml", opts)
    o = LiveOptions(live_file=args.video, identity=ident, warmup_s=args.warmup, port=0, send_crops=args.send_crops,
                    output=str(work / "out") if args.output else None)
    if args.stages:
        for key, ms in stage_cpu(cfg, o, args.video, args.stages).items():
            print(f"  {key:36s} {ms:7.2f} ms CPU" + (" (once)" if key.startswith("intrinsics") else " per frame"))
        print(f"machine: {cpu_description()}; load average at the start {load_start[0]:.1f}, now {os.getloadavg()[0]:.1f}")
        return
    session = build_session(cfg, o, loops=args.loops)
    box: dict = {}
    t = threading.Thread(target=client, args=(f"ws://127.0.0.1:{session.server.port}/", box), daemon=True)
    t.start()
    stats = session.run().summary()
    t.join(10)
    got = box.get("frames", [])
    load_end = os.getloadavg()
    print(f"machine: {cpu_description()}, {os.cpu_count()} cores; torch {torch.__version__}; FLAME: synthetic on the "
          f"{'real' if real else 'random'} topology; --live {Path(args.video).name} at {session.source.fps:.3f} fps x{args.loops}; "
          f"-o {'on' if args.output else 'off'}; crops {'on' if args.send_crops else 'off'}")
    print(json.dumps(stats))
    print(f"client: {len(got)} frame messages of {stats['tracked']} tracked, in order: {box.get('in_order')}, "
          f"every one: {got == list(range(stats['tracked']))}")
    print(f"load average (1, 5, 15 min) at the start {load_start[0]:.1f} {load_start[1]:.1f} {load_start[2]:.1f}, "
          f"at the end {load_end[0]:.1f} {load_end[1]:.1f} {load_end[2]:.1f} (2 cores)")


if __name__ == "__main__":
    main()
