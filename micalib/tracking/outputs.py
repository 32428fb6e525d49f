"""The original tracker's per-frame files: ``checkpoint/NNNNN.frame`` and friends.

``frame_dict`` builds exactly the keys, shapes and dtypes of the original tracker's files (all
arrays float32 numpy): ``flame`` {exp (1,100), shape (1,300), tex (1,140), sh (1,9,3), eyes (1,12), eyelids (1,2),
jaw (1,6)}, ``camera`` (PyTorch3D) {R (1,6), t (1,3), fl (1,1), pp (1,2)}, ``opencv`` {R (1,3,3),
t (1,3), K (1,3,3)}, ``img_size`` (2,) [height, width], ``frame_id`` ('00012'), ``global_step``
(int). ``read_frame`` reads one back without ``weights_only=False``.

Written as the original's clients read them:

- numpy arrays are pickled under numpy 1.x's module names (``numpy.core.multiarray``,
  ``utils.numpy1_pickle``), so clients on numpy < 1.26 open them (numpy 2 reads them too);
- ``opencv`` K is in the renderers' pixel convention, pixel i's centre at i + 0.5 (the original's
  K: PyTorch3D's ``opencv_from_cameras_projection`` puts a centred camera's principal point at
  width / 2; instant-ngp, 3DGS and PyTorch3D render so). Inside the tracker, and in ``crop.json``,
  ``landmarks.npz`` and the overlay, pixel centres are integers (OpenCV's convention); ``k_convert``
  is the one conversion between the two, used when writing K and when reading it back.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from micalib.tracking.camera import matrix_to_6d, opencv_to_pytorch3d
from micalib.tracking.model import rotation_matrices
from utils.checkpoint import load_checkpoint_file
from utils.errors import MICAError
from utils.io import atomic_path
from utils.numpy1_pickle import torch_save_numpy1

PathLike = Union[str, os.PathLike]  # noqa: UP007
N_TEX, N_SH = 140, 9
# the renderers' pixel centre (i + 0.5) minus OpenCV's (i), in pixels
FILE_PIXEL_SHIFT = 0.5


def k_convert(k: np.ndarray, to: str) -> np.ndarray:
    """K between OpenCV's pixel convention (``to="opencv"``, pixel centres at integers: the
    tracker's) and the files' (``to="file"``, pixel i's centre at i + 0.5: the original's and its
    clients'). Only the principal point moves, by half a pixel."""
    if to not in ("file", "opencv"):
        raise ValueError(f"k_convert: to must be 'file' or 'opencv', not {to!r}")
    out = np.array(k, dtype=np.float64).reshape(3, 3)
    out[:2, 2] += FILE_PIXEL_SHIFT if to == "file" else -FILE_PIXEL_SHIFT
    return out


def frame_name(k: int) -> str:
    """5-digit output frame number, as the original's file names and ``frame_id``."""
    return f"{int(k):05d}"


def frame_dict(exp: np.ndarray, pose9: np.ndarray, eyelids: np.ndarray, identity: np.ndarray,
               r_cv: np.ndarray, t_cv: np.ndarray, k: np.ndarray, image_size: tuple[int, int], frame: int,
               global_step: int, tex: np.ndarray | None = None, sh: np.ndarray | None = None) -> dict[str, Any]:
    """The ``.frame`` dict of one frame (see the module docstring); ``k`` in OpenCV's pixel convention."""
    f32 = np.float32
    mats = rotation_matrices(np.asarray(pose9, np.float64))  # (3, 3, 3) jaw, left eye, right eye
    k = k_convert(k, "file")
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
    """``torch.save`` of the dict with numpy-1 names, atomically."""
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            torch_save_numpy1(data, f)


def frame_k(data: dict[str, Any]) -> np.ndarray:
    """A read ``.frame``'s ``opencv`` K in OpenCV's pixel convention (the tracker's)."""
    return k_convert(np.asarray(data["opencv"]["K"], np.float64).reshape(3, 3), "opencv")


# What to do with a .frame that cannot be used: a re-run of track.py tracks a deleted frame again
# (and, resuming, one it finds damaged: ``resume.finished_frames``).
FRAME_FIX = "delete it and run track.py again to track that frame again"


def read_frame(path: PathLike) -> dict[str, Any]:
    """Read a ``.frame`` file (ours or the original's) without running code from it, through the
    project's one checkpoint reader (``utils.checkpoint.load_checkpoint_file``: tensors and numpy
    arrays under numpy-1 and numpy-2 names load, anything else is refused unexecuted).

    Raises:
        MICAError: one line naming the file and the fix: missing; damaged (truncated, empty,
            random bytes, a pickle that is no ``torch.save`` file); holding objects other than
            tensors and arrays (refused, named); or without the flame/camera/opencv blocks.
    """
    path = Path(path)
    try:
        data = load_checkpoint_file(path, what="tracking checkpoint", fix=FRAME_FIX,
                                    refused_fix=f"use a .frame written by a tracker you trust, or {FRAME_FIX}")
    except FileNotFoundError:
        raise MICAError(f"tracking checkpoint {path} not found") from None
    if not isinstance(data, dict) or not {"flame", "opencv", "camera"} <= set(data):
        raise MICAError(f"tracking checkpoint {path} lacks the flame/camera/opencv blocks (not a .frame file); {FRAME_FIX}")
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
        arr = np.asarray(value.detach().cpu()) if hasattr(value, "detach") else np.asarray(value)  # a tensor
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

