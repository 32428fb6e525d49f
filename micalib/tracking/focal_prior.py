"""The prior on the camera's focal length, and what the keyframes made of it (the camera estimate).

Landmarks fix the ratio focal length / distance well (the face's size in the image); the two apart
are decided only by perspective, i.e. by how the face's 3D relief projects as the head turns or
moves in depth. With a still head that is weak, and an unbounded fit runs away (issue 22: 100 m
away at 133,000 px). So the focal length gets a prior, stated as the field of view of the camera
that filmed the **source** frame (the crop is a window of it; a field of view means the same for
any crop):

    f_source = (L / 2) / tan(fov / 2),  L = the source frame's larger side in pixels

with ``log f`` normal around ``log f_source`` with standard deviation ``focal_log_sigma``
(``tracker.fit.fov_deg`` 60 and ``tracker.fit.focal_log_sigma`` 0.35: phone main / selfie cameras
and webcams film 60-75 degrees across the larger side; two sigma spans 32-98 degrees). The prior
band reported is +-2 sigma.

**Pre-cropped inputs** (the face already fills the frame, like the original's wojtek clip, 512x512):
the clip is then itself a crop of an unknown larger frame, and its own size says nothing about the
lens. When the face (the landmarks' bounding box, larger side, median over the calibration window's
frames, not over the keyframes: it does not depend on which were chosen) spans more than ``face_fraction``
(0.25) of the frame's larger side, the source frame is taken as the frame in which that face spans
``precrop_face_fraction`` (0.12: in the 1080p talking-head clips at hand the face spans 0.08-0.18
of the width; L = face / precrop_face_fraction), and the width is ``precrop_log_sigma`` (0.5)
instead: the prior then says "a head at a typical distance from a usual lens", loosely.

``--focal PX`` (``tracker.fit.focal``, source pixels) replaces the prior: the focal length is fixed.

The **estimate** (``CameraEstimate``) carries the fitted focal length, a 95% interval from the
curvature of the keyframe cost (the Gauss-Newton normal matrix, keyframe parameters marginalised by
the Schur complement, scaled by the landmark residual variance the keyframes show and by how much
more they disagree about the focal length than that allows), and which of
the two decided it: the motion (the landmarks' information on log f exceeds the prior's) or the
prior.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

Z95 = 1.959964  # two-sided 95% of a normal


@dataclass
class FocalPrior:
    """A normal prior on ``log focal`` (focal in pixels of the fitted image); ``fixed``: focal given."""

    centre: float            # focal length, pixels of the fitted image
    log_sigma: float         # standard deviation of log focal (inf: no prior)
    scale: float             # fitted-image pixels per source pixel
    note: str                # how the centre was chosen (for the log)
    fixed: bool = False

    def band(self, n_sigma: float = 2.0) -> tuple[float, float]:
        """(low, high) focal in fitted-image pixels: the centre times exp(-+ n_sigma sigma)."""
        if not math.isfinite(self.log_sigma):
            return 0.0, math.inf
        return self.centre * math.exp(-n_sigma * self.log_sigma), self.centre * math.exp(n_sigma * self.log_sigma)

    def terms(self, focal: float, weight: float = 1.0) -> tuple[float, float, float]:
        """Cost ``weight * r^2`` with r = (log f - log centre) / sigma, and its Gauss-Newton curvature
        and half-gradient with respect to ``focal`` (the fitter's convention: H = J^T J, g = J^T r)."""
        if self.fixed or not math.isfinite(self.log_sigma) or self.log_sigma <= 0:
            return 0.0, 0.0, 0.0
        r = (math.log(focal) - math.log(self.centre)) / self.log_sigma
        j = 1.0 / (focal * self.log_sigma)
        return weight * r * r, weight * j * j, weight * j * r


def focal_from_fov(fov_deg: float, side_px: float) -> float:
    """Focal length in pixels of a pinhole whose field of view across ``side_px`` pixels is ``fov_deg``."""
    return 0.5 * side_px / math.tan(math.radians(fov_deg) / 2.0)


def fov_from_focal(focal_px: float, side_px: float) -> float:
    """The field of view (degrees) across ``side_px`` pixels of a focal length of ``focal_px``."""
    return math.degrees(2.0 * math.atan(0.5 * side_px / focal_px))


def make_prior(settings, source_size: tuple[int, int], scale: float, face_px: float | None) -> FocalPrior:
    """The prior of a run (module docstring).

    Args:
        settings: ``FitSettings`` (``fov_deg``, ``focal_log_sigma``, ``face_fraction``,
            ``precrop_log_sigma``, ``focal``: source pixels, 0 = fit).
        source_size: (width, height) of the source frames.
        scale: fitted-image pixels per source pixel (the crop's resize factor; 1 without a crop).
        face_px: the face's size in source pixels (larger side of the landmarks' box), None if unknown.
    """
    side = float(max(source_size))
    if settings.focal > 0:
        return FocalPrior(float(settings.focal) * scale, 0.0, scale, f"given: {settings.focal:g} source px",
                          fixed=True)
    sigma, note = float(settings.focal_log_sigma), f"{settings.fov_deg:g} deg across the {side:.0f}-px source frame"
    if face_px is not None and face_px > settings.face_fraction * side:
        side = face_px / settings.precrop_face_fraction
        sigma = float(settings.precrop_log_sigma)
        note = (f"pre-cropped input (face {face_px:.0f} px > {settings.face_fraction:g} of the frame): "
                f"{settings.fov_deg:g} deg across a {side:.0f}-px source frame in which the face spans "
                f"{settings.precrop_face_fraction:g}")
    return FocalPrior(focal_from_fov(settings.fov_deg, side) * scale, sigma, scale, note)


def face_size(points: list[np.ndarray]) -> float | None:
    """The median over frames of the larger side of the landmarks' bounding box (pixels), or None."""
    sides = [float(np.max(p.max(0) - p.min(0))) for p in points if len(p) >= 2]
    return float(np.median(sides)) if sides else None


@dataclass
class CameraEstimate:
    """What the keyframes decided (focal lengths in pixels of the fitted image)."""

    focal: float
    low: float                # 95% interval
    high: float
    data_share: float         # the landmarks' share of the information on log f (0..1)
    decided_by: str           # "motion", "prior" or "given"
    residual_px: float        # landmark residual scale of the keyframes (RMS per coordinate / sigma_px)
    prior_centre: float
    prior_low: float          # the prior's +-2 sigma band
    prior_high: float
    keyframes: list[int] | None = None
    dispersion: float = 1.0   # the keyframes' disagreement on the focal beyond the noise (keyframes.py)

    def in_source_px(self, scale: float) -> dict:
        """The estimate as a JSON-able dict with every focal length in source pixels."""
        d = asdict(self)
        for k in ("focal", "low", "high", "prior_centre", "prior_low", "prior_high"):
            d[k] = round(float(d[k]) / scale, 3) if math.isfinite(d[k]) else None
        d["data_share"] = round(float(d["data_share"]), 4)
        d["residual_px"] = round(float(d["residual_px"]), 4)
        d["dispersion"] = round(float(d["dispersion"]), 3)
        return d

    def describe(self, scale: float, source_side: float) -> str:
        """One log line: focal (source px), field of view, interval, who decided."""
        f = self.focal / scale
        lo, hi = self.low / scale, self.high / scale
        fov = fov_from_focal(f, source_side)
        if self.decided_by == "given":
            return f"camera: focal {f:.1f} source px ({fov:.1f} deg across {source_side:.0f} px), given (--focal)"
        return (f"camera: focal {f:.1f} source px ({fov:.1f} deg across {source_side:.0f} px), 95% interval "
                f"{lo:.1f}-{hi:.1f}, decided by the {self.decided_by} (landmarks' share of the information "
                f"{self.data_share:.0%}, keyframe disagreement x{self.dispersion:.1f}; prior band {self.prior_low / scale:.0f}-{self.prior_high / scale:.0f})")


def estimate(prior: FocalPrior, focal: float, var_focal_post: float, var_focal_data: float,
             residual: float, keyframes=None) -> CameraEstimate:
    """The ``CameraEstimate`` from the posterior variance of the focal length and the variance the
    landmarks alone give (both in fitted pixels squared, already scaled by the residual variance)."""
    p_lo, p_hi = prior.band()
    if prior.fixed:
        return CameraEstimate(focal, focal, focal, 0.0, "given", residual, prior.centre, focal, focal, keyframes)
    sd_log = math.sqrt(max(var_focal_post, 0.0)) / focal
    info_data = focal * focal / var_focal_data if var_focal_data > 0 and np.isfinite(var_focal_data) else 0.0
    info_prior = 1.0 / prior.log_sigma ** 2 if math.isfinite(prior.log_sigma) and prior.log_sigma > 0 else 0.0
    share = info_data / (info_data + info_prior) if info_data + info_prior > 0 else 0.0
    return CameraEstimate(focal, focal * math.exp(-Z95 * sd_log), focal * math.exp(Z95 * sd_log), share,
                          "motion" if share > 0.5 else "prior", residual, prior.centre, p_lo, p_hi, keyframes)
