"""A tiny NoW-format benchmark folder for tests (no NoW data needed).

- ``ellipsoid_head()``: a closed head-sized ellipsoid mesh (mm) with 7 landmarks in NoW order.
- ``make_scan(...)``: a "scan" of a known mesh: its 1-subdivided vertices moved along the vertex
  normals by Gaussian noise, then by a known similarity; the true offsets are returned.
- ``write_now_folder(...)``: the NoW layout (image lists, iphone_pictures, detected_face boxes,
  scans, scans_lmks_onlypp) for given subjects/images.
- ``write_prediction(...)``: a predicted folder entry (``NAME.obj`` + ``NAME.npy``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from testing.geometry import rotvec_to_matrix
from testing.pp import write_pp
from utils.io import atomic_save_npy, atomic_write_bytes, atomic_write_text
from utils.mesh import write_mesh

NOW_IMAGES = Path("NoW_Dataset/final_release_version/iphone_pictures")
NOW_BOXES = Path("NoW_Dataset/final_release_version/detected_face")

# Landmark positions on the face side (+z) of the ellipsoid, (x, y) in mm, NoW order.
_LMK_XY = np.array([[-45.0, 25.0], [-15.0, 25.0], [15.0, 25.0], [45.0, 25.0], [0.0, -10.0], [-25.0, -40.0], [25.0, -40.0]])


def ellipsoid_head(subdivisions: int = 4, axes=(75.0, 105.0, 95.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ellipsoid mesh (mm) and 7 NoW-order landmarks on its +z side.

    Returns:
        vertices (V, 3), faces (F, 3), landmarks (7, 3); subdivisions 4 gives 2562 vertices.
    """
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    a = np.asarray(axes, dtype=np.float64)
    v = np.asarray(sphere.vertices) * a
    xy = _LMK_XY
    z = a[2] * np.sqrt(1.0 - (xy[:, 0] / a[0]) ** 2 - (xy[:, 1] / a[1]) ** 2)
    return v, np.asarray(sphere.faces, dtype=np.int64), np.column_stack([xy, z])


@dataclass
class Scan:
    """A synthetic scan: ``vertices`` (N,3), ``faces`` (M,3), ``landmarks`` (7,3) in the scan frame,
    the per-vertex signed normal ``offsets`` (N,) mm, and the similarity scan = s * x @ R.T + t."""

    vertices: np.ndarray
    faces: np.ndarray
    landmarks: np.ndarray
    offsets: np.ndarray
    scale: float
    rot: np.ndarray
    t: np.ndarray


def random_similarity(rng: np.random.Generator, scale: float | None = None, max_angle: float = 0.6):
    """(s, R, t): a random rotation (angle <= max_angle rad), translation ~ 50 mm, scale in [0.8, 1.25]."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    rot = rotvec_to_matrix(axis * rng.uniform(0.1, max_angle))
    s = float(rng.uniform(0.8, 1.25)) if scale is None else float(scale)
    return s, rot, rng.normal(scale=50.0, size=3)


def make_scan(vertices: np.ndarray, faces: np.ndarray, landmarks: np.ndarray, noise_mm: float,
              rng: np.random.Generator, scale: float | None = None, landmark_noise_mm: float = 0.0) -> Scan:
    """Scan of a known mesh (see module docstring). The noise is applied before the similarity,
    so the true scan-to-mesh distances are ``|offsets| * s``."""
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    sub_v, sub_f = trimesh.remesh.subdivide(mesh.vertices, mesh.faces)
    sub = trimesh.Trimesh(sub_v, sub_f, process=False)
    normals = np.asarray(sub.vertex_normals)
    offsets = rng.normal(scale=noise_mm, size=len(sub_v))
    noisy = np.asarray(sub_v) + offsets[:, None] * normals
    s, rot, t = random_similarity(rng, scale)
    lm = np.asarray(landmarks) + rng.normal(scale=landmark_noise_mm, size=(7, 3)) if landmark_noise_mm else np.asarray(landmarks)
    return Scan(s * noisy @ rot.T + t, np.asarray(sub_f), s * lm @ rot.T + t, offsets, s, rot, t)


def write_obj_scan(path: os.PathLike | str, scan: Scan) -> None:
    """Write a scan as OBJ (mm)."""
    write_mesh(path, scan.vertices, scan.faces)


def write_box(path: os.PathLike | str, left: float, top: float, right: float, bottom: float) -> None:
    """NoW ``detected_face`` box: ``np.save`` of a dict with left/right/top/bottom (pixels), as numpy
    1.x wrote the released files (protocol 3, ``numpy.core.multiarray`` names)."""
    from tests.legacy_pickle import npy_object_bytes

    box = {"left": float(left), "right": float(right), "top": float(top), "bottom": float(bottom)}
    atomic_write_bytes(path, npy_object_bytes(box))


def write_now_folder(root: os.PathLike | str, scans: Mapping[str, Scan],
                     images: Sequence[tuple[str, bytes, tuple[float, float, float, float]]] = (),
                     split: str = "validation") -> Path:
    """Write a NoW-layout folder.

    Args:
        root: folder to create.
        scans: subject -> Scan (written as ``scans/SUBJECT/SUBJECT.obj`` + ``scans_lmks_onlypp/SUBJECT/SUBJECT.pp``).
        images: (``SUBJECT/CHALLENGE/NAME.jpg``, encoded image bytes, box (left, top, right, bottom)).
            The image list holds these lines; with no images, ``image_lines`` must be written by
            the caller via ``write_image_list``.
    """
    root = Path(root)
    for subject, scan in scans.items():
        write_obj_scan(root / "scans" / subject / f"{subject}.obj", scan)
        write_pp(root / "scans_lmks_onlypp" / subject / f"{subject}.pp", scan.landmarks, f"{subject}.obj")
    lines = []
    for rel, data, box in images:
        lines.append(rel)
        atomic_write_bytes(root / NOW_IMAGES / rel, data)
        write_box((root / NOW_BOXES / rel).with_suffix(".npy"), *box)
    if images:
        write_image_list(root, lines, split)
    return root


def write_image_list(root: os.PathLike | str, lines: Sequence[str], split: str = "validation") -> Path:
    """``imagepaths{split}.txt`` with the given lines."""
    path = Path(root) / f"imagepaths{split}.txt"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_prediction(pred_dir: os.PathLike | str, rel_image: str, vertices: np.ndarray, faces: np.ndarray,
                     landmarks: np.ndarray, suffix: str = ".obj") -> Path:
    """``PRED/SUBJECT/CHALLENGE/NAME{suffix}`` and ``NAME.npy`` (7x3)."""
    stem = Path(pred_dir) / Path(rel_image).with_suffix("")
    write_mesh(stem.with_name(stem.name + suffix), vertices, faces)
    atomic_save_npy(stem.with_name(stem.name + ".npy"), np.asarray(landmarks, dtype=np.float64).reshape(7, 3))
    return stem


def kept_mask(scan_vertices: np.ndarray, lmks: np.ndarray) -> np.ndarray:
    """NoW's face crop, written out again from the protocol text for tests (independent of testing/)."""
    l = np.asarray(lmks)
    bridge = 0.5 * (l[1] + l[2])
    centre = l[4] + 0.3 * (bridge - l[4])
    radius = 0.7 * (np.sqrt(((l[0] - l[3]) ** 2).sum()) + np.sqrt(((bridge - l[4]) ** 2).sum()))
    return np.sqrt(((scan_vertices - centre) ** 2).sum(axis=1)) <= radius


__all__ = ["ellipsoid_head", "Scan", "random_similarity", "make_scan", "write_now_folder", "write_image_list",
           "write_prediction", "write_box", "kept_mask", "NOW_IMAGES", "NOW_BOXES"]
