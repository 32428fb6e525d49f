"""track.py's live mode assembled from the config and the command line: ``LiveOptions`` (what the
user asked for) -> ``build_session(cfg, options) -> LiveSession`` with its source, tracker, stream
server and (with ``-o``) writer. Every check that can fail on the user's input (assets, identity
file, host, port, camera / URL / file) fails here, in one line, before the run starts."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from micalib.live.online import Framing, OnlineTracker
from micalib.live.session import LiveSession, glb_builder
from micalib.live.sources import CaptureSource, LiveSource, PacedVideoSource
from micalib.live.stream import StreamServer, check_host
from micalib.tracking.options import TrackOptions
from utils.errors import MICAError

CLIENT_QUEUE = 64  # messages (frames with their binaries) waiting per client before it loses some


@dataclass(frozen=True)
class LiveOptions:
    camera: int | None = None       # --camera N
    url: str | None = None          # --url URL
    live_file: str | None = None    # --live FILE
    landmarks: str | None = None    # --landmarks with --live: rows per frame instead of MediaPipe
    output: str | None = None       # -o (None: nothing written)
    identity: str | None = None
    focal: float | None = None      # source pixels
    warmup_s: float = 2.0
    image_size: int = 512
    host: str = "127.0.0.1"
    port: int = 8765
    allow_remote: bool = False
    send_crops: bool = False
    video: bool = True              # -o: video.mp4 (shed first when the writer is behind)
    device: str = "cpu"


def make_source(o: LiveOptions, loops: int = 1) -> LiveSource:
    if o.camera is not None:
        return CaptureSource(int(o.camera))
    if o.url is not None:
        return CaptureSource(str(o.url))
    rows = None
    if o.landmarks is not None:
        from micalib.tracking.landmarks import load_landmarks_npz

        rows = load_landmarks_npz(o.landmarks, None)
    return PacedVideoSource(o.live_file, rows, loops=loops)


def _tracker_parts(cfg, t: TrackOptions):
    from configs.config import resolve_path
    from micalib.tracking.model import load_eyelids, load_mediapipe_embedding
    from micalib.tracking.runner import check_assets
    from models.flame import FLAME

    check_assets({"model.flame_model_path": resolve_path(cfg.model.flame_model_path),
                  "model.flame_lmk_embedding_path": resolve_path(cfg.model.flame_lmk_embedding_path),
                  "tracker.mediapipe_embedding_path": resolve_path(t.mediapipe_embedding_path)})
    flame = FLAME.from_config(cfg)
    emb = load_mediapipe_embedding(resolve_path(t.mediapipe_embedding_path))
    lids = load_eyelids(resolve_path(t.l_eyelid_path), resolve_path(t.r_eyelid_path), flame.n_vertices)
    if lids is None:
        logger.warning("eyelid blendshapes not found: tracking without eyelids (install.sh --download)")
    return flame, emb, lids


def track_options(cfg, o: LiveOptions) -> TrackOptions:
    """The offline tracker's options from the config (the same ``tracker`` section)."""
    return TrackOptions.from_section(cfg.tracker, image_size=o.image_size, fps=None, video=o.video, device=o.device)


def build_tracker(cfg, o: LiveOptions, flame=None, emb=None, lids=None, detector=None) -> OnlineTracker:
    """The online tracker (``flame``/``emb``/``lids`` given: used as they are, for tests)."""
    from micalib.tracking.identity import mica_identity, mica_loader
    from utils.identity import read_identity

    t = track_options(cfg, o)
    if flame is None:
        flame, emb, lids = _tracker_parts(cfg, t)
    ident = read_identity(o.identity, "pass MICA's identity.npy") if o.identity is not None else None
    load_mica = mica_loader(cfg, o.device)

    def identity_fn(frames):
        return mica_identity(*load_mica(), frames, "the live source's warm-up")

    if detector is None and o.landmarks is None:
        from micalib.tracking.landmarks import MediaPipeLandmarker

        detector = MediaPipeLandmarker(video_mode=True)
    framing = Framing(o.image_size, t.bbox_scale, t.crop, detector)
    return OnlineTracker(flame, emb, lids, t.iris_vertices, t.fit, framing, o.warmup_s, identity=ident,
                         identity_fn=identity_fn, focal_px=o.focal, identity_frames=t.identity_frames)


def writer_factory(cfg, o: LiveOptions, source: LiveSource):
    """``f(tracker) -> LiveWriter`` for ``-o`` (None without it: nothing is written)."""
    if o.output is None:
        return None
    from micalib.live.writer import LiveWriter
    from micalib.tracking.layout import TrackLayout

    layout = TrackLayout(o.output, source.name)
    if layout.has_frames():
        raise MICAError(f"{layout.root} already holds tracked frames; pass another -o (a live run never resumes)")
    png_compression = track_options(cfg, o).png_compression

    def make(tracker: OnlineTracker):
        return LiveWriter(layout, tracker.model, tracker.identity, tracker.k, tracker.size, tracker.framing.matrix,
                          source.fps or 25.0, video=o.video, png_compression=png_compression)

    make.layout = layout
    return make


def build_session(cfg, o: LiveOptions, loops: int = 1, **tracker_parts) -> LiveSession:
    """Everything of a live run, checked; ``loops``: play a ``--live`` file that many times (bench)."""
    if o.landmarks is not None and o.live_file is None:
        raise MICAError("--landmarks works in live mode with --live FILE only (one row per frame of the file)")
    if o.focal is not None and not o.focal > 0:
        raise MICAError(f"--focal must be a positive number of source pixels, not {o.focal}")
    if not o.warmup_s >= 0:
        raise MICAError(f"--warmup must be zero or more seconds, not {o.warmup_s}")
    host = check_host(o.host, o.allow_remote)
    source = make_source(o, loops).open()
    tracker = build_tracker(cfg, o, **tracker_parts)
    server = StreamServer(host, o.port, queue_size=CLIENT_QUEUE)
    writer = writer_factory(cfg, o, source)
    session = LiveSession(source, tracker, server, writer, o.send_crops, glb=glb_builder(source.fps))
    session.layout = None if writer is None else writer.layout  # -o: held under its lock by track.py
    server.start()
    page = (Path(__file__).resolve().parent.parent / "viewer" / "live.html").as_uri()
    logger.info(f"live: streaming on ws://{host}:{server.port}/; watch it: {page}?ws=ws://{host}:{server.port}/")
    return session
