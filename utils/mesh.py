"""Mesh files (.ply / .obj) in millimetres, written atomically through trimesh."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import trimesh

from utils.errors import MICAError
from utils.io import atomic_path

PathLike = Union[str, os.PathLike]
MESH_SUFFIXES = (".ply", ".obj")


def _as_arrays(vertices: object, faces: object) -> Tuple[np.ndarray, np.ndarray]:
    if hasattr(vertices, "detach"):
        vertices = vertices.detach().cpu().numpy()
    if hasattr(faces, "detach"):
        faces = faces.detach().cpu().numpy()
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3), got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or (f.size and (f.min() < 0 or f.max() >= len(v))):
        raise ValueError(f"faces must be (F, 3) indices into {len(v)} vertices, got {f.shape}")
    return v, f


def write_mesh(path: PathLike, vertices_mm: object, faces: object) -> Path:
    """Write a triangle mesh; the format follows the suffix (.ply binary, .obj text).

    Args:
        path: output file (.ply or .obj); parent folders are created.
        vertices_mm: (V, 3) vertices (numpy or torch), written as given (MICA: millimetres).
        faces: (F, 3) vertex indices.

    Returns:
        ``path`` as a Path. No vertex colours, normals or textures are written.

    Raises:
        ValueError: unsupported suffix or malformed arrays.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise ValueError(f"{path}: mesh files must end in .ply or .obj")
    v, f = _as_arrays(vertices_mm, faces)
    mesh = trimesh.Trimesh(vertices=v, faces=f, process=False)
    if suffix == ".obj":
        data = trimesh.exchange.obj.export_obj(mesh, include_normals=False, include_color=False,
                                               include_texture=False, digits=6)
        payload = data.encode("utf-8")
    else:
        payload = trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=False,
                                                  include_attributes=False)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return path


def read_mesh(path: PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """Read a .ply / .obj mesh, keeping the vertex order.

    Returns:
        vertices (V, 3) float64 and faces (F, 3) int64.

    Raises:
        FileNotFoundError: no such file.
        MICAError: unreadable file or not a triangle mesh.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file {path} does not exist")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise ValueError(f"{path}: mesh files must end in .ply or .obj")
    try:
        mesh = trimesh.load(path, process=False, maintain_order=True, force="mesh")
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        raise MICAError(f"{path}: cannot read mesh ({type(e).__name__}: {first})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.vertices) == 0:
        raise MICAError(f"{path}: not a triangle mesh (no vertices/faces found)")
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
