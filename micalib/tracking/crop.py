"""The face crop of a tracked sequence: the box, the affine map from input pixels to crop pixels,
the warp, and the files that record them (``bbox.pt`` as the original tracker, ``crop.json``).

Pixel coordinates follow OpenCV: (0, 0) is the centre of the top-left pixel. A box
``(x_min, x_max, y_min, y_max)`` (ints, the original's ``bbox.pt`` order) covers the pixels
``image[y_min:y_max, x_min:x_max]``; it is square (``x_max - x_min == y_max - y_min``). Its crop
of ``S`` pixels is resized to ``N`` (``--image-size``), so input pixel x maps to crop pixel
``(x - x_min + 0.5) * N / S - 0.5`` (the mapping ``cv2.resize`` and ``cv2.warpAffine`` use).

As the original, one box comes from the first frame's landmarks, scaled by 2.5 about their
bounding box's centre, made square. Unlike the original, the box is not clipped to the image: parts
outside are black, so the crop stays square and unscaled in one direction (the original clips the
box and pads the crop to a square). ``CropTrack`` is the option that follows the face per frame.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from utils.errors import MICAError
from utils.io import atomic_save, atomic_write_text

PathLike = str | os.PathLike

__all__ = ["Box", "box_from_landmarks", "crop_matrix", "box_of_matrix", "invert_matrix", "transform_points",
           "warp", "save_bbox_pt", "load_bbox_pt", "CropTrack", "write_crop_json", "read_crop_json"]

Box = tuple[int, int, int, int]  # (x_min, x_max, y_min, y_max)

# What the original uses: bbox_scale 2.5.
DEFAULT_SCALE = 2.5


def _finite_points(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return p[np.isfinite(p).all(axis=1)]


def _square_box(cx: float, cy: float, size: float) -> Box:
    """The integer square box of side round(size) (at least 2) whose centre is nearest (cx, cy);
    the centre of a box in pixel-centre coordinates is (x_min + x_max - 1) / 2."""
    s = max(2, int(round(size)))
    x_min = int(math.floor(cx - (s - 1) / 2.0 + 0.5))
    y_min = int(math.floor(cy - (s - 1) / 2.0 + 0.5))
    return x_min, x_min + s, y_min, y_min + s


def box_from_landmarks(points: np.ndarray, scale: float = DEFAULT_SCALE) -> Box:
    """Square box around landmarks: the bounding box of the finite ``points`` (N,2), centred, its
    longer side times ``scale``. The original uses the first frame's 68 iBUG points; with MediaPipe
    only, pass ``mediapipe[MEDIAPIPE_IBUG68]`` (``landmarks.py``), the mesh points nearest to them.

    Raises:
        ValueError: no finite point (no face).
    """
    p = _finite_points(points)
    if len(p) < 2:
        raise ValueError("box_from_landmarks: no face (fewer than 2 finite landmarks)")
    lo, hi = p.min(axis=0), p.max(axis=0)
    cx, cy = (lo + hi) / 2.0
    side = float(max(hi - lo)) * float(scale)
    return _square_box(cx, cy, side)


def crop_matrix(box: Sequence[int], image_size: int | Sequence[int]) -> np.ndarray:
    """(2,3) float64 affine map from input pixels to crop pixels for ``box`` resized to
    ``image_size`` (an int N or (width, height)), pixel centres as in the module docstring."""
    x_min, x_max, y_min, y_max = (float(v) for v in box)
    w_out, h_out = (int(image_size), int(image_size)) if np.isscalar(image_size) else (int(image_size[0]), int(image_size[1]))
    sx, sy = w_out / (x_max - x_min), h_out / (y_max - y_min)
    return np.array([[sx, 0.0, (0.5 - x_min) * sx - 0.5],
                     [0.0, sy, (0.5 - y_min) * sy - 0.5]], dtype=np.float64)


def box_of_matrix(M: np.ndarray, size: Sequence[int]) -> Box | None:
    """The integer box whose ``crop_matrix`` is ``M`` for an output of ``size`` (w, h), or None
    when ``M`` is not such a matrix (rotation, shear, non-integer box edges)."""
    M = np.asarray(M, dtype=np.float64)
    if M.shape != (2, 3) or M[0, 1] != 0 or M[1, 0] != 0 or M[0, 0] <= 0 or M[1, 1] <= 0:
        return None
    w, h = int(size[0]), int(size[1])
    sx, sy = M[0, 0], M[1, 1]
    x_min = 0.5 - (M[0, 2] + 0.5) / sx
    y_min = 0.5 - (M[1, 2] + 0.5) / sy
    x_max, y_max = x_min + w / sx, y_min + h / sy
    edges = np.array([x_min, x_max, y_min, y_max])
    r = np.rint(edges)
    if np.abs(edges - r).max() > 1e-6:
        return None
    return int(r[0]), int(r[1]), int(r[2]), int(r[3])


def invert_matrix(M: np.ndarray) -> np.ndarray:
    """Inverse of a (2,3) affine map (crop px -> input px for a crop matrix)."""
    A = np.vstack([np.asarray(M, dtype=np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    return np.linalg.inv(A)[:2]


def transform_points(points: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a (2,3) affine map to points (..., 2); NaN stays NaN. Returns float64."""
    p = np.asarray(points, dtype=np.float64)
    M = np.asarray(M, dtype=np.float64)
    return p @ M[:, :2].T + M[:, 2]


def _padded_slice(rgb: np.ndarray, box: Box) -> np.ndarray:
    """``rgb[y_min:y_max, x_min:x_max]`` with black where the box leaves the image (a view when
    the box is inside)."""
    x_min, x_max, y_min, y_max = box
    h, w = rgb.shape[:2]
    if x_min >= 0 and y_min >= 0 and x_max <= w and y_max <= h:
        return rgb[y_min:y_max, x_min:x_max]
    out = np.zeros((y_max - y_min, x_max - x_min) + rgb.shape[2:], dtype=rgb.dtype)
    sx0, sx1, sy0, sy1 = max(x_min, 0), min(x_max, w), max(y_min, 0), min(y_max, h)
    if sx0 < sx1 and sy0 < sy1:
        out[sy0 - y_min:sy1 - y_min, sx0 - x_min:sx1 - x_min] = rgb[sy0:sy1, sx0:sx1]
    return out


def warp(rgb: np.ndarray, M: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """The crop of ``rgb`` under ``M`` (input px -> crop px), ``size`` = N or (w, h), black outside.

    When ``M`` is the ``crop_matrix`` of an integer box (the usual case) the box is sliced and
    resized, sampling exactly where ``M`` says: bilinear (``INTER_LINEAR``)
    when enlarging or shrinking less than 2x; shrinking by a factor s >= 2 first averages k x k
    blocks (k = floor(s), OpenCV's fast integer ``INTER_AREA``), then interpolates bilinearly, so
    nothing aliases. (``INTER_AREA`` at a fractional ratio would be exact too but is much slower: bench/README.md.)
    Any other matrix: ``cv2.warpAffine`` (bilinear)."""
    w_out, h_out = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    img = np.asarray(rgb)
    box = box_of_matrix(M, (w_out, h_out))
    if box is None:
        return cv2.warpAffine(img, np.asarray(M, dtype=np.float64), (w_out, h_out), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    x_min, x_max, y_min, y_max = box
    s_w, s_h = x_max - x_min, y_max - y_min
    k = int(min(s_w / w_out, s_h / h_out))
    if k < 2:
        sub = _padded_slice(img, box)
        if (s_w, s_h) == (w_out, h_out):
            return np.ascontiguousarray(sub)
        return cv2.resize(sub, (w_out, h_out), interpolation=cv2.INTER_LINEAR)
    n_w, n_h = -(-s_w // k), -(-s_h // k)  # blocks, the last one reaching past the box
    blocks = cv2.resize(_padded_slice(img, (x_min, x_min + k * n_w, y_min, y_min + k * n_h)), (n_w, n_h),
                        interpolation=cv2.INTER_AREA)
    if k * n_w == s_w and k * n_h == s_h:
        if (n_w, n_h) == (w_out, h_out):
            return blocks
        return cv2.resize(blocks, (w_out, h_out), interpolation=cv2.INTER_LINEAR)
    # block j's centre is input pixel x_min + k j + (k - 1) / 2, i.e. crop pixel (k (j + 1/2)) w_out / s_w - 1/2
    ax, ay = k * w_out / s_w, k * h_out / s_h
    A = np.array([[ax, 0.0, 0.5 * ax - 0.5], [0.0, ay, 0.5 * ay - 0.5]])
    return cv2.warpAffine(blocks, A, (w_out, h_out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def save_bbox_pt(path: PathLike, box: Sequence[int]) -> None:
    """Write ``bbox.pt`` as the original: ``torch.save`` of [x_min, x_max, y_min, y_max] (an int64
    tensor, which any ``torch.load`` reads, also with ``weights_only=True``). Atomic."""
    import torch

    t = torch.tensor([int(v) for v in box], dtype=torch.int64)
    if t.shape != (4,):
        raise ValueError(f"save_bbox_pt({path}): expected 4 numbers, got {list(box)}")
    atomic_save(path, lambda tmp: torch.save(t, tmp))


def load_bbox_pt(path: PathLike) -> Box:
    """Read a ``bbox.pt`` (a tensor or array of 4 numbers) as (x_min, x_max, y_min, y_max)."""
    import torch

    p = Path(path)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
        v = np.asarray(obj, dtype=np.float64).reshape(-1)
    except Exception as e:  # torch raises many types for a bad file
        raise MICAError(f"{p} is not a bbox.pt of 4 numbers ({type(e).__name__}); delete it to recompute the crop") from None
    if v.shape != (4,):
        raise MICAError(f"{p} holds {v.size} numbers, not [x_min, x_max, y_min, y_max]; delete it to recompute the crop")
    return int(v[0]), int(v[1]), int(v[2]), int(v[3])


class CropTrack:
    """Follows the face: a square box per frame from that frame's landmarks, smoothed over time.

    ``update(points)`` takes the frame's landmarks (NaN rows ignored) and returns its integer box:
    the centre and the side of ``box_from_landmarks`` are smoothed with an exponential moving
    average (``smoothing`` = weight kept from the previous frame; 0 = no smoothing), and a frame
    without a face keeps the previous box. Note for the camera: with a moving crop, the crop-pixel
    intrinsics differ per frame (K_crop = A_k K_input with A_k this frame's crop matrix).
    """

    def __init__(self, scale: float = DEFAULT_SCALE, smoothing: float = 0.8):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"CropTrack: smoothing must be in [0, 1), got {smoothing}")
        self.scale = float(scale)
        self.smoothing = float(smoothing)
        self._state: np.ndarray | None = None  # cx, cy, side

    def update(self, points: np.ndarray | None) -> Box | None:
        """The box of this frame, or None while no face has been seen yet."""
        p = _finite_points(points) if points is not None else np.zeros((0, 2))
        if len(p) >= 2:
            lo, hi = p.min(axis=0), p.max(axis=0)
            obs = np.array([(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0, float(max(hi - lo)) * self.scale])
            self._state = obs if self._state is None else self.smoothing * self._state + (1 - self.smoothing) * obs
        if self._state is None:
            return None
        cx, cy, side = self._state
        return _square_box(float(cx), float(cy), float(side))


def write_crop_json(path: PathLike, matrices: Sequence[np.ndarray], image_size: int | Sequence[int],
                    input_indices: Sequence[int] | None = None, fsync: bool = True) -> None:
    """Write ``crop.json``: per output frame the (2,3) matrix from input-frame pixels to crop pixels
    (OpenCV pixel centres), with its output and input frame numbers. Atomic."""
    w_out, h_out = (int(image_size), int(image_size)) if np.isscalar(image_size) else (int(image_size[0]), int(image_size[1]))
    if input_indices is not None and len(input_indices) != len(matrices):
        raise ValueError("write_crop_json: input_indices and matrices differ in length")
    frames = []
    for k, M in enumerate(matrices):
        M = np.asarray(M, dtype=np.float64)
        if M.shape != (2, 3):
            raise ValueError(f"write_crop_json: matrix {k} has shape {M.shape}, expected (2,3)")
        entry = {"frame": f"{k:05d}"}
        if input_indices is not None:
            entry["input_frame"] = int(input_indices[k])
        entry["matrix"] = [[float(v) for v in row] for row in M]
        frames.append(entry)
    doc = {
        "description": "per output frame: x_crop = M @ [x_input, y_input, 1] in pixels, (0,0) = centre of the "
                       "top-left pixel (OpenCV)",
        "crop_size": [w_out, h_out],
        "frames": frames,
    }
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n", fsync=fsync)


def read_crop_json(path: PathLike) -> list[np.ndarray]:
    """The per-frame (2,3) matrices of a ``crop.json``."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
        return [np.asarray(f["matrix"], dtype=np.float64).reshape(2, 3) for f in doc["frames"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MICAError(f"{p} is not a readable crop.json ({type(e).__name__}); delete it to recompute the crop") from None
