"""The original tracker's per-frame files: ``checkpoint/NNNNN.frame`` and friends.

``frame_dict`` builds exactly the keys, shapes and dtypes of the original tracker's files (all
arrays float32 numpy): ``flame`` {exp (1,100), shape (1,300), tex (1,140), sh (1,9,3), eyes (1,12), eyelids (1,2),
jaw (1,6)}, ``camera`` (PyTorch3D) {R (1,6), t (1,3), fl (1,1), pp (1,2)}, ``opencv`` {R (1,3,3),
t (1,3), K (1,3,3)}, ``img_size`` (2,) [height, width], ``frame_id`` ('00012'), ``global_step``
(int). ``read_frame`` reads one back without ``weights_only=False``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from micalib.tracking.camera import matrix_to_6d, opencv_to_pytorch3d
from micalib.tracking.model import rotation_matrices
from utils.checkpoint import load_checkpoint_file
from utils.errors import MICAError
from utils.io import atomic_path

PathLike = Union[str, os.PathLike]  # noqa: UP007
N_TEX, N_SH = 140, 9


def frame_name(k: int) -> str:
    """5-digit output frame number, as the original's file names and ``frame_id``."""
    return f"{int(k):05d}"


def frame_dict(exp: np.ndarray, pose9: np.ndarray, eyelids: np.ndarray, identity: np.ndarray,
               r_cv: np.ndarray, t_cv: np.ndarray, k: np.ndarray, image_size: tuple[int, int], frame: int,
               global_step: int, tex: np.ndarray | None = None, sh: np.ndarray | None = None) -> dict[str, Any]:
    """The ``.frame`` dict of one frame (see the module docstring)."""
    f32 = np.float32
    mats = rotation_matrices(np.asarray(pose9, np.float64))  # (3, 3, 3) jaw, left eye, right eye
    r_p3d, t_p3d, fl, pp = opencv_to_pytorch3d(r_cv, t_cv, k, image_size)
    shape = np.zeros((1, 300), f32)
    ident = np.asarray(identity, f32).reshape(-1)[:300]
    shape[0, : len(ident)] = ident
    return {
        "flame": {
            "exp": np.asarray(exp, f32).reshape(1, 100),
            "shape": shape,
            "tex": (np.zeros((1, N_TEX), f32) if tex is None else np.asarray(tex, f32).reshape(1, N_TEX)),
            "sh": (np.zeros((1, N_SH, 3), f32) if sh is None else np.asarray(sh, f32).reshape(1, N_SH, 3)),
            "eyes": np.concatenate([matrix_to_6d(mats[1]), matrix_to_6d(mats[2])]).astype(f32).reshape(1, 12),
            "eyelids": np.asarray(eyelids, f32).reshape(1, 2),
            "jaw": matrix_to_6d(mats[0]).astype(f32).reshape(1, 6),
        },
        "camera": {
            "R": matrix_to_6d(r_p3d).astype(f32).reshape(1, 6),
            "t": t_p3d.astype(f32).reshape(1, 3),
            "fl": fl.astype(f32).reshape(1, 1),
            "pp": pp.astype(f32).reshape(1, 2),
        },
        "opencv": {
            "R": np.asarray(r_cv, f32).reshape(1, 3, 3),
            "t": np.asarray(t_cv, f32).reshape(1, 3),
            "K": np.asarray(k, f32).reshape(1, 3, 3),
        },
        "img_size": np.asarray(image_size, np.int64).reshape(2),
        "frame_id": frame_name(frame),
        "global_step": int(global_step),
    }


def save_frame(path: PathLike, data: dict[str, Any], fsync: bool = False) -> None:
    """``torch.save`` of the dict, atomically."""
    with atomic_path(path, fsync=fsync) as tmp:
        torch.save(data, tmp)


def read_frame(path: PathLike) -> dict[str, Any]:
    """Read a ``.frame`` file (ours or the original's) without running code from it, through the
    project's one checkpoint reader (``utils.checkpoint.load_checkpoint_file``: tensors and numpy
    arrays under numpy-1 and numpy-2 names load, anything else is refused unexecuted)."""
    path = Path(path)
    try:
        data = load_checkpoint_file(path, what="tracking checkpoint")
    except FileNotFoundError:
        raise MICAError(f"tracking checkpoint {path} not found") from None
    except MICAError as e:
        raise MICAError(f"{e}; delete it to track that frame again") from None
    if not isinstance(data, dict) or not {"flame", "opencv", "camera"} <= set(data):
        raise MICAError(f"tracking checkpoint {path} lacks the flame/camera/opencv blocks; delete it to track again")
    return data


# The arrays of a finished frame: (block, key) -> shape (float32 as frame_dict writes them).
FRAME_SHAPES = {("flame", "exp"): (1, 100), ("flame", "shape"): (1, 300), ("flame", "tex"): (1, N_TEX),
                ("flame", "sh"): (1, N_SH, 3), ("flame", "eyes"): (1, 12), ("flame", "eyelids"): (1, 2),
                ("flame", "jaw"): (1, 6), ("camera", "R"): (1, 6), ("camera", "t"): (1, 3), ("camera", "fl"): (1, 1),
                ("camera", "pp"): (1, 2), ("opencv", "R"): (1, 3, 3), ("opencv", "t"): (1, 3), ("opencv", "K"): (1, 3, 3)}


def frame_problem(data: dict[str, Any]) -> str | None:
    """What makes a read-back ``.frame`` dict unusable as a finished frame (a missing array, a wrong
    shape, a NaN or infinite value), or None when it has every array of ``frame_dict`` with its
    shape and finite values."""
    for (block, key), shape in FRAME_SHAPES.items():
        sub = data.get(block)
        value = sub.get(key) if isinstance(sub, dict) else None
        if value is None:
            return f"{block}.{key} is missing"
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if arr.dtype.kind not in "fiu":
            return f"{block}.{key} is not numbers ({arr.dtype})"
        if tuple(arr.shape) != shape:
            return f"{block}.{key} has shape {tuple(arr.shape)}, not {shape}"
        if not np.isfinite(arr).all():
            return f"{block}.{key} holds NaN or infinite values"
    size = np.asarray(data.get("img_size", ()))
    if size.shape != (2,) or size.dtype.kind not in "iu" or (size <= 0).any():
        return f"img_size is {size.tolist()}, not [height, width]"
    return None


def load_identity_npy(path: PathLike, cached: bool = False) -> np.ndarray:
    """MICA's (300,) float32 identity coefficients from a ``.npy`` (also (1, 300)); ``cached``: it is
    the run's own ``OUT/NAME/identity.npy`` (the fix is then to delete it, so MICA computes it again).

    Raises:
        MICAError: an unreadable, empty, pickled or truncated file, strings, a wrong shape, NaN/inf.
    """
    what = f"cached identity {path}" if cached else f"identity {path}"
    fix = "delete it and run again (MICA computes it again from the frames)" if cached else "pass MICA's identity.npy"
    try:
        ident = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise MICAError(f"{what} is not a readable .npy ({type(e).__name__}: {str(e)[:80] or 'empty file'}); {fix}") from None
    if not isinstance(ident, np.ndarray) or ident.dtype.kind not in "fiu":
        kind = "an .npz archive" if not isinstance(ident, np.ndarray) else f"{ident.dtype} values, not numbers"
        raise MICAError(f"{what} holds {kind}; {fix}")
    if tuple(ident.shape) not in ((300,), (1, 300)):
        raise MICAError(f"{what} has shape {tuple(ident.shape)}, not MICA's (300,) coefficients; {fix}")
    ident = ident.astype(np.float32).reshape(-1)
    if not np.isfinite(ident).all():
        raise MICAError(f"{what} holds non-finite values (NaN/inf); {fix}")
    return ident
