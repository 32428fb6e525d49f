"""Rotation and camera conventions of the original tracker's files.

- 6D rotations are PyTorch3D's: the **first two rows** of the 3x3 matrix, concatenated; decoding
  Gram-Schmidts them and the third row is their cross product.
- The ``camera`` block is PyTorch3D's (row vectors, ``X_view = X R + T``; focal length ``fl`` and
  principal point ``pp`` in normalised device units), the ``opencv`` block is ``x = pi(K (R X + t))``
  in pixels of the cropped frame. Conversion (as the original tracker): negate the first two columns of R and
  the first two entries of T, transpose R; with s = min(H, W) / 2 and c = (W/2, H/2):
  principal point = -pp * s + c, focal = fl * s.

Everything here works on numpy float arrays (batched on the leading axes) unless it says torch.
"""
from __future__ import annotations

import numpy as np
import torch

_FLIP = np.array([-1.0, -1.0, 1.0])


def matrix_to_6d(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations -> (..., 6): the first two rows, concatenated (PyTorch3D)."""
    r = np.asarray(r)
    return r[..., :2, :].reshape(r.shape[:-2] + (6,))


def rotation_6d_to_matrix(d6: np.ndarray) -> np.ndarray:
    """(..., 6) -> (..., 3, 3): rows b1 = n(a1), b2 = n(a2 - (b1.a2) b1), b3 = b1 x b2 (PyTorch3D)."""
    d6 = np.asarray(d6, dtype=np.float64)
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = a1 / np.linalg.norm(a1, axis=-1, keepdims=True)
    b2 = a2 - (b1 * a2).sum(-1, keepdims=True) * b1
    b2 = b2 / np.linalg.norm(b2, axis=-1, keepdims=True)
    return np.stack([b1, b2, np.cross(b1, b2)], axis=-2)


def axis_angle_to_matrix(aa: np.ndarray) -> np.ndarray:
    """(..., 3) axis-angle (radians) -> (..., 3, 3) (Rodrigues; exact at zero)."""
    aa = np.asarray(aa, dtype=np.float64)
    theta = np.linalg.norm(aa, axis=-1)[..., None, None]
    k = skew(aa)
    small = theta < 1e-8
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta ** 2 / 6, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta ** 2 / 24, (1 - np.cos(safe)) / safe ** 2)
    return np.eye(3) + a * k + b * (k @ k)


def matrix_to_axis_angle(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotations (angle < pi) -> (..., 3) axis-angle."""
    r = np.asarray(r, dtype=np.float64)
    cos = np.clip((np.trace(r, axis1=-2, axis2=-1) - 1) / 2, -1.0, 1.0)
    theta = np.arccos(cos)
    v = np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    sin = np.sin(theta)
    scale = np.where(theta < 1e-6, 0.5 + theta ** 2 / 12, theta / (2 * np.where(theta < 1e-6, 1.0, sin)))
    return v * scale[..., None]


def skew(v: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 3, 3) cross-product matrices, skew(a) @ b = a x b."""
    v = np.asarray(v, dtype=np.float64)
    z = np.zeros(v.shape[:-1])
    return np.stack([np.stack([z, -v[..., 2], v[..., 1]], -1),
                     np.stack([v[..., 2], z, -v[..., 0]], -1),
                     np.stack([-v[..., 1], v[..., 0], z], -1)], -2)


def intrinsics(focal: float, cx: float, cy: float) -> np.ndarray:
    """3x3 pinhole K in pixels."""
    return np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])


def project(points: np.ndarray, k: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(N, 3) points -> (N, 2) pixels, x = pi(K (R X + t)) (OpenCV)."""
    cam = points @ np.asarray(r).T + np.asarray(t)
    uvw = cam @ np.asarray(k).T
    return uvw[:, :2] / uvw[:, 2:3]


def opencv_to_pytorch3d(r: np.ndarray, t: np.ndarray, k: np.ndarray,
                        image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV R (3,3), t (3,), K (3,3) of an image (H, W) -> PyTorch3D R (3,3), T (3,), fl (1,), pp (2,).

    The inverse of ``pytorch3d_to_opencv``.
    """
    h, w = image_size
    s = min(h, w) / 2.0
    r_p3d = np.asarray(r, dtype=np.float64).T * _FLIP[None, :]
    t_p3d = np.asarray(t, dtype=np.float64) * _FLIP
    fl = np.array([k[0, 0] / s])
    pp = np.array([(w / 2.0 - k[0, 2]) / s, (h / 2.0 - k[1, 2]) / s])
    return r_p3d, t_p3d, fl, pp


def pytorch3d_to_opencv(r: np.ndarray, t: np.ndarray, fl: np.ndarray, pp: np.ndarray,
                        image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch3D R (3,3) (row vectors), T (3,), fl, pp (NDC) -> OpenCV R, t, K in pixels (the conversion above)."""
    h, w = image_size
    s = min(h, w) / 2.0
    r_cv = (np.asarray(r, dtype=np.float64) * _FLIP[None, :]).T
    t_cv = np.asarray(t, dtype=np.float64).reshape(3) * _FLIP
    f = float(np.asarray(fl).reshape(-1)[0]) * s
    pp = np.asarray(pp, dtype=np.float64).reshape(2)
    return r_cv, t_cv, intrinsics(f, -pp[0] * s + w / 2.0, -pp[1] * s + h / 2.0)


def torch_rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """Torch version of ``rotation_6d_to_matrix`` (differentiable)."""
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, torch.cross(b1, b2, dim=-1)], dim=-2)
