"""track.py's pipeline: frames -> landmarks -> crop -> identity -> camera intrinsics on keyframes ->
per-frame fit -> the original tracker's files (see ``micalib/tracking/outputs.py``).

Two passes over the frames: the first detects the landmarks (skipped with ``--landmarks`` or a
cached ``OUT/NAME/landmarks.npz``), the second fits and writes. With one crop box (the default) the
video is decoded once: the landmark pass crops each frame with the box it detects in (kept as
``bbox.pt``), writes ``input/NNNNN.png`` from a thread and appends the raw crop to
``OUT/NAME/.crops.raw``, which the second pass reads back and the run deletes (without room on the
disk, a face on the first frame, or with ``follow_face``, the second pass decodes again). In the
second pass the main thread fits; the full mesh is posed once per frame and ``.ply`` / ``.frame``
are written by a thread pool, overlays drawn by two threads and encoded in order by the main
thread. Frames without a face are interpolated between the tracked frames around them (held before
the first / after the last) and flagged. Finished frames (``checkpoint/NNNNN.frame`` present) are
skipped on a re-run with the same options (``micalib/tracking/resume.py``: another run's options
are refused); the last finished one warm-starts the next. A video that ends early is tracked
up to its end (``frames.VideoFrames.truncated_at``).
"""
from __future__ import annotations

import csv
import io
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from loguru import logger
from tqdm import tqdm

from micalib.tracking import crop as cropmod
from micalib.tracking.camera import matrix_to_axis_angle, rotation_6d_to_matrix
from micalib.tracking.crop import transform_points
from micalib.tracking.fitting import (
    FrameState,
    Intrinsics,
    LandmarkFitter,
    interpolate_state,
    pick_keyframes,
    settings_from_config,
)
from micalib.tracking.frames import open_frames, prefetch
from micalib.tracking.model import (
    TrackingFLAME,
    load_eyelids,
    load_mediapipe_embedding,
    observations,
)
from micalib.tracking.outputs import frame_dict, frame_name, read_frame, save_frame
from micalib.tracking.resume import (
    ROWS_JOURNAL,
    RUN_RECORD,
    RowJournal,
    check_run_record,
    clear_run,
    finished_frames,
    old_rows,
    run_settings,
)
from utils.errors import MICAError
from utils.io import (
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temps,
    written_file,
)
from utils.mesh import obj_text, ply_bytes

# Raw crops of the landmark pass (uint8, frame after frame), read by the second pass, then deleted.
CROP_CACHE = ".crops.raw"
# Frames before the first face kept in memory (bytes) to be cropped once the face is found.
EARLY_BYTES = 512 << 20
# Faceless frames kept in memory while waiting for the next tracked frame (beyond: held, not interpolated).
MAX_HELD = 250
CSV_FIELDS = ["frame", "input_frame", "time_s", "face_found", "landmarks_used", "rms_mediapipe_px",
              "rms_iris_px", "rms_ibug68_px", "interpolated"]


@dataclass
class Timings:
    """Seconds spent per stage (bench/track.py reports them)."""

    stages: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.stages[name] = self.stages.get(name, 0.0) + seconds


def _png_bytes(rgb: np.ndarray, compression: int) -> bytes:
    """Lossless PNG; at compression <= 1 with the fastest settings measured (the 'up' row filter and
    Huffman-only deflate: about half the time of the default, files about as small; bench/README.md)."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]
    if int(compression) <= 1:
        params += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
                   cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY]
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise MICAError("could not encode a PNG frame")
    return buf.tobytes()


def _state_from_frame(data: dict) -> FrameState:
    fl = data["flame"]
    mats = rotation_6d_to_matrix(np.concatenate([fl["jaw"].reshape(1, 6), fl["eyes"].reshape(2, 6)]))
    return FrameState(np.asarray(fl["exp"], np.float64).reshape(-1), matrix_to_axis_angle(mats).reshape(9),
                      np.asarray(fl["eyelids"], np.float64).reshape(2),
                      np.asarray(data["opencv"]["R"], np.float64).reshape(3, 3),
                      np.asarray(data["opencv"]["t"], np.float64).reshape(3))


class TrackRunner:
    """Tracks one video / frame folder into ``out_root/NAME``.

    Args:
        cfg: the frozen config (``tracker`` section, FLAME paths, MICA for the identity).
        input_path: video file or folder of frames.
        out_root: output folder (NAME is appended).
        identity_path: MICA ``identity.npy``; None = computed with MICA from the frames.
        landmarks_path: the user's landmark npz (replaces detection).
        fps: output frame rate (video only); image_size: crop size.
        video: write ``video.mp4``.
        flame: a prebuilt FLAME layer (else from the config).
        source: an opened ``FrameSource`` (else ``open_frames(input_path, fps)``).
    """

    def __init__(self, cfg, input_path, out_root, identity_path=None, landmarks_path=None, fps: float | None = 25.0,
                 image_size: int = 512, video: bool = True, photometric: bool = False, device: str = "cpu",
                 flame=None, source=None, overwrite: bool = False) -> None:
        self.cfg = cfg
        self.source = source if source is not None else open_frames(input_path, fps)
        self.out = Path(out_root) / self.source.name
        self.identity_path = identity_path
        self.landmarks_path = landmarks_path
        self.size = int(image_size)
        self.video = video
        self.photometric = photometric
        self.device = device
        self._flame = flame
        self.timings = Timings()
        self._box = None  # the one crop box of this run's landmark pass
        self._n_cached = 0  # frames in the crop cache
        self._png_written: set[int] = set()
        self.overwrite = overwrite
        self._journal: RowJournal | None = None
        self.camera = None  # the keyframes' CameraEstimate (focal_prior.py), None when resumed

    # -----------------------------------------------------------------------------------------
    def _landmarks(self) -> dict[str, np.ndarray]:
        from micalib.tracking.landmarks import load_landmarks_npz, save_landmarks_npz

        n_in = self.source.n_input_frames
        if self.landmarks_path is not None:
            return load_landmarks_npz(self.landmarks_path, n_in)
        cache = self.out / "landmarks.npz"
        if written_file(cache):
            logger.info(f"landmarks from {cache}")
            return load_landmarks_npz(cache, n_in)
        lm = self._detect()
        save_landmarks_npz(cache, **lm)
        return lm

    def _detect(self) -> dict[str, np.ndarray]:
        """MediaPipe on the crop of each output frame (the box from the first frame with a face)."""
        from micalib.tracking.landmarks import (
            MEDIAPIPE_IBUG68,
            FaceSearch,
            Ibug68Detector,
            MediaPipeLandmarker,
            face_box_from_points,
            find_ibug68_model,
        )

        t0 = time.perf_counter()
        mp = np.full((self.source.n_input_frames, 478, 2), np.nan, np.float32)
        ib_path = find_ibug68_model(str(self.cfg.tracker.ibug68_model) or None)
        ib_det = Ibug68Detector(ib_path) if ib_path is not None else None
        ib = np.full((self.source.n_input_frames, 68, 2), np.nan, np.float32) if ib_det is not None else None
        if ib_det is not None:
            logger.info(f"68-point landmarks from {ib_path}")
        det = MediaPipeLandmarker(video_mode=True)
        search = FaceSearch(int(self.cfg.tracker.search_every))
        early: list[np.ndarray] = []  # frames before the first face, cropped once the box is known
        faceless: int | None = None  # faceless frames since the first face
        box = None
        track = cropmod.CropTrack(self.cfg.tracker.bbox_scale) if self.cfg.tracker.follow_face else None
        # One fixed box (the default): this pass's crops are the final ones, so they are kept in a
        # raw file for the second pass (no second decode) and their PNGs are written here.
        cache = self._open_crop_cache() if (self.cfg.tracker.crop and not self.cfg.tracker.follow_face and ib_det is None) else None
        pool = ThreadPoolExecutor(1, thread_name_prefix="track-png") if cache is not None else None
        pending: list[Future] = []
        n_cached = 0
        try:
            def keep(k, crop):  # the crop cache and input/NNNNN.png of frame k
                cache.write(crop.tobytes())
                pending.append(pool.submit(self._write_png, k, crop))
                while len(pending) > 4:
                    pending.pop(0).result()
                return k + 1

            for k, i, rgb in tqdm(prefetch(self.source), total=len(self.source), desc="landmarks", leave=False):
                if box is None:
                    pts = det.detect(rgb)
                    if not np.isfinite(pts).all():  # too small for the full frame: search windows
                        pts = search.find(rgb)
                    if not np.isfinite(pts).all():
                        if cache is not None and (len(early) + 1) * rgb.nbytes <= EARLY_BYTES:
                            early.append(rgb.copy())
                        elif cache is not None:  # no face for too long: no cache, decode twice
                            logger.info(f"no face in the first {k + 1} frames: the video is decoded twice")
                            cache.close()
                            cache, early = None, []
                            (self.out / CROP_CACHE).unlink(missing_ok=True)
                        continue
                    box = cropmod.box_from_landmarks(pts[MEDIAPIPE_IBUG68], self.cfg.tracker.bbox_scale)
                    det.reset()
                    faceless = 0
                    for ke, rgb_e in enumerate(early):  # frames 0..k-1 (no face): their crops now
                        n_cached = keep(ke, cropmod.warp(rgb_e, cropmod.crop_matrix(box, self.size), (self.size,) * 2))
                    early = []
                if track is not None:
                    box = track.update(mp[i - 1][MEDIAPIPE_IBUG68] if i > 0 else None) or box
                m = cropmod.crop_matrix(box, self.size)
                crop = cropmod.warp(rgb, m, (self.size, self.size))
                mp[i] = transform_points(det.detect(crop), cropmod.invert_matrix(m)).astype(np.float32)
                if not np.isfinite(mp[i]).all():  # the face left the crop, or shrank: search now and then
                    mp[i] = search.find(rgb) if search.wanted(faceless) else mp[i]
                    faceless += 1
                if cache is not None:
                    self._box = box
                    n_cached = keep(k, crop)
                face = face_box_from_points(mp[i])
                if ib_det is not None and face is not None:
                    ib[i] = ib_det.detect(rgb, face)
            for f in pending:
                f.result()
        finally:
            det.close()
            search.close()
            if search.searches:
                logger.info(f"face search on {search.searches} frame(s) where MediaPipe missed the face")
            if pool is not None:
                pool.shutdown(wait=True)
            if cache is not None:
                cache.close()
                self._n_cached = n_cached
        self.timings.add("landmarks (decode + detect)", time.perf_counter() - t0)
        return {"mediapipe": mp} if ib is None else {"mediapipe": mp, "ibug68": ib}

    def _open_crop_cache(self):
        """The raw crop file of the landmark pass, or None when the disk lacks room for it."""
        need = len(self.source) * self.size * self.size * 3
        try:
            if shutil.disk_usage(self.out).free < need + (1 << 30):
                logger.info("not enough free disk for the crop cache: the video is decoded twice")
                return None
            return open(self.out / CROP_CACHE, "wb")
        except OSError:
            return None

    def _write_png(self, k: int, crop: np.ndarray) -> None:
        atomic_write_bytes(self.out / "input" / f"{frame_name(k)}.png", _png_bytes(crop, self.cfg.tracker.png_compression), fsync=False)
        self._png_written.add(k)

    def _cached_crops(self):
        """The second pass's frames from the crop cache: (k, input index, crop)."""
        nbytes = self.size * self.size * 3
        with open(self.out / CROP_CACHE, "rb") as f:
            for k in range(self._n_cached):
                buf = bytearray(nbytes)
                if f.readinto(buf) != nbytes:
                    raise MICAError(f"the crop cache {self.out / CROP_CACHE} is short; delete it and run again")
                yield k, self.source.indices[k], np.frombuffer(buf, np.uint8).reshape(self.size, self.size, 3)

    def _crop_matrices(self, lm: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Per output frame the (2,3) input px -> crop px matrix."""
        idx = self.source.indices
        w, h = self.source.size
        if not self.cfg.tracker.crop:
            if (w, h) != (self.size, self.size):
                m = np.array([[self.size / w, 0, 0.5 * self.size / w - 0.5], [0, self.size / h, 0.5 * self.size / h - 0.5]])
                if w != h:
                    raise MICAError(f"tracker.crop False needs square frames, {self.source.path} has {w}x{h}; "
                                    "keep the crop on (tracker.crop True)")
            else:
                m = np.array([[1.0, 0, 0], [0, 1.0, 0]])
            return [m] * len(idx)
        from micalib.tracking.landmarks import MEDIAPIPE_IBUG68

        def face_points(i):
            if "ibug68" in lm and np.isfinite(lm["ibug68"][i]).any():
                return lm["ibug68"][i]
            if "mediapipe" in lm and np.isfinite(lm["mediapipe"][i][MEDIAPIPE_IBUG68]).sum() >= 2:
                return lm["mediapipe"][i][MEDIAPIPE_IBUG68]
            return None

        if self.cfg.tracker.follow_face:
            track, out, last = cropmod.CropTrack(self.cfg.tracker.bbox_scale), [], None
            for i in idx:
                box = track.update(face_points(i))
                last = box or last
                out.append(box)
            first = next((b for b in out if b is not None), None)
            if first is None:
                raise MICAError(f"no face in any frame of {self.source.path}; check the video or the landmarks")
            return [cropmod.crop_matrix(b or first, self.size) for b in out]
        box = self._box
        if box is None and self.landmarks_path is None and written_file(self.out / "bbox.pt"):
            box = cropmod.load_bbox_pt(self.out / "bbox.pt")  # the box the cached landmarks were detected in
        if box is not None:
            cropmod.save_bbox_pt(self.out / "bbox.pt", box)
            return [cropmod.crop_matrix(box, self.size)] * len(idx)
        for i in idx:
            p = face_points(i)
            if p is not None:
                box = cropmod.box_from_landmarks(p, self.cfg.tracker.bbox_scale)
                cropmod.save_bbox_pt(self.out / "bbox.pt", box)
                return [cropmod.crop_matrix(box, self.size)] * len(idx)
        raise MICAError(f"no face in any frame of {self.source.path}; check the video or the landmarks")

    def _identity(self, flame, matrices, lm) -> np.ndarray:
        dst = self.out / "identity.npy"
        if self.identity_path is not None:
            try:
                ident = np.load(self.identity_path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise MICAError(f"identity {self.identity_path} is not a readable .npy ({str(e)[:80]}); "
                                "pass MICA's identity.npy") from None
            if tuple(np.shape(ident)) not in ((300,), (1, 300)):
                raise MICAError(f"identity {self.identity_path} has shape {tuple(np.shape(ident))}, not MICA's (300,) "
                                "coefficients; pass MICA's identity.npy")
            ident = np.asarray(ident, np.float32).reshape(-1)
            if not np.isfinite(ident).all():
                raise MICAError(f"identity {self.identity_path} holds non-finite values (NaN/inf); "
                                "pass MICA's identity.npy")
        elif written_file(dst):
            ident = np.load(dst, allow_pickle=False).astype(np.float32).reshape(-1)
        else:
            ident = self._mica_identity()
        atomic_save_npy(dst, ident.astype(np.float32))
        return ident

    def _mica_identity(self) -> np.ndarray:
        """MICA on several frames with a face, averaged (``demo.py --fuse``)."""
        from configs.config import resolve_path
        from micalib.predictor import Predictor
        from models.detectors import create_detector
        from models.face_prep import detect_and_align

        t0 = time.perf_counter()
        cfg = self.cfg
        predictor = Predictor.from_config(cfg, device=self.device)
        detector = create_detector(cfg.detector.name, antelopev2_dir=resolve_path(cfg.detector.antelopev2_dir),
                                   det_size=tuple(cfg.detector.det_size), threshold=cfg.detector.threshold,
                                   mtcnn_max_side=cfg.detector.mtcnn_max_side)
        want = set(pick_keyframes(range(len(self.source)), int(self.cfg.tracker.identity_frames)))
        inputs = []
        for k, _i, rgb in self.source:
            if k in want:
                try:
                    inputs.append(detect_and_align(rgb, detector, source=f"frame {k}")[0].input112)
                except MICAError:
                    continue
            if k >= max(want):
                break
        if not inputs:
            raise MICAError(f"MICA found no face in the frames of {self.source.path}; pass --identity identity.npy")
        codes = predictor.predict_identity(np.stack(inputs))
        self.timings.add("identity (MICA)", time.perf_counter() - t0)
        logger.info(f"identity: MICA fused over {len(inputs)} frames")
        return codes.mean(0)

    def _build_flame(self):
        if self._flame is not None:
            return self._flame
        from models.flame import FLAME

        return FLAME.from_config(self.cfg)

    # -----------------------------------------------------------------------------------------
    def _asset_paths(self) -> dict[str, Path]:
        """The asset files of this run by config key (checked before any detection)."""
        from configs.config import resolve_path

        cfg = self.cfg
        paths = {}
        if self._flame is None:
            paths["model.flame_model_path"] = resolve_path(cfg.model.flame_model_path)
            paths["model.flame_lmk_embedding_path"] = resolve_path(cfg.model.flame_lmk_embedding_path)
        needs_mp = True
        if self.landmarks_path is not None:
            try:
                with np.load(self.landmarks_path, allow_pickle=False) as z:
                    needs_mp = "mediapipe" in z.files
            except (OSError, ValueError):
                needs_mp = True  # load_landmarks_npz reports the file
        if needs_mp:
            paths["tracker.mediapipe_embedding_path"] = resolve_path(cfg.tracker.mediapipe_embedding_path)
        return paths

    def run(self) -> Path:
        t_start = time.perf_counter()
        out = self.out
        assets = self._asset_paths()
        for key, path in assets.items():
            if not Path(path).is_file():
                raise MICAError(f"{path} not found (config key {key}); run install.sh --download or set {key}")
        if self.overwrite:
            clear_run(out)
        for sub in ("checkpoint", "mesh", "input"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        check_run_record(out, run_settings(self.cfg, self.source, self.size, self.landmarks_path, self.identity_path,
                                           self.photometric, {**assets, **self._optional_assets()}))
        try:
            return self._run(t_start)
        finally:
            (self.out / CROP_CACHE).unlink(missing_ok=True)
            if self._journal is not None:
                self._journal.close()

    def _optional_assets(self) -> dict[str, Path]:
        from configs.config import resolve_path

        return {k: resolve_path(self.cfg.tracker[k.split(".")[1]]) for k in ("tracker.l_eyelid_path", "tracker.r_eyelid_path")}

    def _run(self, t_start: float) -> Path:
        out = self.out
        lm = self._landmarks()
        cut = getattr(self.source, "truncated_at", None)
        if cut is not None:  # the video ended early: track the frames it has
            self.source.indices = self.source.indices[:cut]
        matrices = self._crop_matrices(lm)
        cropmod.write_crop_json(out / "crop.json", matrices, self.size, self.source.indices, fsync=False)
        flame = self._build_flame()
        ident = self._identity(flame, matrices, lm)
        from configs.config import resolve_path

        cfg = self.cfg
        emb_path = resolve_path(cfg.tracker.mediapipe_embedding_path)
        emb = load_mediapipe_embedding(emb_path) if "mediapipe" in lm else None
        lids = load_eyelids(resolve_path(cfg.tracker.l_eyelid_path), resolve_path(cfg.tracker.r_eyelid_path), flame.n_vertices)
        if lids is None:
            logger.warning("eyelid blendshapes not found: tracking without eyelids (install.sh --download)")
        model = TrackingFLAME(flame, ident, emb, lids, tuple(int(v) for v in cfg.tracker.iris_vertices), ibug68="ibug68" in lm)
        faces = model.faces
        # With a moving crop (follow_face) the camera is fitted in input pixels and each frame's K is
        # A_k K (A_k its crop matrix); with one box, directly in pixels of the crop.
        follow = bool(cfg.tracker.crop and cfg.tracker.follow_face)
        fit_size = (self.source.size[1], self.source.size[0]) if follow else (self.size, self.size)
        fit_m = [np.array([[1.0, 0, 0], [0, 1.0, 0]])] * len(matrices) if follow else matrices

        def crop_k(k_fit: np.ndarray, k: int) -> np.ndarray:
            return np.vstack([matrices[k], [0.0, 0.0, 1.0]]) @ k_fit if follow else k_fit

        fitter = LandmarkFitter(model, settings_from_config(cfg), fit_size)
        # observations per output frame, in crop pixels
        obs_all, valid_all = [], []
        for k, i in enumerate(self.source.indices):
            mp = cropmod.transform_points(lm["mediapipe"][i], fit_m[k]) if "mediapipe" in lm else None
            ib = cropmod.transform_points(lm["ibug68"][i], fit_m[k]) if "ibug68" in lm else None
            o, v = observations(model, mp, ib)
            obs_all.append(o)
            valid_all.append(v & (fitter.set_w > 0))
        has_face = [int(v.sum()) >= 6 for v in valid_all]
        if not any(has_face):
            raise MICAError(f"no face in any frame of {self.source.path}; check the video or the landmarks")
        n = len(self.source)
        done = finished_frames(out, n)
        # ---- intrinsics: from a finished frame, else keyframes
        t0 = time.perf_counter()
        first_done = next((k for k in range(n) if done[k]), None)
        if first_done is not None:
            kk = np.asarray(read_frame(out / "checkpoint" / f"{frame_name(first_done)}.frame")["opencv"]["K"]).reshape(3, 3)
            if follow:
                kk = np.linalg.inv(np.vstack([matrices[first_done], [0.0, 0.0, 1.0]])) @ kk
            fitter.intr = Intrinsics(float(kk[0, 0]), float(kk[0, 2]), float(kk[1, 2]))
            logger.info(f"camera of the finished frames: focal {kk[0, 0]:.1f} crop px (the estimate: {RUN_RECORD} 'camera')")
            if fitter.s.refine_identity:  # the refined identity of the finished frames
                done_shape = read_frame(out / "checkpoint" / f"{frame_name(first_done)}.frame")["flame"]["shape"]
                refined = np.asarray(done_shape, np.float32).reshape(-1)
        else:
            self._calibrate(fitter, obs_all, valid_all, has_face, 1.0 if follow else float(matrices[0][0, 0]))
            if fitter.s.refine_identity:
                refined = np.zeros(300, np.float32)
                refined[: ident.size] = ident
                refined[: fitter.identity_change.size] += fitter.identity_change.astype(np.float32)
                logger.info(f"identity refined on the keyframes: moved {np.linalg.norm(fitter.identity_change):.3f} "
                            "from MICA's (identity.npy keeps MICA's; .frame 'shape' holds the refined one)")
        if fitter.s.refine_identity:
            ident = refined
            model = TrackingFLAME(flame, ident, emb, lids, tuple(int(v) for v in cfg.tracker.iris_vertices), ibug68="ibug68" in lm)
            fitter.model, fitter._basis = model, None
        self.timings.add("keyframes (intrinsics)", time.perf_counter() - t0)
        if not written_file(out / "canonical.obj"):
            atomic_write_bytes(out / "canonical.obj", obj_text(model.canonical_vertices(), faces), fsync=False)
        fps_out = self.source.fps or self.source.input_fps or 25.0
        rows = {k: r for k, r in old_rows(out).items() if k < n}
        for k in range(n):  # finished frames whose row a killed run lost: rebuilt without the fit's RMS
            if done[k] and k not in rows:
                rows[k] = _row(k, self.source.indices[k], fps_out, has_face[k], valid_all[k], {}, not has_face[k], model)
        self._journal = RowJournal(out)
        pool = ThreadPoolExecutor(max(1, int(cfg.tracker.workers)), thread_name_prefix="track-write")
        # overlays are drawn by two threads (frames are independent) and written in order here
        vpool = ThreadPoolExecutor(2, thread_name_prefix="track-video") if self.video else None
        writer = None
        pending: list[Future] = []
        vid_pending: list[Future] = []
        if self.video and not (all(done) and written_file(out / "video.mp4")):
            from micalib.tracking.overlay import VideoWriter

            fps = self.source.fps or self.source.input_fps or 25.0
            writer = VideoWriter(out / "video.mp4", fps, (3 * self.size, self.size))
        photo = None
        if self.photometric:
            from micalib.tracking.photo_stage import PhotometricStage

            photo = PhotometricStage(model, self.size, self.device, iters=int(cfg.tracker.photometric_iters))
        prev: FrameState | None = None
        prev_k: int | None = None  # output frame of ``prev``
        prev_done_k: int | None = None
        kk = fitter.intr.k
        # a tracked (face) frame after k exists: faceless frames before it are interpolated
        face_after = np.zeros(n + 1, bool)
        for j in range(n - 1, -1, -1):
            face_after[j] = face_after[j + 1] or has_face[j]
        timing = {"fit": 0.0, "write": 0.0, "crop": 0.0}
        held: list[tuple[int, int, np.ndarray]] = []  # faceless frames waiting for the next tracked one

        def row_of(k: int, i: int, rms: dict, interpolated: bool) -> dict:
            return _row(k, i, fps_out, has_face[k], valid_all[k], rms, interpolated, model)

        def emit(k: int, i: int, crop: np.ndarray, st: FrameState, row: dict | None) -> None:
            """Submit frame k's files and overlay (in frame order)."""
            t0 = time.perf_counter()
            if row is not None:
                rows[k] = row
            # the full mesh is posed once, by a writer thread (torch releases the GIL)
            verts = pool.submit(lambda s=st: model.vertices(s.exp, s.pose, s.eyelids)[0])
            if not done[k]:
                data = frame_dict(st.exp, st.pose, st.eyelids, ident, st.r, st.t, crop_k(kk, k), (self.size, self.size), k, k)
                pending.append(pool.submit(self._write_frame, out, k, data, verts, faces, crop, row))
            if writer is not None:
                land = {}
                if "mediapipe" in lm:
                    land["mediapipe"] = cropmod.transform_points(lm["mediapipe"][i], matrices[k])
                if "ibug68" in lm:
                    land["ibug68"] = cropmod.transform_points(lm["ibug68"][i], matrices[k])
                vid_pending.append(vpool.submit(self._video_frame, crop, land, verts, faces, st, crop_k(kk, k)))
            while len(pending) > 8:
                pending.pop(0).result()
            while len(vid_pending) > 4 or (vid_pending and vid_pending[0].done()):
                writer.write(vid_pending.pop(0).result())
            timing["write"] += time.perf_counter() - t0

        def flush_held(st: FrameState | None, k_next: int | None) -> None:
            """Faceless frames between ``prev`` and frame ``k_next`` (state ``st``): interpolated
            when both exist, else held at ``prev``."""
            for kh, ih, ch in held:
                if st is not None and prev is not None and prev_k is not None and k_next is not None:
                    sh = interpolate_state(prev, st, (kh - prev_k) / (k_next - prev_k))
                else:  # before the first tracked frame: held at it; else at the last one
                    sh = (prev if prev is not None else st).copy()
                emit(kh, ih, ch, sh, row_of(kh, ih, {}, True))
            held.clear()

        try:
            skipped = 0
            cached = self._n_cached > 0
            frames = prefetch(self._cached_crops()) if cached else prefetch(self.source)
            for k, i, rgb in tqdm(frames, total=n, desc=f"tracking {self.source.name}"):
                if done[k]:
                    skipped += 1
                    if writer is None:  # nothing to redo for a finished frame
                        prev_done_k, prev_k, prev = k, k, None
                        continue
                t0 = time.perf_counter()
                crop = rgb if cached else cropmod.warp(rgb, matrices[k], (self.size, self.size))
                timing["crop"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                if done[k]:
                    st = _state_from_frame(read_frame(out / "checkpoint" / f"{frame_name(k)}.frame"))
                    flush_held(st, k)
                    prev, prev_k, prev_done_k = st, k, None
                    timing["fit"] += time.perf_counter() - t0
                    emit(k, i, crop, st, None)
                    continue
                if prev is None and prev_done_k is not None:
                    prev = _state_from_frame(read_frame(out / "checkpoint" / f"{frame_name(prev_done_k)}.frame"))
                if not has_face[k]:
                    if face_after[k + 1] and len(held) < MAX_HELD:
                        held.append((k, i, crop))  # interpolated once the next tracked frame is fitted
                        timing["fit"] += time.perf_counter() - t0
                        continue
                    if prev is None:  # too many frames without a face first: held at the first frame with one
                        j = has_face.index(True)
                        prev = fitter.fit_frame(obs_all[j], valid_all[j], None).state
                    flush_held(None, None)
                    st = prev.copy()
                    timing["fit"] += time.perf_counter() - t0
                    emit(k, i, crop, st, row_of(k, i, {}, True))
                    continue
                res = fitter.fit_frame(obs_all[k], valid_all[k], prev, prev)
                st, rms = res.state, res.rms
                if photo is not None:
                    kc = crop_k(kk, k)
                    st = photo.refine(crop, st, Intrinsics(kc[0, 0], kc[0, 2], kc[1, 2]),
                                      cropmod.transform_points(obs_all[k], matrices[k]) if follow else obs_all[k],
                                      valid_all[k], res.contour_bin)
                if follow:  # report pixels of the crop
                    rms = {key: val * float(matrices[k][0, 0]) for key, val in rms.items()}
                timing["fit"] += time.perf_counter() - t0
                flush_held(st, k)
                emit(k, i, crop, st, row_of(k, i, rms, False))
                prev, prev_k = st, k
            flush_held(None, None)
            for f in pending:
                f.result()
            for f in vid_pending:
                writer.write(f.result())
            vid_pending = []
            if writer is not None:
                writer.close()
                writer = None
        finally:
            pool.shutdown(wait=True)
            if vpool is not None:
                vpool.shutdown(wait=True)
            if writer is not None:
                writer.abort()
        self.timings.add("crop", timing["crop"])
        self.timings.add("fit", timing["fit"])
        self.timings.add("submit writes (main thread)", timing["write"])
        self._write_csv(rows)
        self._journal.close()
        self._journal = None
        (out / ROWS_JOURNAL).unlink(missing_ok=True)  # its rows are in tracking.csv now
        self.timings.add("total", time.perf_counter() - t_start)
        self.skipped = skipped
        logger.info(f"tracked {n} frames into {out} ({skipped} finished before)")
        return out

    # -----------------------------------------------------------------------------------------
    def _write_frame(self, out: Path, k: int, data: dict, verts: Future, faces: np.ndarray, crop: np.ndarray,
                     row: dict | None = None) -> None:
        name = frame_name(k)
        verts = verts.result()
        if k not in self._png_written:
            atomic_write_bytes(out / "input" / f"{name}.png", _png_bytes(crop, self.cfg.tracker.png_compression), fsync=False)
        atomic_write_bytes(out / "mesh" / f"{name}.ply", _ply_metres(verts, faces), fsync=False)
        save_frame(out / "checkpoint" / f"{name}.frame", data)  # marks the frame finished
        if row is not None and self._journal is not None:
            self._journal.add(row)  # its csv row survives a kill

    @staticmethod
    def _video_frame(crop, land, verts: Future, faces, st: FrameState, kk: np.ndarray) -> np.ndarray:
        from micalib.tracking.overlay import compose_overlay

        cam = verts.result().astype(np.float64) @ st.r.T + st.t
        uvw = cam @ kk.T
        screen = np.concatenate([uvw[:, :2] / uvw[:, 2:3], cam[:, 2:3]], 1).astype(np.float32)
        return compose_overlay(crop, land, screen, faces)

    def _calibrate(self, fitter, obs_all, valid_all, has_face, scale: float) -> None:
        """The intrinsics from keyframes chosen for pose diversity, with the focal prior; the
        estimate goes to the log and the run record (``scale``: fitted px per source px)."""
        from micalib.tracking.focal_prior import face_size, make_prior
        from micalib.tracking.keyframes import calibrate, choose_keyframes
        from micalib.tracking.resume import record_camera

        keys = choose_keyframes(fitter, obs_all, valid_all, [k for k in range(len(has_face)) if has_face[k]],
                                fitter.s.keyframes)
        face = face_size([obs_all[k][valid_all[k]] for k in keys])
        prior = make_prior(fitter.s, self.source.size, scale, None if face is None else face / scale)
        _states, est = calibrate(fitter, [(obs_all[k], valid_all[k]) for k in keys], prior, keys)
        logger.info(f"focal prior: {prior.note}")
        logger.info(est.describe(scale, max(self.source.size)) + f"; principal point ({fitter.intr.cx:.1f}, "
                    f"{fitter.intr.cy:.1f}) crop px; {len(keys)} keyframes {keys}")
        record_camera(self.out, est.in_source_px(scale))
        self.camera = est

    def _write_csv(self, rows: dict[int, dict]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for k in sorted(rows):
            w.writerow(rows[k])
        atomic_write_text(self.out / "tracking.csv", buf.getvalue(), fsync=False)


def _ply_metres(verts: np.ndarray, faces: np.ndarray) -> bytes:
    """The project's binary PLY, in metres like the tracker's FLAME and ``opencv`` block."""
    return ply_bytes(verts, faces).replace(b"comment MICA FLAME mesh, millimetres", b"comment MICA FLAME mesh, metres", 1)


def _row(k: int, i: int, fps_out: float, face: bool, valid: np.ndarray, rms: dict, interpolated: bool,
         model: TrackingFLAME) -> dict:
    """Frame k's tracking.csv row."""
    return {"frame": frame_name(k), "input_frame": int(i), "time_s": round(k / fps_out, 6),
            "face_found": int(face), "landmarks_used": int(valid.sum()),
            "rms_mediapipe_px": _fmt(rms.get("mediapipe")), "rms_iris_px": _fmt(rms.get("iris")),
            "rms_ibug68_px": _fmt(_combine(rms, valid, model)), "interpolated": int(interpolated)}


def _fmt(x: float | None) -> str:
    return "" if x is None or not np.isfinite(x) else f"{x:.3f}"


def _combine(rms: dict[str, float], valid: np.ndarray, model: TrackingFLAME) -> float | None:
    """RMS over the 68 points (static and contour together)."""
    parts = [(rms.get(k), int(valid[model.slices[k]].sum())) for k in ("static", "contour") if k in rms]
    parts = [(r, c) for r, c in parts if r is not None and np.isfinite(r) and c]
    if not parts:
        return None
    return float(np.sqrt(sum(r * r * c for r, c in parts) / sum(c for _, c in parts)))
