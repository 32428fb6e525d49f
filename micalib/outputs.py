"""Writing one reconstruction to disk in MICA's demo layout (all files atomic).

``DST/mesh.ply``, ``DST/mesh.obj`` (millimetres), ``DST/identity.npy`` (n_shape FLAME identity
coefficients), ``DST/kpt7.npy`` (7, 3) mm, ``DST/kpt68.npy`` (1, 68, 3) mm and, when given, a
rendered preview ``DST/render.png``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from utils.image_io import write_image
from utils.io import atomic_save_npy, written_file
from utils.mesh import write_mesh

OUTPUT_FILES = ("mesh.ply", "mesh.obj", "identity.npy", "kpt7.npy", "kpt68.npy")


def outputs_done(dst: Path, render: bool) -> bool:
    """True when every output file of a reconstruction exists and is not empty (they are written
    atomically; an empty one can only be left by a power failure before the data reached the disk)."""
    names = OUTPUT_FILES + (("render.png",) if render else ())
    return all(written_file(Path(dst) / n) for n in names)


def write_reconstruction(
    dst: Path,
    vertices_mm: np.ndarray,
    faces: np.ndarray,
    identity: np.ndarray,
    kpt68_mm: np.ndarray,
    kpt7_mm: np.ndarray,
    preview: Optional[np.ndarray] = None,
    fsync: bool = False,
) -> None:
    """Write one face's outputs into ``dst`` (created if needed).

    Args:
        vertices_mm: (V, 3) canonical FLAME vertices in millimetres.
        faces: (F, 3) triangle indices.
        identity: (n_shape,) FLAME identity coefficients.
        kpt68_mm: (68, 3) landmarks in mm (saved as (1, 68, 3) like the original).
        kpt7_mm: (7, 3) NoW landmarks in mm.
        preview: optional RGB uint8 image saved as ``render.png``.
        fsync: also flush each file to the disk (off: these are bulk outputs, see ``utils.io``;
            the files are atomic either way, and an empty one left by a power failure counts as
            not done).
    """
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    write_mesh(dst / "mesh.ply", vertices_mm, faces, fsync=fsync)
    write_mesh(dst / "mesh.obj", vertices_mm, faces, fsync=fsync)
    atomic_save_npy(dst / "identity.npy", np.asarray(identity, dtype=np.float32), fsync=fsync)
    atomic_save_npy(dst / "kpt7.npy", np.asarray(kpt7_mm, dtype=np.float32).reshape(7, 3), fsync=fsync)
    atomic_save_npy(dst / "kpt68.npy", np.asarray(kpt68_mm, dtype=np.float32).reshape(1, 68, 3), fsync=fsync)
    if preview is not None:
        write_image(dst / "render.png", preview, fsync=fsync)
