"""Mesh files (.ply / .obj) in millimetres: written atomically by our own encoders (binary PLY
as trimesh writes it, OBJ text as ``%.6f``), read through trimesh."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import trimesh

from utils.errors import MICAError, UserError, UserFileNotFound
from utils.io import atomic_write_bytes

PathLike = str | os.PathLike
MESH_SUFFIXES = (".ply", ".obj")


def _as_arrays(vertices: object, faces: object) -> tuple[np.ndarray, np.ndarray]:
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


_FACE_LINES: tuple[np.ndarray, bytes] = (np.empty((0, 3), np.int64), b"")  # last faces -> their "f" lines
_OBJ_DIGITS = 6
# |x| * 10**6 of a float32 is an integer-valued float64 computed exactly while |x| < this
_FIXED_MAX = 1e9


def _fixed6_vertex_lines(v: np.ndarray) -> bytes | None:
    """``"v %.6f %.6f %.6f\\n"`` lines built from digits in numpy (faster than ``%``-formatting,
    mostly outside the GIL, so worker threads writing meshes run side by side); None unless every
    value is a float32 (what FLAME gives) of magnitude below 1e9.

    Exact: a float32 times 10**6 is exact in float64 (24 + 20 significant bits < 53), so rounding
    it half-to-even gives the correctly rounded 6 decimals, as C's printf does.
    """
    if v.size == 0 or not (np.array_equal(v.astype(np.float32), v) and np.abs(v).max() < _FIXED_MAX):
        return None
    q = np.abs(np.round(v * 10.0 ** _OBJ_DIGITS)).astype(np.int64)
    whole, frac = np.divmod(q, 10 ** _OBJ_DIGITS)
    n_whole = len(str(int(whole.max())))
    width = 1 + n_whole + 1 + _OBJ_DIGITS + 1  # sign, digits, '.', decimals, separator; 0 = nothing
    chars = np.zeros(v.shape + (width,), dtype=np.uint8)
    chars[..., 0] = np.where(np.signbit(v), ord("-"), 0)  # also "-0.000000" as printf writes it
    for k in range(n_whole):  # units first; leading zeros of the whole part stay 0 (dropped)
        digit = (whole % 10).astype(np.uint8) + ord("0")
        chars[..., n_whole - k] = digit if k == 0 else np.where(whole > 0, digit, 0)
        whole //= 10
    chars[..., 1 + n_whole] = ord(".")
    for k in range(_OBJ_DIGITS):
        chars[..., 1 + n_whole + _OBJ_DIGITS - k] = (frac % 10).astype(np.uint8) + ord("0")
        frac //= 10
    chars[..., -1] = ord(" ")
    chars[:, -1, -1] = ord("\n")
    lines = np.empty((len(v), 2 + 3 * width), dtype=np.uint8)
    lines[:, :2] = np.frombuffer(b"v ", dtype=np.uint8)
    lines[:, 2:] = chars.reshape(len(v), -1)
    return lines[lines != 0].tobytes()


def obj_text(vertices: np.ndarray, faces: np.ndarray) -> bytes:
    """Wavefront OBJ text: ``v x y z`` lines (6 decimals) then ``f i j k`` lines (1-based).

    Vertex lines from digits computed in numpy for float32 values (:func:`_fixed6_vertex_lines`),
    else one C-level string formatting per block (faster than trimesh's exporter: bench/README.md); the face
    lines of the last face array are kept, since every FLAME mesh shares them.
    """
    global _FACE_LINES
    v = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(faces, dtype=np.int64)
    cached_faces, face_lines = _FACE_LINES
    if not np.array_equal(cached_faces, f):
        face_lines = (("f %d %d %d\n" * len(f)) % tuple((f + 1).ravel().tolist())).encode("ascii")
        _FACE_LINES = (f.copy(), face_lines)
    vertex_lines = _fixed6_vertex_lines(v)
    if vertex_lines is None:
        vertex_lines = (("v %.6f %.6f %.6f\n" * len(v)) % tuple(v.ravel().tolist())).encode("ascii")
    return vertex_lines + face_lines


def ply_bytes(vertices: np.ndarray, faces: np.ndarray, unit: str = "millimetres") -> bytes:
    """Binary little-endian PLY: float32 ``x y z`` per vertex, ``uchar`` count + 3 ``int`` per face
    (the layout trimesh writes and reads); ``unit`` (of the vertices as given: the demo's meshes are
    millimetres, the tracker's metres) is named in the header's comment line."""
    if not unit or not unit.isprintable() or not unit.isascii():
        raise ValueError(f"ply_bytes: unit must be a word such as 'millimetres', not {unit!r}")
    v = np.ascontiguousarray(vertices, dtype="<f4")
    tri = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    tri["n"], tri["i"] = 3, faces
    header = (f"ply\nformat binary_little_endian 1.0\ncomment MICA FLAME mesh, {unit}\n"
              f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
              f"element face {len(tri)}\nproperty list uchar int vertex_indices\nend_header\n")
    return header.encode("ascii") + v.tobytes() + tri.tobytes()


def write_mesh(path: PathLike, vertices_mm: object, faces: object, fsync: bool = True) -> Path:
    """Write a triangle mesh; the format follows the suffix (.ply binary, .obj text).

    Args:
        path: output file (.ply or .obj); parent folders are created.
        vertices_mm: (V, 3) vertices (numpy or torch), written as given (MICA: millimetres).
        faces: (F, 3) vertex indices.
        fsync: see ``utils.io``.

    Returns:
        ``path`` as a Path. No vertex colours, normals or textures are written.

    Raises:
        ValueError: unsupported suffix or malformed arrays.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise UserError(f"{path}: mesh files must end in .ply or .obj")
    v, f = _as_arrays(vertices_mm, faces)
    payload = obj_text(v, f) if suffix == ".obj" else ply_bytes(v, f)
    atomic_write_bytes(path, payload, fsync=fsync)
    return path


def read_mesh(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a .ply / .obj mesh, keeping the vertex order.

    Returns:
        vertices (V, 3) float64 and faces (F, 3) int64.

    Raises:
        FileNotFoundError: no such file.
        MICAError: unreadable file or not a triangle mesh.
    """
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFound(f"mesh file {path} does not exist")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise UserError(f"{path}: mesh files must end in .ply or .obj")
    try:
        mesh = trimesh.load(path, process=False, maintain_order=True, force="mesh")
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        raise MICAError(f"{path}: cannot read mesh ({type(e).__name__}: {first})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.vertices) == 0:
        raise MICAError(f"{path}: not a triangle mesh (no vertices/faces found)")
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
