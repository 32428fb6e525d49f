"""ArcFace alignment: 5 keypoints -> similarity transform -> 112x112 (or 224x224) crop.

Keypoint order everywhere: left eye, right eye, nose tip, left mouth corner, right mouth corner,
in image pixel coordinates (x right, y down); "left" is the image left, as insightface returns them.
"""
from __future__ import annotations

import cv2
import numpy as np

from utils.errors import UserError

__all__ = ["ARCFACE_TEMPLATE", "estimate_similarity", "estimate_norm", "norm_crop", "to_network_input",
           "box_crop_matrix", "warp_bilinear", "crop_from_box"]

# The standard ArcFace 112x112 template (same order as the keypoints).
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
# ArcFace network input size and normalisation: (pixel - 127.5) / 127.5.
ARCFACE_SIZE = 112
_PIXEL_MEAN = 127.5
_PIXEL_STD = 127.5


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    Umeyama (1991): minimises sum |s R src_i + t - dst_i|^2 with det(R) = +1 (no reflection).

    Args:
        src, dst: (N, 2) corresponding points, N >= 2.

    Returns:
        (2, 3) float64 matrix M with dst ~ M[:, :2] @ src + M[:, 2].

    Raises:
        ValueError: shapes differ, fewer than 2 points, or all ``src`` points coincide.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"estimate_similarity needs two (N,2) arrays with N >= 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    var_s = (s0 ** 2).sum() / len(src)
    if not np.isfinite(var_s) or var_s < 1e-12:
        raise UserError("estimate_similarity: the source points coincide (degenerate keypoints)")
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    m = np.empty((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def _template(size: int) -> np.ndarray:
    """The ArcFace template for a ``size`` crop (insightface's rule: x size/112 for multiples of
    112, else x size/128 with an 8*size/128 pixel shift in x)."""
    if size % ARCFACE_SIZE == 0:
        return ARCFACE_TEMPLATE.astype(np.float64) * (size / ARCFACE_SIZE)
    ratio = size / 128.0
    t = ARCFACE_TEMPLATE.astype(np.float64) * ratio
    t[:, 0] += 8.0 * ratio
    return t


def estimate_norm(kps: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """(2, 3) similarity taking the 5 keypoints ``kps`` (5, 2) onto the template of a ``size`` crop."""
    kps = np.asarray(kps, dtype=np.float64)
    if kps.shape != (5, 2):
        raise ValueError(f"expected 5 keypoints of shape (5,2), got {kps.shape}")
    return estimate_similarity(kps, _template(size))


def norm_crop(img: np.ndarray, kps: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """Aligned face crop: warp ``img`` (H, W, C) so the keypoints land on the ArcFace template.

    Args:
        img: (H, W, 3) uint8 image (any channel order; it is kept).
        kps: (5, 2) keypoints in ``img`` pixels.
        size: crop side in pixels; 112 for the network, 224 (template x2) for display/datasets.

    Returns:
        (size, size, 3) image of ``img``'s dtype; outside the photo is black.
    """
    m = estimate_norm(kps, size)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)


def to_network_input(crop112_rgb: np.ndarray) -> np.ndarray:
    """(112, 112, 3) uint8 RGB crop -> (3, 112, 112) float32 ArcFace input, (RGB - 127.5) / 127.5."""
    crop = np.asarray(crop112_rgb)
    if crop.shape != (ARCFACE_SIZE, ARCFACE_SIZE, 3):
        raise ValueError(f"to_network_input expects a (112,112,3) RGB crop, got {crop.shape}")
    x = (crop.astype(np.float32) - _PIXEL_MEAN) / _PIXEL_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def box_crop_matrix(box: np.ndarray, scale: float = 1.6, size: int = 224) -> np.ndarray:
    """The similarity MICA's NoW preparation maps a face box with (photo pixels -> crop pixels).

    As MICA (scikit-image ``estimate_transform('similarity')`` on three corners): centre c = box
    centre, side ``s = int(scale * mean(box width, box height))`` (truncated), and the corners
    (c - s/2, c - s/2), (c - s/2, c + s/2), (c + s/2, c - s/2) go to (0, 0), (0, size-1),
    (size-1, 0): scale (size-1)/s, the box centre lands on ((size-1)/2, (size-1)/2). The three
    corners fit a similarity exactly, so the matrix is written in closed form.

    Args:
        box: (4,) x1 (left), y1 (top), x2 (right), y2 (bottom) in pixels.

    Returns:
        (2, 3) float64 M with crop = M[:, :2] @ photo + M[:, 2] (x right, y down, pixel centres at
        integers).

    Raises:
        ValueError: the box is empty, inverted or not finite.
    """
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)[:4]
    old_size = (x2 - x1 + y2 - y1) / 2.0  # MICA's expression, same float rounding
    if not np.isfinite(old_size) or old_size <= 0 or not np.isfinite([x1, y1, x2, y2]).all():
        raise UserError(f"empty or invalid face box {list(np.asarray(box).ravel())} (need left < right, top < bottom)")
    side = int(old_size * scale)
    if side <= 0:
        raise UserError(f"face box {list(np.asarray(box).ravel())} is too small for a crop")
    cx, cy = x2 - (x2 - x1) / 2.0, y2 - (y2 - y1) / 2.0
    k = (size - 1) / side
    return np.array([[k, 0.0, -k * (cx - side / 2.0)], [0.0, k, -k * (cy - side / 2.0)]])


def warp_bilinear(img: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Exact bilinear resampling of ``img`` under the affine map ``m`` (source -> output pixels).

    Every output pixel (x, y) samples the source at M^-1 (x, y) with float64 coordinates and weights
    (no 1/32-pixel coordinate grid as OpenCV's ``warpAffine``); source pixels outside the image
    count as 0 (scikit-image ``warp(order=1, mode='constant', cval=0)``). Only the four neighbours
    of each output pixel are read, so a large photo is never converted to float as a whole.

    Args:
        img: (H, W) or (H, W, C) image of any real dtype.
        m: (2, 3) affine matrix, output = m[:, :2] @ source + m[:, 2].
        size: output side in pixels.

    Returns:
        (size, size[, C]) float64.
    """
    img = np.asarray(img)
    a = np.asarray(m, dtype=np.float64)[:, :2]
    inv = np.linalg.inv(a)
    src0 = -inv @ np.asarray(m, dtype=np.float64)[:, 2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + src0[0]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + src0[1]
    h, w = img.shape[:2]
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = sx - x0, sy - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    out = np.zeros((size, size) + img.shape[2:], dtype=np.float64)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            weight = wx * wy * inside
            vals = img[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)].astype(np.float64)
            out += (weight.reshape(weight.shape + (1,) * (img.ndim - 2))) * vals
    return out


def crop_from_box(img: np.ndarray, box: np.ndarray, scale: float = 1.6, size: int = 224
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Square crop around a face box, as MICA prepares NoW images (``box_crop_matrix``), resampled
    bilinearly in float64 (``warp_bilinear``; MICA: scikit-image ``warp``, constant 0).

    Args:
        img: (H, W, 3) image (any real dtype; MICA passes the photo / 255).
        box: (4,) x1, y1, x2, y2 in pixels.

    Returns:
        (crop (size, size, 3) float64, never quantised; M (2, 3) mapping photo to crop pixels).
    """
    m = box_crop_matrix(box, scale, size)
    return warp_bilinear(img, m, size), m
