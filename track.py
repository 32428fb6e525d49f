"""Metrical FLAME tracking of a video (or a folder of frames) into the original tracker's files.

    python track.py -i video.mp4 -o output/tracking [--identity identity.npy] [--landmarks lmk.npz]
    python track.py --camera 0 | --url rtsp://... | --live video.mp4 [--identity identity.npy] [-o OUT]

Live mode (--camera / --url / --live) tracks the newest frame as it arrives and streams one JSON
message per tracked frame on ws://127.0.0.1:--port (README "Live tracking"); files only with -o.

Writes OUT/NAME/{checkpoint/NNNNN.frame, mesh/NNNNN.ply, input/NNNNN.png, canonical.obj,
identity.npy, landmarks.npz, crop.json, bbox.pt, tracking.csv, video.mp4, NAME.glb, view/index.html};
see README "Tracking a video" and "Look at the results". A re-run into the same -o skips the finished frames if its options are the same, and is
refused otherwise (--overwrite tracks again from scratch). Trailing KEY VALUE pairs override the configuration (configs/tracker.yml, section tracker).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from loguru import logger

from configs.config import load_cfg
from utils.errors import UserError, run_main, sigterm_as_interrupt
from utils.log_setup import setup_logging


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Metrical FLAME tracking of a video (CPU, real time)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("-i", "--input", help="video file or folder of frames (sorted by name)")
    src.add_argument("--camera", type=int, default=None, metavar="N", help="live: OpenCV camera index")
    src.add_argument("--url", default=None, help="live: a capture URL OpenCV opens (rtsp://, http://)")
    src.add_argument("--live", default=None, metavar="FILE",
                     help="live: a video file played at its own frame rate as a stand-in camera")
    p.add_argument("-o", "--output", default=None,
                   help="output folder (NAME is appended; default output/tracking; live: nothing is written without -o)")
    p.add_argument("--identity", default=None, help="MICA identity.npy (default: MICA on the video's frames)")
    p.add_argument("--landmarks", default=None,
                   help="npz with 'mediapipe' (T,478,2) and/or 'ibug68' (T,68,2) per input frame instead of detection")
    p.add_argument("--fps", type=float, default=None, help="output frame rate of a video (default 25; a folder of frames: every frame)")
    p.add_argument("--begin-frame", type=int, default=0, metavar="N",
                   help="skip the first N output frames of the input (after --fps): output frame 00000 is its "
                        "output frame N (the original tracker's begin_frames)")
    p.add_argument("--image-size", type=int, default=512, help="side of the square crop")
    p.add_argument("--focal", type=float, default=None, metavar="PX",
                   help="the camera's focal length in pixels of the input frames (fixes it; default: fitted on "
                        "keyframes with a field-of-view prior, tracker.fit.fov_deg; live: during the warm-up)")
    p.add_argument("--photometric", action="store_true", help="photometric refinement after the landmark fit (slower; a GPU helps)")
    p.add_argument("--no-video", action="store_true", help="skip video.mp4")
    p.add_argument("--no-glb", action="store_true", help="skip OUT/NAME/NAME.glb (the animated glTF of the clip) and so the viewer page")
    p.add_argument("--no-page", action="store_true", help="skip the viewer page OUT/NAME/view/index.html")
    p.add_argument("--overwrite", action="store_true",
                   help="remove the earlier outputs of this input in -o first (needed when the options changed)")
    p.add_argument("--cfg", default="configs/tracker.yml", help="YAML config merged over the defaults")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N or mps (MICA and --photometric)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "auto"], default=None)
    p.add_argument("--warmup", type=float, default=2.0, metavar="S",
                   help="live: seconds of frames with a face before the intrinsics are fitted and fixed")
    p.add_argument("--host", default="127.0.0.1", help="live: address the stream listens on (loopback only unless --allow-remote)")
    p.add_argument("--allow-remote", action="store_true", help="live: allow a --host reachable from other machines")
    p.add_argument("--port", type=int, default=8765, help="live: WebSocket port (0: any free one, logged)")
    p.add_argument("--send-crops", action="store_true", help="live: send each tracked frame's crop as a binary JPEG (viewer)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def _live_main(args, cfg) -> int:
    from micalib.live.build import LiveOptions, build_session
    from utils.device import resolve_device
    from utils.errors import sigterm_as_interrupt

    opts = LiveOptions(camera=args.camera, url=args.url, live_file=args.live, landmarks=args.landmarks, output=args.output,
                       identity=args.identity, focal=args.focal, warmup_s=args.warmup, image_size=args.image_size,
                       host=args.host, port=args.port, allow_remote=args.allow_remote, send_crops=args.send_crops,
                       video=not args.no_video, device=str(resolve_device(cfg.device)))
    import contextlib

    with sigterm_as_interrupt():
        session = build_session(cfg, opts)
        with session.layout.lock() if session.layout is not None else contextlib.nullcontext():
            session.run()
            if session.writer is not None and session.stats.tracked:  # -o: the clip's .glb and page
                finish_outputs(cfg, session.layout.root, glb=not args.no_glb, page=not args.no_page)
    return 0


def main(argv=None) -> int:
    from micalib.tracking.limits import check_track_options
    from utils.io import prepare_output_dir

    args = parse_args(argv)
    check_track_options(args.fps, args.image_size)
    live = args.input is None
    if live:
        for flag, value in (("--photometric", args.photometric or None),
                            ("--overwrite", args.overwrite or None), ("--fps", args.fps),
                            ("--begin-frame", args.begin_frame or None)):
            if value is not None:
                raise UserError(f"{flag} is not available in live mode (--camera / --url / --live)")
        if args.output is not None:
            prepare_output_dir(args.output, "output folder (-o)", clean=False)
    else:
        args.output = args.output or "output/tracking"
        prepare_output_dir(args.output, "output folder (-o)", clean=False)  # before loading anything
    if args.fps is not None and Path(args.input).is_dir():
        logger.info(f"--fps {args.fps:g} is ignored for a folder of frames: every frame is tracked")
    opts = list(args.opts)
    if args.focal is not None:
        if not args.focal > 0:
            raise ValueError(f"--focal {args.focal:g}: give the focal length in pixels of the input frames (> 0)")
        opts += ["tracker.fit.focal", str(float(args.focal))]
    for key, value in (("device", args.device), ("precision", args.precision)):
        if value is not None:
            opts += [key, value]
    cfg = load_cfg(args.cfg, opts)
    import torch

    torch.set_num_threads(1)  # the per-frame work is small; threads are used for writing instead
    if live:
        return _live_main(args, cfg)
    from micalib.tracking.runner import TrackRunner
    from utils.device import resolve_device

    runner = TrackRunner.from_config(cfg, args.input, args.output, identity_path=args.identity,
                                     landmarks_path=args.landmarks, fps=25.0 if args.fps is None else args.fps,
                                     begin_frame=args.begin_frame,
                                     image_size=args.image_size, video=not args.no_video, photometric=args.photometric,
                                     device=str(resolve_device(cfg.device)), overwrite=args.overwrite)
    with sigterm_as_interrupt():  # as Ctrl-C: the tracked frames' files finished, the crop cache removed, exit 130
        runner.run(finish=lambda out: finish_outputs(cfg, Path(out), glb=not args.no_glb, page=not args.no_page,
                                                     landmarks=args.landmarks))
    return 0


def finish_outputs(cfg, out: Path, glb: bool = True, page: bool = True, landmarks: str | None = None) -> None:
    """The clip's ``NAME.glb`` (``micalib.export.gltf``) and viewer page (``micalib.viewer``); prints
    the page's path."""
    from configs.config import resolve_path

    if not glb:
        return
    from micalib.export.gltf import export_tracking_folder

    lids = (resolve_path(cfg.tracker.l_eyelid_path), resolve_path(cfg.tracker.r_eyelid_path))
    glb_path = export_tracking_folder(out, resolve_path(cfg.model.flame_model_path), lids)
    if page:
        from micalib.viewer.page import write_tracking_page

        index = write_tracking_page(out, glb_path, landmarks)
        print(f"viewer page: {index}".encode("utf-8", "surrogateescape").decode("utf-8", "replace"))  # any bytes


if __name__ == "__main__":
    setup_logging()
    run_main(main)
