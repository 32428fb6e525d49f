"""ArcFace alignment: 5 keypoints -> similarity transform -> 112x112 (or 224x224) crop.

Keypoint order everywhere: left eye, right eye, nose tip, left mouth corner, right mouth corner,
in image pixel coordinates (x right, y down); "left" is the image left, as insightface returns them.
"""
from __future__ import annotations

import cv2
import numpy as np

__all__ = ["ARCFACE_TEMPLATE", "estimate_similarity", "estimate_norm", "norm_crop", "to_network_input",
           "crop_from_box"]

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
        raise ValueError("estimate_similarity: the source points coincide (degenerate keypoints)")
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


def crop_from_box(img: np.ndarray, box: np.ndarray, scale: float = 1.6, size: int = 224
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Square crop around a detection box, as MICA prepares NoW images.

    The crop is centred on the box centre and spans ``scale`` x mean(box width, box height)
    pixels of the photo, resampled (similarity, no rotation) to ``size`` x ``size``.

    Args:
        img: (H, W, 3) image.
        box: (4,) x1, y1, x2, y2 in pixels.

    Returns:
        (crop (size, size, 3), M (2, 3)) where M maps photo pixels to crop pixels.
    """
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)[:4]
    extent = scale * ((x2 - x1) + (y2 - y1)) / 2.0
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError(f"crop_from_box: empty or invalid box {box}")
    s = size / extent
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    m = np.array([[s, 0.0, size / 2.0 - s * cx], [0.0, s, size / 2.0 - s * cy]])
    crop = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    return crop, m
