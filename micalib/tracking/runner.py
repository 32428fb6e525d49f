"""track.py's pipeline: frames -> landmarks -> crop -> identity -> camera intrinsics on keyframes ->
per-frame fit -> the original tracker's files (see ``micalib/tracking/outputs.py``).

``TrackRunner.run`` goes through named stages, as the original tracker's ``run()``:
``frames_and_landmarks`` -> ``fit_inputs`` -> ``intrinsics`` -> ``track_frames`` (``_FrameLoop``,
one frame after the other; the files by ``micalib.tracking.writer.FrameWriter``) -> ``write_outputs``.
Every path is ``micalib.tracking.layout.TrackLayout``'s; every option ``TrackOptions``'
(``micalib.tracking.options``), built from the config by ``TrackRunner.from_config`` only.

Two passes over the frames: the first detects the landmarks (skipped with ``--landmarks`` or a
cached ``OUT/NAME/landmarks.npz``), the second fits and writes. With one crop box (the default) the
video is decoded once: the landmark pass crops each frame with the box it detects in (kept as
``bbox.pt``), writes ``input/NNNNN.png`` from a thread and appends the raw crop to
``OUT/NAME/.crops.raw``, which the second pass reads back and the run deletes (without room on the
disk, a face on the first frame, or with ``follow_face``, the second pass decodes again). In the
second pass the main thread fits; the full mesh is posed once per frame and ``.ply`` / ``.frame``
are written by a thread pool, overlays drawn by two threads and encoded in order by the main
thread. Frames without a face are interpolated between the tracked frames around them (held before
the first / after the last) and flagged. Finished frames (``resume.finished_frames``) are
skipped on a re-run with the same options (``micalib/tracking/resume.py``: another run's options
are refused); their exact solver state (``micalib/tracking/solver_state.py``) continues the run, so
a re-run after a kill writes what an uninterrupted run writes. A video that ends early is tracked
up to its end (``frames.VideoFrames.truncated_at``).
"""
from __future__ import annotations

import contextlib
import csv
import io
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from loguru import logger
from tqdm import tqdm

from configs.config import resolve_path
from micalib.tracking import crop as cropmod
from micalib.tracking.crop import transform_points
from micalib.tracking.depth import DepthMesh
from micalib.tracking.fit_ahead import FitAhead, fit_ahead_possible
from micalib.tracking.fitting import FrameState, Intrinsics, LandmarkFitter, interpolate_state, pick_keyframes
from micalib.tracking.frames import open_frames, prefetch
from micalib.tracking.identity import mica_identity
from micalib.tracking.layout import TrackLayout
from micalib.tracking.limits import check_track_options, check_tracker_config
from micalib.tracking.model import TrackingFLAME, load_eyelids, load_mediapipe_embedding, observations
from micalib.tracking.options import TrackOptions
from micalib.tracking.outputs import frame_dict, frame_name
from micalib.tracking.resume import (
    RowJournal,
    check_run_record,
    finished_frames,
    old_rows,
    record_camera,
    run_settings,
    write_run_record,
)
from micalib.tracking.solver_state import FrameRecord, basis_pose_of, load_appearance, restore_basis
from micalib.tracking.writer import FrameWriter
from utils.errors import MICAError
from utils.identity import read_identity
from utils.io import atomic_save_npy, atomic_write_bytes, atomic_write_text, remove_stale_temps, written_file
from utils.mesh import obj_text
from utils.png import encode_png
from utils.timing import StageTimer

# Frames before the first face kept in memory (bytes) to be cropped once the face is found.
EARLY_BYTES = 512 << 20
# Faceless frames kept in memory while waiting for the next tracked frame (beyond: held, not interpolated).
MAX_HELD = 250
CSV_FIELDS = ["frame", "input_frame", "time_s", "face_found", "landmarks_used", "rms_mediapipe_px",
              "rms_iris_px", "rms_ibug68_px", "interpolated"]



def check_assets(paths: dict[str, Path]) -> None:
    """Refuse a missing asset file in one line naming its config key."""
    for key, path in paths.items():
        if not Path(path).is_file():
            raise MICAError(f"{path} not found (config key {key}); run install.sh --download or set {key}")


@dataclass
class FitInputs:
    """What the per-frame fit works from (``TrackRunner.fit_inputs``; the intrinsics stage sets the
    camera, may refine the identity and fills ``done``).

    Attributes:
        lm: landmarks per input frame; matrices: per output frame the input px -> crop px matrix.
        ident: the identity coefficients; model / fitter: the tracking FLAME and its fitter.
        obs, valid: per output frame the targets (fit pixels) and which are used; has_face: >= 6 used.
        follow: moving crop (fit in input pixels, each frame's K is A_k K).
        done: per output frame its solver record when finished by an earlier run, else None.
    """

    lm: dict[str, np.ndarray]
    matrices: list[np.ndarray]
    ident: np.ndarray
    emb: object
    lids: np.ndarray | None
    model: TrackingFLAME
    fitter: LandmarkFitter
    obs: list[np.ndarray]
    valid: list[np.ndarray]
    has_face: list[bool]
    follow: bool
    done: list[FrameRecord | None] = field(default_factory=list)

    @property
    def face_frames(self) -> list[int]:
        """The output frames with a face (ascending; ``fit_inputs`` made sure there is one)."""
        return [k for k, f in enumerate(self.has_face) if f]

    def crop_k(self, k_fit: np.ndarray, k: int) -> np.ndarray:
        """Frame ``k``'s camera matrix in pixels of its crop."""
        return np.vstack([self.matrices[k], [0.0, 0.0, 1.0]]) @ k_fit if self.follow else k_fit


class TrackRunner:
    """Tracks one video / frame folder into ``out_root/NAME`` (see the module docstring).

    Args:
        options: what the run does (``TrackOptions``).
        input_path: video file or folder of frames.
        out_root: output folder (NAME is appended).
        flame: the FLAME layer (``models.flame.FLAME``).
        load_mica: () -> (predictor, detector), called only when MICA's identity is computed from the
            frames (no ``identity_path`` and none cached), so a run with ``--identity`` loads no weights
            (unlike the demo runner, which gets them built).
        identity_path: MICA ``identity.npy``; None = computed with MICA from the frames.
        landmarks_path: the user's landmark npz (replaces detection).
        source: an opened ``FrameSource`` (else ``open_frames(input_path, options.fps, options.begin_frame)``).
        flame_files: the files ``flame`` was read from by config key (recorded in the run record).
        masks_path: FLAME_masks.pkl (``model.flame_masks_path``): the regions ``depth/`` leaves out;
            None or absent: none left out (one warning).
    """

    def __init__(self, options: TrackOptions, input_path, out_root, flame, *,
                 load_mica: Callable[[], tuple] | None = None, identity_path=None, landmarks_path=None,
                 source=None, flame_files: dict[str, Path] | None = None, masks_path=None) -> None:
        self.options = options
        self.source = source if source is not None else open_frames(input_path, options.fps, options.begin_frame)
        self.layout = TrackLayout(out_root, self.source.name)
        self.flame = flame
        self.load_mica = load_mica
        self.identity_path = identity_path
        self.landmarks_path = landmarks_path
        self.flame_files = dict(flame_files or {})
        self.masks_path = None if masks_path is None else Path(masks_path)
        self.size = int(options.image_size)
        self.timings = StageTimer()
        self.skipped = 0
        self._box = None  # the one crop box of this run's landmark pass
        self._n_cached = 0  # frames in the crop cache
        self._png_written: set[int] = set()
        self._journal: RowJournal | None = None
        self.camera = None  # the keyframes' CameraEstimate (focal_prior.py), None when resumed

    @classmethod
    def from_config(cls, cfg, input_path, out_root, *, identity_path=None, landmarks_path=None, source=None,
                    flame=None, **run) -> TrackRunner:
        """The runner of track.py: options from the config's ``tracker`` section and ``run`` (the
        ``TrackOptions`` that are not config keys, e.g. ``image_size``, ``fps``, ``device``), the
        FLAME layer from the config (unless given) and MICA + detector loaded only when needed.
        The only reader of ``cfg`` in ``micalib/tracking/``; the ranges of ``micalib/tracking/limits.py``
        are checked here, before anything is loaded."""
        check_tracker_config(cfg.tracker)
        check_track_options(run.get("fps"), run.get("image_size", 512))
        options = TrackOptions.from_section(cfg.tracker, **run)
        if source is None:
            source = open_frames(input_path, options.fps, options.begin_frame)
        flame_files = {}
        if flame is None:
            from models.flame import FLAME

            flame_files = {"model.flame_model_path": resolve_path(cfg.model.flame_model_path),
                           "model.flame_lmk_embedding_path": resolve_path(cfg.model.flame_lmk_embedding_path)}
            check_assets(flame_files)
            flame = FLAME.from_config(cfg)

        from micalib.predictor import mica_loader

        return cls(options, input_path, out_root, flame, load_mica=mica_loader(cfg, options.device),
                   identity_path=identity_path, landmarks_path=landmarks_path, source=source,
                   flame_files=flame_files, masks_path=resolve_path(cfg.model.flame_masks_path))

    # ----------------------------------------------------------------------------------- run
    def run(self, finish: Callable[[Path], None] | None = None) -> Path:
        """Track the input; returns ``OUT/NAME``. ``finish(OUT/NAME)`` runs last, still holding the
        output's lock (track.py writes the clip's ``.glb`` and viewer page there)."""
        t_start = time.perf_counter()
        self.layout.check_input(self.source.path)
        check_assets(self._asset_paths())
        with self.layout.lock():
            settings = self._start()
            try:
                lm, matrices = self.frames_and_landmarks()
                fit = self.fit_inputs(lm, matrices)
                write_run_record(self.layout, settings)  # the inputs are accepted
                self.intrinsics(fit)
                rows = self.track_frames(fit)
                self._trim_to_decoded(matrices)
                self.write_outputs(rows)
                if finish is not None:
                    finish(self.layout.root)
            finally:
                self.layout.crop_cache.unlink(missing_ok=True)
                if self._journal is not None:
                    self._journal.close()
        self.timings.add("total", time.perf_counter() - t_start)
        logger.info(f"tracked {len(self.source)} frames into {self.layout.root} ({self.skipped} finished before)")
        return self.layout.root

    def _start(self) -> dict:
        """Before anything is tracked (the lock held): ``--overwrite``, folders, the run record
        compared (returns this run's options to record)."""
        lay = self.layout
        if self.options.overwrite:
            lay.clear()
        lay.make_dirs()
        remove_stale_temps(lay.root)
        settings = run_settings(self.options, self.source, self.landmarks_path, self.identity_path,
                                {**self.flame_files, **self._asset_paths(), **self._optional_assets()})
        if not check_run_record(lay, settings):
            lay.clear_unrecorded()
        return settings

    def _asset_paths(self) -> dict[str, Path]:
        """The asset files of this run by config key (checked before any detection)."""
        paths = {}
        needs_mp = True
        if self.landmarks_path is not None:
            try:
                with np.load(self.landmarks_path, allow_pickle=False) as z:
                    needs_mp = "mediapipe" in z.files
            except (OSError, ValueError):
                needs_mp = True  # load_landmarks_npz reports the file
        if needs_mp:
            paths["tracker.mediapipe_embedding_path"] = resolve_path(self.options.mediapipe_embedding_path)
        return paths

    def _optional_assets(self) -> dict[str, Path]:
        return {"tracker.l_eyelid_path": resolve_path(self.options.l_eyelid_path),
                "tracker.r_eyelid_path": resolve_path(self.options.r_eyelid_path),
                **({} if self.masks_path is None else {"model.flame_masks_path": self.masks_path})}

    def _flame_masks(self) -> dict[str, np.ndarray] | None:
        """FLAME_masks.pkl for the depth (boundary and ears left out), or None (warned)."""
        from models.flame_io import load_flame_masks

        if self.masks_path is None or not self.masks_path.is_file():
            logger.warning(f"{self.masks_path} not found (model.flame_masks_path): depth/ keeps the neck boundary "
                           "and the ears")
            return None
        return load_flame_masks(self.masks_path, n_vertices=self.flame.n_vertices)

    # ------------------------------------------------------------- stage 1: frames and landmarks
    def frames_and_landmarks(self) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """Landmarks per input frame (given, cached or detected), the frames a short video has, and
        per output frame its crop matrix (``crop.json``)."""
        lm = self._landmarks()
        self.source.keep_decoded()  # a video that ended early: track the frames it has
        matrices = self._crop_matrices(lm)
        cropmod.write_crop_json(self.layout.crop_json, matrices, self.size, self.source.indices, fsync=False)
        return lm, matrices

    def _trim_to_decoded(self, matrices: list[np.ndarray]) -> None:
        """A video that ended early in the second pass (its landmarks came from a file or a cache,
        so the first pass did not decode it): ``crop.json`` lists the frames tracked, not more."""
        if self.source.keep_decoded():
            cropmod.write_crop_json(self.layout.crop_json, matrices[:len(self.source)], self.size, self.source.indices,
                                    fsync=False)

    # ------------------------------------------------------------- landmark pass
    def _landmarks(self) -> dict[str, np.ndarray]:
        from micalib.tracking.landmarks import drop_absurd_rows, load_landmarks_npz, save_landmarks_npz

        n_in = self.source.n_input_frames
        cache = self.layout.landmarks
        if self.landmarks_path is not None:
            lm, where = load_landmarks_npz(self.landmarks_path, n_in), f"landmarks file {self.landmarks_path}"
        elif written_file(cache):
            logger.info(f"landmarks from {cache}")
            lm, where = load_landmarks_npz(cache, n_in, cached=True), f"cached landmarks file {cache}"
        else:
            lm, where = self._detect(), "detected landmarks"
            save_landmarks_npz(cache, **lm)
        drop_absurd_rows(lm, self.source.size, where)
        return lm

    def _detect(self) -> dict[str, np.ndarray]:
        """MediaPipe on the crop of each output frame (the box from the first frame with a face)."""
        from micalib.tracking.landmarks import (
            MEDIAPIPE_IBUG68,
            FaceSearch,
            MediaPipeLandmarker,
            face_box_from_points,
        )

        t0 = time.perf_counter()
        mp = np.full((self.source.n_input_frames, 478, 2), np.nan, np.float32)
        ib_det, ib = self._ibug68()
        det = MediaPipeLandmarker(video_mode=True)
        search = FaceSearch(int(self.options.search_every))
        early: list[np.ndarray] = []  # frames before the first face, cropped once the box is known
        faceless: int | None = None  # faceless frames since the first face
        box = None
        track = cropmod.CropTrack(self.options.bbox_scale) if self.options.follow_face else None
        last = None  # input frame of the last output frame run through MediaPipe (--fps / --begin-frame skip some)
        # One fixed box (the default): this pass's crops are the final ones, so they are kept in a
        # raw file for the second pass (no second decode) and their PNGs are written here.
        cache = self._open_crop_cache() if (self.options.crop and not self.options.follow_face and ib_det is None) else None
        pool = ThreadPoolExecutor(1, thread_name_prefix="track-png") if cache is not None else None
        pending: list[Future] = []
        n_cached = 0
        try:
            def keep(k, crop):  # the crop cache and input/NNNNN.png of frame k
                return self._keep(cache, pool, pending, k, crop)

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
                            self.layout.crop_cache.unlink(missing_ok=True)
                        continue
                    box = cropmod.box_from_landmarks(pts[MEDIAPIPE_IBUG68], self.options.bbox_scale)
                    det.reset()
                    faceless = 0
                    if track is None and ib_det is None:  # the crop box, with or without the cache
                        self._box = box
                    for ke, rgb_e in enumerate(early):  # frames 0..k-1 (no face): their crops now
                        n_cached = keep(ke, cropmod.warp(rgb_e, cropmod.crop_matrix(box, self.size), (self.size,) * 2))
                    early = []
                if track is not None:  # follows the face of the previous output frame
                    box = track.update(mp[last][MEDIAPIPE_IBUG68] if last is not None else None) or box
                m = cropmod.crop_matrix(box, self.size)
                crop = cropmod.warp(rgb, m, (self.size, self.size))
                mp[i] = transform_points(det.detect(crop), cropmod.invert_matrix(m)).astype(np.float32)
                last = i
                if not np.isfinite(mp[i]).all():  # the face left the crop, or shrank: search now and then
                    mp[i] = search.find(rgb) if search.wanted(faceless) else mp[i]
                    faceless += 1
                if cache is not None:
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

    def _ibug68(self):
        """The 68-point detector and its (T, 68, 2) array, or (None, None) without the model."""
        from micalib.tracking.landmarks import Ibug68Detector, find_ibug68_model

        ib_path = find_ibug68_model(str(self.options.ibug68_model) or None)
        if ib_path is None:
            return None, None
        logger.info(f"68-point landmarks from {ib_path}")
        return Ibug68Detector(ib_path), np.full((self.source.n_input_frames, 68, 2), np.nan, np.float32)

    def _keep(self, cache, pool, pending: list[Future], k: int, crop: np.ndarray) -> int:
        """Frame k's crop into the crop cache and its input/NNNNN.png to the writer; returns k + 1."""
        cache.write(crop.tobytes())
        pending.append(pool.submit(self._write_png, k, crop))
        while len(pending) > 4:
            pending.pop(0).result()
        return k + 1

    def _open_crop_cache(self):
        """The raw crop file of the landmark pass, or None when the disk lacks room for it."""
        need = len(self.source) * self.size * self.size * 3
        try:
            if shutil.disk_usage(self.layout.root).free < need + (1 << 30):
                logger.info("not enough free disk for the crop cache: the video is decoded twice")
                return None
            return open(self.layout.crop_cache, "wb")
        except OSError:
            return None

    def _write_png(self, k: int, crop: np.ndarray) -> None:
        atomic_write_bytes(self.layout.png(k), encode_png(crop, self.options.png_compression), fsync=False)
        self._png_written.add(k)

    def _cached_crops(self):
        """The second pass's frames from the crop cache: (k, input index, crop)."""
        nbytes = self.size * self.size * 3
        with open(self.layout.crop_cache, "rb") as f:
            for k in range(self._n_cached):
                buf = bytearray(nbytes)
                if f.readinto(buf) != nbytes:
                    raise MICAError(f"the crop cache {self.layout.crop_cache} is short; delete it and run again")
                yield k, self.source.indices[k], np.frombuffer(buf, np.uint8).reshape(self.size, self.size, 3)

    def _crop_matrices(self, lm: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Per output frame the (2,3) input px -> crop px matrix."""
        idx = self.source.indices
        w, h = self.source.size
        if not self.options.crop:
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

        if self.options.follow_face:
            track, out, last = cropmod.CropTrack(self.options.bbox_scale), [], None
            for i in idx:
                box = track.update(face_points(i))
                last = box or last
                out.append(box)
            first = next((b for b in out if b is not None), None)
            if first is None:
                raise MICAError(f"no face in any frame of {self.source.path}; check the video or the landmarks")
            return [cropmod.crop_matrix(b or first, self.size) for b in out]
        box = self._box
        if box is None and self.landmarks_path is None and written_file(self.layout.bbox):
            box = cropmod.load_bbox_pt(self.layout.bbox)  # the box the cached landmarks were detected in
        if box is not None:
            cropmod.save_bbox_pt(self.layout.bbox, box)
            return [cropmod.crop_matrix(box, self.size)] * len(idx)
        for i in idx:
            p = face_points(i)
            if p is not None:
                box = cropmod.box_from_landmarks(p, self.options.bbox_scale)
                cropmod.save_bbox_pt(self.layout.bbox, box)
                return [cropmod.crop_matrix(box, self.size)] * len(idx)
        raise MICAError(f"no face in any frame of {self.source.path}; check the video or the landmarks")

    def _identity(self) -> np.ndarray:
        """MICA's identity: ``--identity``, else the one cached in ``identity.npy``, else MICA on the frames."""
        dst = self.layout.identity
        if self.identity_path is not None:
            ident = read_identity(self.identity_path, "pass MICA's identity.npy")
        elif written_file(dst):
            ident = read_identity(dst, "delete it to compute it again (or pass --overwrite)")
        else:
            ident = self._mica_identity().astype(np.float32)  # as a re-run reads it back
        atomic_save_npy(dst, ident.astype(np.float32))
        return ident

    def _mica_identity(self) -> np.ndarray:
        """MICA on several frames with a face, averaged (``demo.py --fuse``)."""
        t0 = time.perf_counter()
        if self.load_mica is None:
            raise MICAError(f"no MICA model to compute the identity of {self.source.path}; pass --identity identity.npy")
        want = set(pick_keyframes(range(len(self.source)), int(self.options.identity_frames)))

        def frames():
            for k, _i, rgb in self.source:
                if k in want:
                    yield k, rgb
                if k >= max(want):
                    break

        codes = mica_identity(*self.load_mica(), frames(), str(self.source.path))
        self.timings.add("identity (MICA)", time.perf_counter() - t0)
        return codes

    # ------------------------------------------------------------------ stage 2: fit inputs
    def fit_inputs(self, lm: dict[str, np.ndarray], matrices: list[np.ndarray]) -> FitInputs:
        """The identity, the tracking FLAME, its fitter and every frame's landmark targets.

        Raises:
            MICAError: no frame has a face (6 usable landmarks).
        """
        o = self.options
        ident = self._identity()
        emb = load_mediapipe_embedding(resolve_path(o.mediapipe_embedding_path)) if "mediapipe" in lm else None
        lids = load_eyelids(resolve_path(o.l_eyelid_path), resolve_path(o.r_eyelid_path), self.flame.n_vertices)
        if lids is None:
            logger.warning("eyelid blendshapes not found: tracking without eyelids (install.sh --download)")
        model = TrackingFLAME(self.flame, ident, emb, lids, o.iris_vertices, ibug68="ibug68" in lm)
        # With a moving crop (follow_face) the camera is fitted in input pixels and each frame's K is
        # A_k K (A_k its crop matrix); with one box, directly in pixels of the crop.
        follow = o.follow
        fit_size = (self.source.size[1], self.source.size[0]) if follow else (self.size, self.size)
        fit_m = [np.array([[1.0, 0, 0], [0, 1.0, 0]])] * len(matrices) if follow else matrices
        fitter = LandmarkFitter(model, o.fit, fit_size)
        obs_all, valid_all = [], []  # observations per output frame, in fit pixels
        for k, i in enumerate(self.source.indices):
            mp = cropmod.transform_points(lm["mediapipe"][i], fit_m[k]) if "mediapipe" in lm else None
            ib = cropmod.transform_points(lm["ibug68"][i], fit_m[k]) if "ibug68" in lm else None
            obs, valid = observations(model, mp, ib)
            obs_all.append(obs)
            valid_all.append(valid & (fitter.set_w > 0))
        has_face = [int(v.sum()) >= 6 for v in valid_all]
        if not any(has_face):
            raise MICAError(f"no face in any frame of {self.source.path}; check the video or the landmarks")
        return FitInputs(lm, matrices, ident, emb, lids, model, fitter, obs_all, valid_all, has_face, follow)

    # ------------------------------------------------------------------ stage 3: intrinsics
    def intrinsics(self, fit: FitInputs) -> None:
        """The camera intrinsics (with the identity when ``fit.refine_identity``), fitted on
        keyframes from the landmarks alone, also on a re-run: the same numbers as the run that
        wrote the finished frames (``solver_state.py``)."""
        t0 = time.perf_counter()
        n, lay, fitter = len(self.source), self.layout, fit.fitter
        fit.done = finished_frames(lay, n)
        refine = fitter.s.refine_identity
        self._calibrate(fit)  # always from the landmarks: a resumed run gets the same intrinsics, exactly
        if refine:
            refined = np.zeros(300, np.float32)
            refined[: fit.ident.size] = fit.ident
            refined[: fitter.identity_change.size] += fitter.identity_change.astype(np.float32)
            logger.info(f"identity refined on the keyframes: moved {np.linalg.norm(fitter.identity_change):.3f} "
                        "from MICA's (identity.npy keeps MICA's; .frame 'shape' holds the refined one)")
        if refine:
            fit.ident = refined
            fit.model = TrackingFLAME(self.flame, fit.ident, fit.emb, fit.lids, self.options.iris_vertices,
                                      ibug68="ibug68" in fit.lm)
            fitter.model, fitter._basis = fit.model, None
        self.timings.add("keyframes (intrinsics)", time.perf_counter() - t0)

    def _calibrate(self, fit: FitInputs) -> None:
        """The intrinsics from keyframes chosen for pose diversity among the frames with a face in
        the calibration window (``tracker.fit.calib_window_s`` seconds of source time from the first
        of them; 0: all), with the focal prior, whose pre-cropped centre takes the face size over the
        window's frames (``focal_prior.py``, ``keyframes.py``); the estimate goes to the log and the
        run record."""
        from micalib.tracking.keyframes import calibrate_window, calibration_frames

        fitter = fit.fitter
        scale = 1.0 if fit.follow else float(fit.matrices[0][0, 0])  # fitted px per source px
        rate = self.source.input_fps or self.source.fps or 25.0  # source time of each output frame
        window = calibration_frames(fit.face_frames,
                                    [i / rate for i in self.source.indices], fitter.s.calib_window_s,
                                    fitter.s.keyframes)
        keys, prior, _states, est = calibrate_window(fitter, fit.obs, fit.valid, window, self.source.size, scale)
        logger.info(f"focal prior: {prior.note}")
        logger.info(est.describe(scale, max(self.source.size)) + f"; principal point ({fitter.intr.cx:.1f}, "
                    f"{fitter.intr.cy:.1f}) crop px; {len(keys)} keyframes {keys} of frames {window[0]}-{window[-1]} "
                    f"(calibration window {fitter.s.calib_window_s:g} s; 0 = whole clip)")
        record_camera(self.layout, {**est.in_source_px(scale), "window_frames": [window[0], window[-1]],
                                    "calib_window_s": float(fitter.s.calib_window_s)})
        self.camera = est

    # ------------------------------------------------------------------ stage 4: per-frame tracking
    def track_frames(self, fit: FitInputs) -> dict[int, dict]:
        """Fit every frame not finished before and write its files (and the overlay video);
        returns the csv rows by output frame."""
        lay, n, o = self.layout, len(self.source), self.options
        if not written_file(lay.canonical):
            atomic_write_bytes(lay.canonical, obj_text(fit.model.canonical_vertices(), fit.model.faces), fsync=False)
        fps_out = self.source.fps or self.source.input_fps or 25.0
        rows = {k: r for k, r in old_rows(lay).items() if k < n}
        for k in range(n):  # finished frames whose row a killed run lost: rebuilt without the fit's RMS
            if fit.done[k] and k not in rows:
                rows[k] = csv_row(k, self.source.indices[k], fps_out, fit.has_face[k], fit.valid[k], {},
                               not fit.has_face[k], fit.model)
        self._journal = RowJournal(lay.rows_journal)
        video = None
        if o.video and not (all(fit.done) and written_file(lay.video)):
            video = (fps_out, (3 * self.size, self.size))
        photo = None
        if o.photometric:
            from micalib.tracking.photo_stage import PhotometricStage

            photo = PhotometricStage(fit.model, self.size, o.device, iters=int(o.photometric_iters))
        depth_mesh = DepthMesh.build(fit.model.faces, self.flame.n_vertices, self._flame_masks())
        # the fits in a forked child, started before this pass starts any thread (fit_ahead.py)
        with self._fit_ahead(fit, photo is not None) as ahead, \
                FrameWriter(lay, fit.model, o.png_compression, o.workers, video, self._png_written,
                            self._journal, depth_mesh) as writer:
            loop = _FrameLoop(self, fit, writer, rows, photo, fps_out, ahead)
            cached = self._n_cached > 0
            loop.run(prefetch(self._cached_crops()) if cached else prefetch(self.source), cached)
            writer.finish()
        self.timings.add("crop", loop.seconds["crop"])
        self.timings.add("fit", loop.seconds["fit"])
        self.timings.add("submit writes (main thread)", loop.seconds["write"])
        self.skipped = loop.skipped
        return rows

    def _fit_ahead(self, fit: FitInputs, photometric: bool):
        """A ``FitAhead`` over the frames with a face where it gives the frame loop's own numbers
        (``fit_ahead.py``), else a context of None."""
        faces = fit.face_frames
        if not fit_ahead_possible(self.options.fit_process, photometric, any(fit.done)) or faces[0] >= MAX_HELD:
            return contextlib.nullcontext(None)
        return FitAhead(fit.fitter, fit.obs, fit.valid, faces)

    # ------------------------------------------------------------------ stage 5: outputs
    def write_outputs(self, rows: dict[int, dict]) -> None:
        """``tracking.csv`` (the journal of written rows is then removed)."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for k in sorted(rows):
            w.writerow(rows[k])
        atomic_write_text(self.layout.csv, buf.getvalue(), fsync=False)
        self._journal.close()
        self._journal = None
        self.layout.rows_journal.unlink(missing_ok=True)  # its rows are in tracking.csv now


class _FrameLoop:
    """The second pass, one output frame after the other: a finished frame continues from its exact
    solver record (``solver_state.py``), a frame with a face is fitted (warm-started from the
    previous one), one without waits for the next fitted frame and is interpolated (or held); each
    is handed to the ``FrameWriter`` in order."""

    def __init__(self, runner: TrackRunner, fit: FitInputs, writer: FrameWriter, rows: dict[int, dict],
                 photo, fps_out: float, ahead: FitAhead | None = None) -> None:
        self.runner, self.fit, self.writer, self.rows, self.photo = runner, fit, writer, rows, photo
        self.ahead = ahead  # the fits computed by a forked child (fit_ahead.py), or None: fitted here
        self.fps_out = fps_out
        self.kk = fit.fitter.intr.k
        self.prev: FrameState | None = None
        self.prev_k: int | None = None  # output frame of ``prev``
        self.resume_from: int | None = None  # the last finished fitted frame, until the next fit restores its solver
        # faceless frames waiting for the next tracked one: (k, i, crop, state when finished before)
        self.held: list[tuple[int, int, np.ndarray | None, FrameState | None]] = []
        n = len(fit.has_face)
        # a tracked (face) frame after k exists: faceless frames before it are interpolated
        self.face_after = np.zeros(n + 1, bool)
        for j in range(n - 1, -1, -1):
            self.face_after[j] = self.face_after[j + 1] or fit.has_face[j]
        self.seconds = {"fit": 0.0, "write": 0.0, "crop": 0.0}
        self.skipped = 0

    def run(self, frames, cached: bool) -> None:
        """Every frame of ``frames`` ((k, input index, frame), or the crop itself when ``cached``)."""
        r = self.runner
        for k, i, rgb in tqdm(frames, total=len(r.source), desc=f"tracking {r.source.name}"):
            crop = None
            if not self.fit.done[k] or self.writer.draws_video:  # a finished frame needs it for the overlay only
                t0 = time.perf_counter()
                crop = rgb if cached else cropmod.warp(rgb, self.fit.matrices[k], (r.size, r.size))
                self.seconds["crop"] += time.perf_counter() - t0
            self.frame(k, i, crop)
        self.flush_held(None, None)

    def frame(self, k: int, i: int, crop: np.ndarray) -> None:
        """Output frame ``k`` (input frame ``i``)."""
        t0 = time.perf_counter()
        fit = self.fit
        if fit.done[k]:
            self.finished(k, i, crop)
            return
        if self.resume_from is not None:  # the solver as it was after the last finished fitted frame
            self.restore(self.resume_from)
            self.resume_from = None
        if not fit.has_face[k]:
            self.faceless(k, i, crop, t0)
            return
        if self.ahead is not None:  # fitted by the forked child (fit_ahead.py): the same numbers
            st, rms, bpose = self.ahead.take(k)
        else:
            res = fit.fitter.fit_frame(fit.obs[k], fit.valid[k], self.prev, self.prev)
            st, rms, bpose = res.state, res.rms, basis_pose_of(fit.fitter)
        if self.photo is not None:
            kc = fit.crop_k(self.kk, k)
            st = self.photo.refine(crop, st, Intrinsics(kc[0, 0], kc[0, 2], kc[1, 2]),
                                   cropmod.transform_points(fit.obs[k], fit.matrices[k]) if fit.follow else fit.obs[k],
                                   fit.valid[k], res.contour_bin)
        if fit.follow:  # report pixels of the crop
            rms = {key: val * float(fit.matrices[k][0, 0]) for key, val in rms.items()}
        self.seconds["fit"] += time.perf_counter() - t0
        self.flush_held(st, k)
        self.emit(k, i, crop, st, self.row(k, i, rms, False), self.photo.appearance() if self.photo is not None else None,
                  basis_pose=bpose)
        self.prev, self.prev_k = st, k

    def finished(self, k: int, i: int, crop: np.ndarray | None) -> None:
        """A frame finished before: its exact state takes the place the fit's had when it was written."""
        self.skipped += 1
        st = self.fit.done[k].state
        if not self.fit.has_face[k]:  # as when it was written: waiting with the held frames, or held
            if self.face_after[k + 1] and len(self.held) < MAX_HELD:
                self.held.append((k, i, crop, st))
            else:
                self.flush_held(None, None)
                self.emit(k, i, crop, st, None)
            return
        self.flush_held(st, k)
        self.emit(k, i, crop, st, None)
        self.prev, self.prev_k, self.resume_from = st, k, k

    def restore(self, k: int) -> None:
        """A resumed run: the fitter's expression Jacobian (and the photometric appearance) as they
        were after fitting finished frame ``k``."""
        restore_basis(self.fit.fitter, self.fit.done[k].basis_pose)
        if self.photo is not None:
            appearance = load_appearance(self.runner.layout, k)
            if appearance is None:
                logger.warning(f"the photometric appearance after frame {k} was not kept: it starts again from the "
                               "next frame (the frames differ slightly from an uninterrupted run's)")
            else:
                self.photo.set_appearance(appearance)

    def faceless(self, k: int, i: int, crop: np.ndarray, t0: float) -> None:
        """A frame without a face: held for interpolation, or (none follows, or too many wait) the
        previous state."""
        fit = self.fit
        if self.face_after[k + 1] and len(self.held) < MAX_HELD:
            self.held.append((k, i, crop, None))  # interpolated once the next tracked frame is fitted
            self.seconds["fit"] += time.perf_counter() - t0
            return
        if self.prev is None:  # too many frames without a face first: held at the first frame with one
            j = fit.has_face.index(True)
            self.prev = fit.fitter.fit_frame(fit.obs[j], fit.valid[j], None).state
        self.flush_held(None, None)
        st = self.prev.copy()
        self.seconds["fit"] += time.perf_counter() - t0
        self.emit(k, i, crop, st, self.row(k, i, {}, True))

    def flush_held(self, st: FrameState | None, k_next: int | None) -> None:
        """Faceless frames between ``prev`` and frame ``k_next`` (state ``st``): interpolated
        when both exist, else held at ``prev``."""
        prev, prev_k = self.prev, self.prev_k
        for kh, ih, ch, known in self.held:
            if known is not None:  # finished before: its exact state
                self.emit(kh, ih, ch, known, None)
                continue
            if st is not None and prev is not None and prev_k is not None and k_next is not None:
                sh = interpolate_state(prev, st, (kh - prev_k) / (k_next - prev_k))
            else:  # before the first tracked frame: held at it; else at the last one
                sh = (prev if prev is not None else st).copy()
            self.emit(kh, ih, ch, sh, self.row(kh, ih, {}, True))
        self.held.clear()

    def row(self, k: int, i: int, rms: dict, interpolated: bool) -> dict:
        fit = self.fit
        return csv_row(k, i, self.fps_out, fit.has_face[k], fit.valid[k], rms, interpolated, fit.model)

    def emit(self, k: int, i: int, crop: np.ndarray | None, st: FrameState, row: dict | None,
             appearance: np.ndarray | None = None, basis_pose: np.ndarray | None = None) -> None:
        """Hand frame k to the writer (in frame order); ``row`` None = finished before;
        ``appearance``: the photometric stage's after this frame (kept for a resumed run);
        ``basis_pose``: the fitter's expression-Jacobian pose after fitting frame k (a fitted frame
        only; its solver record)."""
        if self.fit.done[k] and not self.writer.draws_video:
            return
        t0 = time.perf_counter()
        fit, size = self.fit, self.runner.size
        if row is not None:
            self.rows[k] = row
        kc = fit.crop_k(self.kk, k)
        data = None
        if not fit.done[k]:
            data = frame_dict(st.exp, st.pose, st.eyelids, fit.ident, st.r, st.t, kc, (size, size), k, k)
        detected = None
        if self.writer.draws_video:  # the fit's targets in crop pixels, NaN where unused
            obs = cropmod.transform_points(fit.obs[k], fit.matrices[k]) if fit.follow else fit.obs[k]
            detected = np.where(fit.valid[k][:, None], obs, np.nan)
        bpose = basis_pose if data is not None else None
        self.writer.submit(k, crop, st, kc, data, row, detected, basis_pose=bpose, appearance=appearance)
        self.seconds["write"] += time.perf_counter() - t0


def csv_row(k: int, i: int, fps_out: float, face: bool, valid: np.ndarray, rms: dict, interpolated: bool,
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
