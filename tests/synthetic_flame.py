"""A synthetic FLAME 2020 model written in the real file formats (for tests; no licensed data).

``write_synthetic_flame(folder, seed)`` writes into ``folder``:

- ``generic_model.pkl``: a pickle (protocol 2, latin-1 loadable) dict with the keys of the real
  file (``f, v_template, shapedirs, posedirs, J_regressor, weights, kintree_table, J, bs_style,
  bs_type``); ``v_template, shapedirs, posedirs, weights, J`` are pickled as chumpy does it:
  ``chumpy.ch.Ch`` built with NEWOBJ, then BUILD with chumpy's whole state (``x``,
  ``_dirty_vars=set(['x'])``, ``_itr``, ``_make_dense``, ``_make_sparse``, ``_depends_on_deps``);
  ``J_regressor`` as an old-scipy ``scipy.sparse.csc.csc_matrix``; the root parent in
  ``kintree_table`` as 2**32-1; binary data as Python-2 ``str``; Python-2 global names
  (``__builtin__``, ``numpy.core.multiarray``). The globals are exactly those MICA_FACTS lists for
  protocol 2. chumpy and old scipy are never imported: throwaway classes are written by name
  (``tests/legacy_pickle.py``).
- ``landmark_embedding.npy`` (numpy-1 ``np.save`` of an object array of a dict; dynamic entries
  are torch tensors), ``FLAME_masks.pkl`` (Python 2, protocol 0, as the real file) and
  ``head_template.obj``.

By default (``real=False``) a small random but valid head-like topology with the keys of the real
files, whether or not ``../shared`` exists, so every test sees the same model everywhere. With
``real=True`` the real topology (5023 vertices, 9976 triangles), landmark embedding and masks of
``../shared/data/flame_public`` (or ``MICA_SHARED_DIR``) are used (``real=None``: those when present,
for the benchmarks). The random blend shapes are smooth fields scaled
to millimetre-level displacements (identity ~ a few mm per unit coefficient).
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import scipy.sparse
import torch

from tests.legacy_pickle import PY2_NAMES, Numpy1Pickler, Py2Pickler, class_named, npy_object_bytes
from tests.legacy_pickle import dumps as legacy_dumps
from utils.io import atomic_write_bytes, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent

N_SHAPE_TOTAL = 400
N_POSE_BASIS = 36
N_JOINTS = 5
PARENTS = (-1, 0, 1, 1, 1)  # root, neck, jaw, left eye, right eye


def shared_flame_public() -> Optional[Path]:
    """``../shared/data/flame_public`` when it holds the three public files, else None."""
    shared = Path(os.environ.get("MICA_SHARED_DIR", ROOT.parent / "shared"))
    folder = shared / "data" / "flame_public"
    names = ("head_template.obj", "landmark_embedding.npy", "FLAME_masks.pkl")
    return folder if all((folder / n).is_file() for n in names) else None


def read_obj_topology(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """(V, 3) float64 vertices and (F, 3) int64 0-based triangles of an OBJ (texture indices dropped)."""
    verts, faces = [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            verts.append([float(x) for x in parts[1:4]])
        elif parts[0] == "f":
            faces.append([int(p.split("/")[0]) - 1 for p in parts[1:4]])
    return np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# The random topology, embedding and masks (the default; no ../shared needed)
# ---------------------------------------------------------------------------------------------
def _random_topology(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A small closed head-like mesh in metres: a UV sphere squashed to head proportions."""
    n_lat, n_lon = 14, 20
    verts = [[0.0, 1.0, 0.0]]
    for i in range(1, n_lat):
        theta = np.pi * i / n_lat
        for j in range(n_lon):
            phi = 2 * np.pi * j / n_lon
            verts.append([np.sin(theta) * np.cos(phi), np.cos(theta), np.sin(theta) * np.sin(phi)])
    verts.append([0.0, -1.0, 0.0])
    verts = np.asarray(verts) * np.array([0.075, 0.11, 0.095])
    verts += rng.normal(scale=5e-4, size=verts.shape)
    faces = []
    top, bottom = 0, len(verts) - 1
    ring = lambda i, j: 1 + (i - 1) * n_lon + (j % n_lon)  # noqa: E731
    for j in range(n_lon):
        faces.append([top, ring(1, j + 1), ring(1, j)])
        faces.append([bottom, ring(n_lat - 1, j), ring(n_lat - 1, j + 1)])
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i, j + 1), ring(i + 1, j), ring(i + 1, j + 1)
            faces.append([a, b, d])
            faces.append([a, d, c])
    return verts, np.asarray(faces, dtype=np.int64)


def _random_embedding(rng: np.random.Generator, n_faces: int) -> Dict[str, object]:
    def bary(*shape: int) -> np.ndarray:
        b = rng.uniform(0.05, 1.0, size=shape + (3,))
        return b / b.sum(-1, keepdims=True)

    static_idx = rng.integers(0, n_faces, size=51).astype(np.int64)
    static_b = bary(51)
    contour_idx = rng.integers(0, n_faces, size=17).astype(np.int64)
    contour_b = bary(17)
    return {
        "static_lmk_faces_idx": static_idx,
        "static_lmk_bary_coords": static_b,
        "dynamic_lmk_faces_idx": torch.from_numpy(rng.integers(0, n_faces, size=(79, 17)).astype(np.int64)),
        "dynamic_lmk_bary_coords": torch.from_numpy(bary(79, 17).astype(np.float32)),
        "full_lmk_faces_idx": np.concatenate([contour_idx, static_idx])[None],
        "full_lmk_bary_coords": np.concatenate([contour_b, static_b])[None],
    }


_MASK_SIZES_SMALL = {"face": 60, "eye_region": 30, "left_eye_region": 12, "right_eye_region": 12,
                     "left_eyeball": 10, "right_eyeball": 10, "left_ear": 12, "right_ear": 12,
                     "forehead": 8, "lips": 8, "nose": 10, "scalp": 20, "neck": 12, "boundary": 8}


def _random_masks(rng: np.random.Generator, n_vertices: int) -> Dict[str, np.ndarray]:
    """Same keys as the real file; eyeballs, ears and face overlap a little, as in the real one."""
    return {k: np.sort(rng.choice(n_vertices, size=min(n, n_vertices), replace=False)).astype(np.int64)
            for k, n in _MASK_SIZES_SMALL.items()}


# ---------------------------------------------------------------------------------------------
# Model arrays
# ---------------------------------------------------------------------------------------------
def _smooth_basis(rng: np.random.Generator, verts: np.ndarray, n: int, rms_m: np.ndarray) -> np.ndarray:
    """(V, 3, n) smooth random displacement fields (quadratic in position), RMS ``rms_m[i]`` metres."""
    c = (verts - verts.mean(0)) / (np.abs(verts - verts.mean(0)).max() + 1e-12)
    x, y, z = c.T
    feats = np.stack([np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, y * z, x * z], 1)  # (V, 10)
    coef = rng.normal(size=(n, feats.shape[1], 3))
    fields = np.einsum("vf,nfc->vcn", feats, coef)  # (V, 3, n)
    rms = np.sqrt((fields ** 2).mean(axis=(0, 1)))
    return fields * (rms_m / rms)[None, None, :]


def _joint_regressor(rng: np.random.Generator, verts: np.ndarray,
                     masks: Dict[str, np.ndarray]) -> np.ndarray:
    """(5, V) rows summing to 1: neck low, jaw at the chin, eyes at the eyeball vertices."""
    n_v = len(verts)
    y = verts[:, 1]
    low = np.argsort(y)[: max(4, n_v // 50)]
    chin = np.argsort(np.abs(y - np.quantile(y, 0.25)) + np.abs(verts[:, 0]))[: max(4, n_v // 100)]
    rows = [low[:len(low) // 2], low, chin,
            masks["left_eyeball"], masks["right_eyeball"]]
    reg = np.zeros((N_JOINTS, n_v))
    for j, idx in enumerate(rows):
        w = rng.uniform(0.5, 1.5, size=len(idx))
        reg[j, idx] = w / w.sum()
    return reg


def _skinning_weights(rng: np.random.Generator, verts: np.ndarray, jtr: np.ndarray) -> np.ndarray:
    """(V, 5) convex weights, larger for nearer joints."""
    d = np.linalg.norm(verts[:, None, :] - jtr[None], axis=-1)
    logits = -d / (d.std() + 1e-12) * 3.0 + rng.normal(scale=0.3, size=d.shape)
    w = np.exp(logits - logits.max(1, keepdims=True))
    return w / w.sum(1, keepdims=True)


def make_model_arrays(seed: int = 0, real: Optional[bool] = False) -> Dict[str, object]:
    """The arrays of a synthetic FLAME: model dict (plain numpy), embedding dict, masks, template.

    Returns a dict with ``model`` (keys of generic_model.pkl as numpy arrays / strings),
    ``embedding`` (landmark dict; dynamic entries as torch tensors), ``masks`` and ``faces``.
    """
    rng = np.random.default_rng(seed)
    public = shared_flame_public() if real in (None, True) else None
    if real and public is None:
        raise FileNotFoundError("real FLAME topology requested but ../shared/data/flame_public is absent")
    if public is not None:
        verts, faces = read_obj_topology(public / "head_template.obj")
        emb = np.load(public / "landmark_embedding.npy", allow_pickle=True, encoding="latin1")[()]
        with open(public / "FLAME_masks.pkl", "rb") as f:
            masks = pickle.load(f, encoding="latin1")
    else:
        verts, faces = _random_topology(rng)
        emb = _random_embedding(rng, len(faces))
        masks = _random_masks(rng, len(verts))
    # RMS displacement per unit coefficient: 2 mm for the first identity component, decaying
    # (N(0,1) coefficients give ~5 mm RMS change); expression half of that.
    rms = np.concatenate([2e-3 / (1 + np.arange(300) / 5), 1e-3 / (1 + np.arange(100) / 5)])
    shapedirs = _smooth_basis(rng, verts, N_SHAPE_TOTAL, rms)
    posedirs = _smooth_basis(rng, verts, N_POSE_BASIS, np.full(N_POSE_BASIS, 2e-3))
    j_reg = _joint_regressor(rng, verts, masks)
    jtr = j_reg @ verts
    weights = _skinning_weights(rng, verts, jtr)
    kintree = np.array([[2 ** 32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
    model = {"f": faces.astype(np.uint32), "v_template": verts, "shapedirs": shapedirs, "posedirs": posedirs,
             "J_regressor": j_reg, "weights": weights, "kintree_table": kintree, "J": jtr,
             "bs_style": "lbs", "bs_type": "lrotmin"}
    return {"model": model, "embedding": emb, "masks": masks, "faces": faces, "public": public}


# ---------------------------------------------------------------------------------------------
# Writing in the real formats
# ---------------------------------------------------------------------------------------------
def chumpy_state(x: np.ndarray) -> dict:
    """What chumpy's ``Ch.__getstate__`` returns for an array assigned to ``x`` (``__dict__`` minus
    ``_parents`` and ``_cache``; ``_dirty_vars`` still holds ``'x'`` before any evaluation)."""
    return {"x": x, "_dirty_vars": set(["x"]), "_itr": None, "_make_dense": False,
            "_make_sparse": False, "_depends_on_deps": {}}


def old_csc_state(matrix: np.ndarray) -> dict:
    """The ``__dict__`` of a Python-2-era scipy ``csc_matrix`` (``spmatrix.__init__`` set ``format``,
    ``_shape`` and ``maxprint``; the compressed arrays ``data``/``indices``/``indptr``)."""
    m = scipy.sparse.csc_matrix(np.asarray(matrix))
    return {"format": "csc", "_shape": tuple(int(n) for n in m.shape), "maxprint": 50,
            "indices": m.indices, "indptr": m.indptr, "data": m.data}


# Throwaway classes pickled under the real files' names (chumpy and old scipy are never imported).
ChumpyCh = class_named("chumpy.ch", "Ch", getstate=lambda self: self.state)
OldCscMatrix = class_named("scipy.sparse.csc", "csc_matrix", getstate=lambda self: self.state)


class _FlamePickler(Py2Pickler):
    renames = {**PY2_NAMES, ("chumpy.ch", "Ch"): ("chumpy.ch", "Ch"),
               ("scipy.sparse.csc", "csc_matrix"): ("scipy.sparse.csc", "csc_matrix")}


def _wrapped(cls: type, state: dict) -> object:
    obj = cls.__new__(cls)
    obj.state = state
    return obj


def generic_model_bytes(model: Dict[str, object], ch_keys=("v_template", "shapedirs", "posedirs",
                                                            "weights", "J"), protocol: int = 2) -> bytes:
    """Pickle ``model`` as the Python-2 FLAME 2020 file: chumpy ``Ch`` objects with chumpy's whole
    state, an old-scipy ``csc_matrix`` J_regressor, Python-2 strings and global names.

    ``protocol`` 2 is the real file's (``Ch``/``csc_matrix`` built with NEWOBJ then BUILD); 0/1
    rebuild them through ``copy_reg._reconstructor`` and ``__builtin__.object``.
    """
    out = dict(model)
    out["J_regressor"] = _wrapped(OldCscMatrix, old_csc_state(np.asarray(model["J_regressor"])))
    for k in ch_keys:
        out[k] = _wrapped(ChumpyCh, chumpy_state(np.asarray(model[k])))
    return legacy_dumps(out, _FlamePickler, protocol=protocol)


def embedding_npy_bytes(embedding: Dict[str, object]) -> bytes:
    """``np.save`` of a 0-d object array holding the landmark dict, as the real file (numpy 1.x
    names, protocol 3, the dynamic entries pickled torch tensors)."""
    return npy_object_bytes(embedding, Numpy1Pickler)


def masks_pkl_bytes(masks: Dict[str, np.ndarray]) -> bytes:
    """``FLAME_masks.pkl`` as the real file: a Python 2 pickle at protocol 0 (numpy.core names)."""
    return legacy_dumps(masks, Py2Pickler, protocol=0)


def obj_text(verts: np.ndarray, faces: np.ndarray) -> str:
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in verts]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    return "\n".join(lines) + "\n"


def write_synthetic_flame(folder: os.PathLike | str, seed: int = 0, real: Optional[bool] = False,
                          adjust: Optional[Callable[[dict], dict]] = None) -> Path:
    """Write generic_model.pkl, landmark_embedding.npy, FLAME_masks.pkl, head_template.obj.

    Args:
        folder: output folder (created).
        seed: random seed of the blend shapes / regressor / weights (and the random topology).
        real: False = the random topology (default); True = the real one from ../shared (required);
            None = the real one when ../shared is present (benchmarks).
        adjust: ``adjust(arrays) -> model``: the model dict to write, made from the arrays of
            ``make_model_arrays`` (e.g. blend shapes changed for a test); default: them unchanged.

    Returns:
        ``folder`` as a Path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = make_model_arrays(seed, real)
    model = arrays["model"] if adjust is None else adjust(arrays)
    atomic_write_bytes(folder / "generic_model.pkl", generic_model_bytes(model))
    public = arrays["public"]
    if public is not None:
        for name in ("landmark_embedding.npy", "FLAME_masks.pkl"):
            atomic_write_bytes(folder / name, (public / name).read_bytes())
    else:
        atomic_write_bytes(folder / "landmark_embedding.npy", embedding_npy_bytes(arrays["embedding"]))
        atomic_write_bytes(folder / "FLAME_masks.pkl", masks_pkl_bytes(arrays["masks"]))
    atomic_write_text(folder / "head_template.obj", obj_text(model["v_template"], arrays["faces"]))
    return folder


def flame_like_weights(model: Dict[str, object], masks: Dict[str, np.ndarray]) -> np.ndarray:
    """(V, 5) sparse skinning weights shaped like FLAME 2020's (at most 2 joints per vertex): the
    eyeballs on their eye joint alone, the lower front (chin and jaw) blended between jaw and neck,
    the lowest ring between root and neck, everything else (scalp, forehead, eyelid regions) on the
    neck alone. ``make_model_arrays``' weights put every vertex on all 5 joints, which real FLAME
    does not (and which breaks exactness conditions that hold for FLAME, e.g. the tracker's eyelids)."""
    v = np.asarray(model["v_template"], np.float64)
    y, z = v[:, 1], v[:, 2]
    w = np.zeros((len(v), N_JOINTS))
    w[:, 1] = 1.0
    y_jaw, y_low = np.quantile(y, 0.35), np.quantile(y, 0.08)
    jaw = np.clip((y_jaw - y) / (y_jaw - np.quantile(y, 0.15)), 0.0, 1.0) * (z > np.median(z))
    w[:, 2], w[:, 1] = jaw, 1.0 - jaw
    low = (y <= y_low) & (jaw == 0)
    w[low, 0], w[low, 1] = 0.3, 0.7
    for j, key in ((3, "left_eyeball"), (4, "right_eyeball")):
        w[masks[key]] = np.eye(N_JOINTS)[j]
    return w
