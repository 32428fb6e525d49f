"""The ranges track.py accepts for its options and the ``tracker.*`` config keys, checked where the
run's options are built (one line naming the option, through ``utils.errors.check_range``), before
anything is loaded: an absurd value would otherwise hang (``--fps 1e9``: billions of output frames),
allocate tens of GB (``--image-size 100000``) or write nonsense without a word (``bbox_scale`` 0,
``fit.fov_deg`` -1: a negative focal length in K).
"""
from __future__ import annotations

import math

from utils.errors import UserError, check_range

MAX_FPS = 1000.0         # output frames per second (a video is resampled; above: more frames than any camera)
IMAGE_SIZE = (64, 4096)  # side of the square crop, pixels

# key -> (low, high, low_open): the tracker.* keys that are numbers
TRACKER_RANGES = {
    "bbox_scale": (0.0, 20.0, True), "identity_frames": (1, 1000, False), "png_compression": (0, 9, False),
    "workers": (1, 64, False), "photometric_iters": (0, 10_000, False), "search_every": (1, 1_000_000, False),
    "fit.iters": (1, 1000, False), "fit.first_iters": (1, 1000, False), "fit.key_iters": (1, 1000, False),
    "fit.keyframes": (1, 1000, False), "fit.calib_window_s": (0.0, 1e7, False), "fit.rel_tol": (0.0, 1.0, False), "fit.basis_tolerance": (0.0, math.pi, False),
    "fit.fov_deg": (0.0, 179.0, True), "fit.focal_log_sigma": (0.0, 10.0, True),
    "fit.face_fraction": (0.0, 1.0, True), "fit.precrop_face_fraction": (0.0, 1.0, True),
    "fit.precrop_log_sigma": (0.0, 10.0, True), "fit.focal": (0.0, 1e7, False), "fit.pp_sigma": (0.0, 10.0, True), "fit.sigma_px": (0.0, 1e4, True),
    "fit.huber_px": (0.0, 1e4, True), "fit.w_mediapipe": (0.0, 1e6, False), "fit.w_iris": (0.0, 1e6, False),
    "fit.w_ibug68": (0.0, 1e6, False),
}
_SIGMAS = ("exp_sigma", "jaw_sigma", "jaw_side_sigma", "eye_sigma", "eye_symmetry_sigma", "eyelid_sigma",
           "eyelid_symmetry_sigma", "smooth_exp", "smooth_pose", "smooth_eyes", "smooth_eyelids", "smooth_rot",
           "smooth_t", "identity_sigma")
TRACKER_RANGES.update({f"fit.{k}": (0.0, 1e6, True) for k in _SIGMAS})


def _number(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number, not {value!r}") from None
    if not math.isfinite(v):
        raise UserError(f"{name} must be a finite number, not {value}")
    return v


def check_track_options(fps: float | None, image_size: int) -> None:
    """``--fps`` in (0, MAX_FPS] (None: every frame) and ``--image-size`` in IMAGE_SIZE."""
    if fps is not None:
        check_range("--fps", _number("--fps", fps), 0.0, MAX_FPS, low_open=True,
                    hint="output frames per second, e.g. 25")
    check_range("--image-size", int(image_size), *IMAGE_SIZE, hint="side of the square crop in pixels, e.g. 512")


def check_tracker_config(section) -> None:
    """Every ``tracker.*`` number of ``TRACKER_RANGES`` in the config's ``tracker`` section in its
    range (one line naming the key)."""
    for key, (low, high, low_open) in TRACKER_RANGES.items():
        node = section
        for part in key.split("."):
            node = node[part]
        check_range(f"tracker.{key}", _number(f"tracker.{key}", node), low, high, low_open=low_open)
