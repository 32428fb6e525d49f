"""The demo's output layout: where each input's outputs go (``output_names``) and writing one
reconstruction there (all files atomic).

``DST/mesh.ply``, ``DST/mesh.obj`` (millimetres), ``DST/identity.npy`` (n_shape FLAME identity
coefficients), ``DST/kpt7.npy`` (7, 3) mm, ``DST/kpt68.npy`` (1, 68, 3) mm and, when given, a
rendered preview ``DST/render.png``.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path, PurePath

import numpy as np

from utils.image_io import write_image
from utils.io import atomic_save_npy, written_file
from utils.mesh import write_mesh

OUTPUT_FILES = ("mesh.ply", "mesh.obj", "identity.npy", "kpt7.npy", "kpt68.npy")
RENDER_FILE = "render.png"
FUSED = "fused"  # OUTPUT/SUBFOLDER/fused/ (--fuse): an input may not take this name


def output_files(render: bool) -> list[str]:
    """The files of one reconstruction folder."""
    return list(OUTPUT_FILES) + ([RENDER_FILE] if render else [])


def output_names(inputs: Sequence[PurePath]) -> dict[PurePath, str]:
    """``NAME`` of every input, given as paths relative to the input root: MICA's ``OUTPUT/NAME/``
    with NAME = the path without its extension, unless that would lose or mix results.

    Unlike MICA, which writes ``face.jpg``, ``face.JPG`` and ``face.png`` of one folder into the same
    ``OUTPUT/face/`` (the last one wins), inputs of one folder whose stems are equal ignoring case
    each use ``stem__ext`` (extension lower-cased: ``face__jpg``, ``face__png``). So do inputs that
    would take a reserved name: ``fused`` (``--fuse``'s output) and ``NAME_k`` where NAME is the stem
    of another input of the folder (``--all-faces`` writes ``NAME_0``, ``NAME_1``, ...). Names that
    are still equal ignoring case get ``_2``, ``_3``, ... in the sorted order of the inputs (the first
    keeps its name), so that no two inputs of one folder share an output folder, also on a
    case-insensitive file system, and none takes another's ``NAME_k``.
    """
    by_folder: dict[PurePath, list[PurePath]] = defaultdict(list)
    for rel in inputs:
        by_folder[rel.parent].append(rel)
    names: dict[PurePath, str] = {}
    for folder, members in by_folder.items():
        members = sorted(members, key=str)
        stems = defaultdict(int)
        for rel in members:
            stems[rel.stem.casefold()] += 1
        chosen = []
        for rel in members:
            key = rel.stem.casefold()
            k_name = re.fullmatch(r"(.+)_\d+", key)
            clash = (stems[key] > 1 or key == FUSED
                     or (k_name is not None and k_name.group(1) in stems))
            chosen.append(f"{rel.stem}__{rel.suffix[1:].lower()}" if clash else rel.stem)
        # a final name may still look like another's --all-faces output (x.jpg + x.png -> x__jpg, x__png
        # beside x__jpg_0.jpg): those take their extension too, until no name is another's NAME_k
        while True:
            finals = {c.casefold() for c in chosen}
            again = [i for i, c in enumerate(chosen)
                     if (m := re.fullmatch(r"(.+)_\d+", c.casefold())) is not None and m.group(1) in finals
                     and not c.casefold().endswith("__" + members[i].suffix[1:].lower())]
            if not again:
                break
            for i in again:
                chosen[i] = f"{chosen[i]}__{members[i].suffix[1:].lower()}"
        taken = {c.casefold() for c in chosen}
        seen: set = set()
        for rel, name in zip(members, chosen, strict=True):
            if name.casefold() in seen:
                k = 2
                while f"{name}_{k}".casefold() in taken or f"{name}_{k}".casefold() in seen:
                    k += 1
                name = f"{name}_{k}"
            seen.add(name.casefold())
            names[rel] = name if str(folder) == "." else f"{folder.as_posix()}/{name}"
    return names


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
    preview: np.ndarray | None = None,
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
