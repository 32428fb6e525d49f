"""Online (causal) tracking of a live source: the offline tracker's per-frame solver, fed one
frame at a time.

``Framing`` turns a ``Captured`` frame into the crop and its landmarks in crop pixels: one square
box from the first frame with a face (``tracker.bbox_scale``, as offline), then MediaPipe (video
mode) on each crop; landmark rows are moved into the same box. ``OnlineTracker.process(frame)``:
- **warm-up**: frames with a face are collected until ``warmup_s`` seconds of the source have passed
  since the first face (at least ``MIN_WARMUP`` of them); then the identity is fixed (``--identity``,
  or MICA on up to ``tracker.identity_frames`` of those frames, fused) and the intrinsics (given
  with ``--focal``, else fitted on keyframes of the warm-up frames with the focal prior, ``keyframes.calibrate_window``),
  then kept. Warm-up frames are not tracked (``process`` returns None);
- **tracking**: ``LandmarkFitter.fit_frame`` warm-started from the previous frame (the first from
  the warm-up's last keyframe), with the temporal prior towards it -- only past frames are used.
  A frame without a face keeps the last state and says so (``face_found`` False); offline such
  frames are interpolated between their neighbours, which needs the future.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from loguru import logger

from micalib.live.sources import Captured
from micalib.tracking import crop as cropmod
from micalib.tracking.fitting import FrameState, Intrinsics, LandmarkFitter, pick_keyframes
from micalib.tracking.focal_prior import CameraEstimate
from micalib.tracking.keyframes import calibrate_window
from micalib.tracking.model import TrackingFLAME, observations
from micalib.tracking.options import FitSettings

MIN_WARMUP = 3  # frames with a face before the intrinsics are fitted
WAIT_LOG_S = 5.0  # source seconds between "waiting for a face" lines


@dataclass
class OnlineResult:
    frame: int                 # tracked frame number (0-based)
    captured: Captured
    face_found: bool
    state: FrameState
    rms: dict
    crop: np.ndarray | None    # RGB crop (size x size) when the source has images
    valid: np.ndarray | None = None  # which of the model's points had a landmark
    detected: np.ndarray | None = None  # the fit's targets in crop pixels, NaN where unused (the overlay's green)


class Framing:
    """Image or landmark rows -> (crop or None, mediapipe (478,2) or None, ibug68 (68,2) or None) in
    crop pixels. ``detector``: a ``MediaPipeLandmarker`` in video mode (images only)."""

    def __init__(self, size: int, bbox_scale: float, crop: bool, detector=None) -> None:
        self.size, self.scale, self.crop, self.detector = int(size), float(bbox_scale), bool(crop), detector
        self.matrix: np.ndarray | None = None  # (2, 3) input px -> crop px, fixed at the first face
        self.source_wh: tuple[int, int] | None = None  # the input frames' (width, height)

    def _set_box(self, pts68: np.ndarray | None, wh: tuple[int, int]) -> bool:
        self.source_wh = tuple(int(v) for v in wh)
        if not self.crop:
            w, h = wh
            s = self.size / w
            self.matrix = np.array([[s, 0, 0.5 * s - 0.5], [0, self.size / h, 0.5 * self.size / h - 0.5]])
            if (w, h) == (self.size, self.size):
                self.matrix = np.array([[1.0, 0, 0], [0, 1.0, 0]])
            return True
        if pts68 is None or np.isfinite(pts68).all(1).sum() < 2:
            return False
        self.matrix = cropmod.crop_matrix(cropmod.box_from_landmarks(pts68, self.scale), self.size)
        return True

    def __call__(self, cap: Captured):
        from micalib.tracking.landmarks import MEDIAPIPE_IBUG68

        if cap.landmarks is not None:
            mp, ib = cap.landmarks.get("mediapipe"), cap.landmarks.get("ibug68")
            if self.matrix is None:
                pts = ib if ib is not None else (mp[MEDIAPIPE_IBUG68] if mp is not None else None)
                wh = (cap.image.shape[1], cap.image.shape[0]) if cap.image is not None else (self.size, self.size)
                if not self._set_box(pts, wh):
                    return None, None, None
            m = self.matrix
            crop = cropmod.warp(cap.image, m, (self.size, self.size)) if cap.image is not None else None
            return (crop, None if mp is None else cropmod.transform_points(mp, m),
                    None if ib is None else cropmod.transform_points(ib, m))
        if self.matrix is None:  # the first face, on the whole frame
            pts = self.detector.detect(cap.image)
            if not self._set_box(pts[MEDIAPIPE_IBUG68] if np.isfinite(pts).all() else None,
                                 (cap.image.shape[1], cap.image.shape[0])):
                return None, None, None
            self.detector.reset()  # video mode: the tracked region was in whole-frame coordinates
        crop = cropmod.warp(cap.image, self.matrix, (self.size, self.size))
        return crop, self.detector.detect(crop), None


class OnlineTracker:
    """See the module docstring.

    Args:
        flame, emb, lids, iris: the tracking FLAME's parts (``TrackingFLAME``'s arguments).
        settings: the fit settings (``TrackOptions.fit``).
        framing: a ``Framing``.
        warmup_s: seconds of the source before the intrinsics are fitted.
        identity: (300,) MICA identity, or None with ``identity_fn(list of (k, rgb)) -> (300,)``.
        focal_px: the focal length in source pixels (``--focal``), or None to fit it.
        identity_frames: frames given to ``identity_fn``.
    """

    def __init__(self, flame, emb, lids, iris, settings: FitSettings, framing: Framing, warmup_s: float,
                 identity: np.ndarray | None = None, identity_fn: Callable | None = None,
                 focal_px: float | None = None, identity_frames: int = 8) -> None:
        self.flame, self.emb, self.lids, self.iris = flame, emb, lids, tuple(iris)
        self.s, self.framing, self.warmup_s = settings, framing, float(warmup_s)
        self.identity, self.identity_fn, self.focal_px = identity, identity_fn, focal_px
        self.identity_frames = int(identity_frames)
        self.size = framing.size
        self.model: TrackingFLAME | None = None
        self.fitter: LandmarkFitter | None = None
        self.identity_source = "given" if identity is not None else "mica"
        self.camera: CameraEstimate | None = None  # what the warm-up's keyframes decided (focal_prior.py)
        self._warm: list[tuple[Captured, np.ndarray | None, np.ndarray | None]] = []
        self.prev: FrameState | None = None
        self.n_tracked = 0
        self.warmup_seconds_spent = 0.0  # wall time of the identity and intrinsics fit
        self._seen, self._told = 0, 0.0

    @property
    def tracking(self) -> bool:
        return self.fitter is not None

    def process(self, cap: Captured) -> OnlineResult | None:
        crop, mp, ib = self.framing(cap)
        if not self.tracking:
            self._seen += 1
            if not self._warm and cap.t_capture - self._told >= WAIT_LOG_S:
                self._told = cap.t_capture
                logger.info(f"live: waiting for a face ({self._seen} frames seen); the warm-up starts with the first")
            if mp is not None or ib is not None:
                has = (np.isfinite(mp).all(1).sum() if mp is not None else 0) + \
                      (np.isfinite(ib).all(1).sum() if ib is not None else 0)
                if has >= 6:
                    self._warm.append((cap, mp, ib))
            if (len(self._warm) >= MIN_WARMUP
                    and cap.t_capture - self._warm[0][0].t_capture >= self.warmup_s):
                self._finish_warmup()
            return None
        obs, valid = observations(self.model, mp, ib)
        valid &= self.fitter.set_w > 0
        face = int(valid.sum()) >= 6
        rms: dict = {}
        if face:
            fit = self.fitter.fit_frame(obs, valid, self.prev, self.prev)
            st = fit.state
            if all(np.isfinite(x).all() for x in (st.exp, st.pose, st.eyelids, st.r, st.t)):
                self.prev, rms = st, fit.rms
            else:  # a diverged fit never reaches a client or a file: the frame keeps the last state
                logger.warning(f"live: the fit of frame {cap.index} diverged; it keeps the previous state")
                face = False
        res = OnlineResult(self.n_tracked, cap, face, self.prev.copy(), rms, crop, valid,
                           np.where(valid[:, None], obs, np.nan))
        self.n_tracked += 1
        return res

    def _finish_warmup(self) -> None:
        t0 = time.perf_counter()
        warm = self._warm
        has_ib = any(ib is not None for _, _, ib in warm)
        if self.identity is None:
            picks = pick_keyframes([i for i, (c, _, _) in enumerate(warm) if c.image is not None], self.identity_frames)
            self.identity = np.asarray(self.identity_fn([(warm[i][0].index, warm[i][0].image) for i in picks]),
                                       np.float32).reshape(-1)
        self.model = TrackingFLAME(self.flame, self.identity, self.emb, self.lids, self.iris, ibug68=has_ib)
        fitter = LandmarkFitter(self.model, self.s, (self.size, self.size))
        obs = []
        for _, mp, ib in warm:
            o, v = observations(self.model, mp, ib)
            obs.append((o, v & (fitter.set_w > 0)))
        if self.focal_px is not None:
            fitter.intr = Intrinsics(float(self.focal_px) * float(self.framing.matrix[0, 0]), *fitter.centre)
            self.prev = fitter.fit_frame(*obs[-1], None).state
            how = "given (--focal)"
        else:
            scale, wh = float(self.framing.matrix[0, 0]), self.framing.source_wh or (self.size, self.size)
            # the face size over all warm-up frames, as offline over its window's
            keys, _prior, states, self.camera = calibrate_window(fitter, [o for o, _v in obs], [v for _o, v in obs],
                                                                 range(len(warm)), wh, scale)
            self.prev = states[-1]
            how = f"fitted on {len(keys)} keyframes of the warm-up ({self.camera.describe(scale, max(wh))})"
            if self.s.refine_identity:
                self.identity = self.identity.copy()
                self.identity[: fitter.identity_change.size] += fitter.identity_change.astype(np.float32)
                self.model = TrackingFLAME(self.flame, self.identity, self.emb, self.lids, self.iris, ibug68=has_ib)
                fitter.model, fitter._basis = self.model, None
        self.fitter = fitter
        self.warmup_seconds_spent = time.perf_counter() - t0
        i = fitter.intr
        logger.info(f"live: warm-up over after {len(warm)} frames with a face: focal {i.focal:.1f} px, principal point "
                    f"({i.cx:.1f}, {i.cy:.1f}) in crop pixels, {how}; identity {self.identity_source}; fixed from now on "
                    f"({self.warmup_seconds_spent:.2f} s)")
        self._warm = []

    @property
    def k(self) -> np.ndarray:
        return self.fitter.intr.k
