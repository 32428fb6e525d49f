"""Safe readers of the FLAME 2020 files (no chumpy, no arbitrary code from pickles).

``generic_model.pkl``, ``FLAME_masks.pkl`` and ``landmark_embedding.npy`` are Python pickles
(the first one written by Python 2, with some arrays as ``chumpy.ch.Ch`` objects). They are read
with the project's one allow-list unpickler (``utils.safe_pickle``), each with its format's list:
``FLAME_MODEL`` (numpy, chumpy ``Ch`` -> its ``x`` array, scipy sparse, ``set``/``frozenset``,
protocol-0/1 ``copy_reg._reconstructor``), ``TORCH_TENSORS`` for the embedding (its dynamic
entries are pickled torch tensors) and ``NUMPY_DATA`` for the masks. Any other global
(``os.system``, ``builtins.eval``, ...) raises ``MICAError`` naming the file and the refused
global, before anything is called.

Every array is then checked: shapes, index ranges against the mesh (triangle indices of the
landmark embedding, vertex indices of the masks when the vertex count is given) and finite values.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.errors import MICAError, UserFileNotFound
from utils.safe_pickle import (
    FLAME_MODEL,
    NUMPY_DATA,
    TORCH_TENSORS,
    AllowList,
    RefusedGlobal,
    object_npy_from_bytes,
    unpickle,
)

PathLike = str | os.PathLike

FLAME_URL = "https://flame.is.tue.mpg.de"
N_JOINTS = 5
N_SHAPEDIRS = 400
N_POSEDIRS = 36


def _read_bytes(path: Path, what: str, hint: str) -> bytes:
    if not path.exists():
        raise UserFileNotFound(f"{what} not found at {path}: {hint}")
    if path.is_dir():
        raise MICAError(f"{path} is a folder, expected the {what} file: {hint}")
    return path.read_bytes()


def _user_error(e: Exception, source: PathLike, hint: str) -> MICAError:
    """One line for a refused global or an unreadable pickle."""
    if isinstance(e, RefusedGlobal):
        return MICAError(f"{source}: refused to load the global '{e.global_name}' from this pickle "
                         f"(not part of the FLAME file formats; nothing from it was run); {hint}")
    first = (str(e).splitlines() or [""])[0]
    return MICAError(f"{source}: file is truncated or corrupt ({type(e).__name__}: {first}); {hint}")


def safe_unpickle(data: bytes, source: PathLike, allowed: AllowList = FLAME_MODEL,
                  hint: str = "download it again") -> Any:
    """Unpickle ``data`` with ``utils.safe_pickle`` (``allowed`` format); stand-ins become numpy arrays.

    Raises:
        MICAError: a refused global, or a truncated / corrupt pickle (message names ``source``).
    """
    try:
        return unpickle(data, allowed)
    except Exception as e:  # any parse failure of a user's file is a user error
        raise _user_error(e, source, hint) from None


def _check_finite(path: Path, what: str, key: str, a: np.ndarray, hint: str) -> None:
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise MICAError(f"{path}: {what} '{key}' holds {bad} NaN or infinite values; {hint}")


# ---------------------------------------------------------------------------------------------
# generic_model.pkl
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlameModelData:
    """The arrays of FLAME 2020 ``generic_model.pkl`` (metres, float64 unless stated).

    Attributes:
        v_template: (V, 3) template vertices.
        shapedirs: (V, 3, 400) blend shapes: 300 identity then 100 expression.
        posedirs: (V, 3, 36) pose-corrective blend shapes.
        J_regressor: (5, V) dense joint regressor.
        weights: (V, 5) skinning weights.
        kintree_table: (2, 5) int64; row 0 = parents (root is -1), row 1 = joint ids.
        faces: (F, 3) int64 triangle vertex indices.
    """

    v_template: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    kintree_table: np.ndarray
    faces: np.ndarray

    @property
    def n_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def parents(self) -> np.ndarray:
        """(5,) int64 parent of each joint, -1 for the root."""
        return self.kintree_table[0].copy()


def _model_hint(path: Path) -> str:
    return f"download FLAME 2020 from {FLAME_URL} and put generic_model.pkl at {path}"


def load_flame_model(path: PathLike) -> FlameModelData:
    """Read FLAME 2020 ``generic_model.pkl`` safely (chumpy not needed).

    Raises:
        FileNotFoundError: the file does not exist (message says where to get it).
        MICAError: truncated / corrupt file, refused pickle global, missing keys or wrong shapes.
    """
    path = Path(path)
    hint = _model_hint(path)
    data = safe_unpickle(_read_bytes(path, "FLAME model generic_model.pkl", hint), path, FLAME_MODEL, hint)
    if not isinstance(data, dict):
        raise MICAError(f"{path}: expected a dict of FLAME arrays, found {type(data).__name__}; {hint}")
    missing = [k for k in ("f", "v_template", "shapedirs", "posedirs", "J_regressor", "weights",
                           "kintree_table") if k not in data]
    if missing:
        raise MICAError(f"{path}: not a FLAME model, keys {missing} are missing; {hint}")

    def arr(key: str, dtype: Any) -> np.ndarray:
        try:
            return np.ascontiguousarray(np.asarray(data[key], dtype=dtype))
        except (TypeError, ValueError):
            raise MICAError(f"{path}: FLAME key '{key}' is not a numeric array; {hint}") from None

    v_template = arr("v_template", np.float64)
    n_v = v_template.shape[0] if v_template.ndim == 2 else -1
    shapedirs = arr("shapedirs", np.float64)
    posedirs = arr("posedirs", np.float64)
    j_reg = arr("J_regressor", np.float64)
    weights = arr("weights", np.float64)
    kintree = arr("kintree_table", np.int64)
    faces = arr("f", np.int64)
    expected = {
        "v_template": (v_template, (n_v, 3)),
        "shapedirs": (shapedirs, (n_v, 3, N_SHAPEDIRS)),
        "posedirs": (posedirs, (n_v, 3, N_POSEDIRS)),
        "J_regressor": (j_reg, (N_JOINTS, n_v)),
        "weights": (weights, (n_v, N_JOINTS)),
        "kintree_table": (kintree, (2, N_JOINTS)),
    }
    for key, (a, shape) in expected.items():
        if n_v < 1 or a.shape != shape:
            raise MICAError(f"{path}: FLAME key '{key}' has shape {a.shape}, expected {shape}; {hint}")
        _check_finite(path, "FLAME array", key, a, hint)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.size == 0 or faces.min() < 0 or faces.max() >= n_v:
        raise MICAError(f"{path}: FLAME key 'f' is not a (F, 3) array of vertex indices < {n_v}; {hint}")
    kintree = kintree.copy()
    kintree[0, 0] = -1  # Python-2 files store the root's parent as 2**32-1
    if not all(0 <= kintree[0, j] < j for j in range(1, N_JOINTS)):
        raise MICAError(f"{path}: FLAME kintree_table parents {kintree[0].tolist()} are not a tree; {hint}")
    return FlameModelData(v_template=v_template, shapedirs=shapedirs, posedirs=posedirs,
                          J_regressor=j_reg, weights=weights, kintree_table=kintree, faces=faces)


# ---------------------------------------------------------------------------------------------
# landmark_embedding.npy
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LandmarkEmbedding:
    """FLAME landmark definitions (triangle index + barycentric coordinates per landmark).

    Attributes:
        static_lmk_faces_idx: (51,) int64 inner landmarks (iBUG 18..68).
        static_lmk_bary_coords: (51, 3) float64.
        dynamic_lmk_faces_idx: (79, 17) int64 contour landmarks, one row per yaw bin.
        dynamic_lmk_bary_coords: (79, 17, 3) float64.
        full_lmk_faces_idx: (1, 68) int64 the static 68 landmarks (MICA's ``kpt68``).
        full_lmk_bary_coords: (1, 68, 3) float64.
    """

    static_lmk_faces_idx: np.ndarray
    static_lmk_bary_coords: np.ndarray
    dynamic_lmk_faces_idx: np.ndarray
    dynamic_lmk_bary_coords: np.ndarray
    full_lmk_faces_idx: np.ndarray
    full_lmk_bary_coords: np.ndarray


_LMK_SHAPES = {
    "static_lmk_faces_idx": ((51,), np.int64),
    "static_lmk_bary_coords": ((51, 3), np.float64),
    "dynamic_lmk_faces_idx": ((79, 17), np.int64),
    "dynamic_lmk_bary_coords": ((79, 17, 3), np.float64),
    "full_lmk_faces_idx": ((1, 68), np.int64),
    "full_lmk_bary_coords": ((1, 68, 3), np.float64),
}


def load_landmark_embedding(path: PathLike, n_faces: int | None = None) -> LandmarkEmbedding:
    """Read ``landmark_embedding.npy`` safely (its dynamic entries are pickled torch tensors).

    Args:
        path: the file.
        n_faces: F, the triangle count of the FLAME model; when given, every triangle index must
            lie in [0, F).

    Raises:
        FileNotFoundError: the file does not exist.
        MICAError: truncated / corrupt file, refused pickle global, missing keys, wrong shapes,
            triangle indices out of range or non-finite barycentric coordinates.
    """
    path = Path(path)
    hint = f"get landmark_embedding.npy from the MICA repository (data/FLAME2020) and put it at {path}"
    raw = _read_bytes(path, "FLAME landmark embedding", hint)
    try:
        obj = object_npy_from_bytes(raw, TORCH_TENSORS)
    except ValueError as e:
        raise MICAError(f"{path}: not a landmark embedding ({e}); {hint}") from None
    except Exception as e:
        raise _user_error(e, path, hint) from None
    if not isinstance(obj, dict):
        raise MICAError(f"{path}: expected a dict of landmark arrays, found {type(obj).__name__}; {hint}")
    out = {}
    for key, (shape, dtype) in _LMK_SHAPES.items():
        if key not in obj:
            raise MICAError(f"{path}: landmark key '{key}' is missing; {hint}")
        try:
            a = np.ascontiguousarray(np.asarray(obj[key], dtype=dtype))
        except (TypeError, ValueError):
            raise MICAError(f"{path}: landmark key '{key}' is not a numeric array; {hint}") from None
        if a.shape != shape:
            raise MICAError(f"{path}: landmark key '{key}' has shape {a.shape}, expected {shape}; {hint}")
        _check_finite(path, "landmark key", key, np.asarray(obj[key], dtype=np.float64), hint)
        if key.endswith("_faces_idx") and n_faces is not None and (a.min() < 0 or a.max() >= n_faces):
            worst = int(a.min()) if a.min() < 0 else int(a.max())
            raise MICAError(f"{path}: landmark key '{key}' names triangle {worst} but the FLAME model has "
                            f"{n_faces} triangles (indices must be in [0, {n_faces})): the embedding does not "
                            f"belong to this FLAME model; {hint}")
        out[key] = a
    return LandmarkEmbedding(**out)


# ---------------------------------------------------------------------------------------------
# FLAME_masks.pkl
# ---------------------------------------------------------------------------------------------
MASK_NAMES = ("face", "eye_region", "left_eye_region", "right_eye_region", "left_eyeball",
              "right_eyeball", "left_ear", "right_ear", "forehead", "lips", "nose", "scalp",
              "neck", "boundary")


def load_flame_masks(path: PathLike, n_vertices: int | None = None) -> dict[str, np.ndarray]:
    """Read ``FLAME_masks.pkl`` safely: region name -> (N,) int64 vertex indices.

    Args:
        path: the file.
        n_vertices: V of the FLAME model; when given, every index must lie in [0, V).

    Raises:
        FileNotFoundError: the file does not exist.
        MICAError: truncated / corrupt file, refused pickle global, not a dict of index arrays, or
            an index out of range.
    """
    path = Path(path)
    hint = f"get FLAME_masks.pkl from {FLAME_URL} (FLAME_masks.zip) and put it at {path}"
    obj = safe_unpickle(_read_bytes(path, "FLAME masks", hint), path, NUMPY_DATA, hint)
    if not isinstance(obj, dict) or not obj:
        raise MICAError(f"{path}: expected a dict of vertex index arrays; {hint}")
    out: dict[str, np.ndarray] = {}
    for key, val in obj.items():
        try:
            a = np.asarray(val)
            if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0) or (a.size and a.min() < 0):
                raise ValueError
        except (TypeError, ValueError):
            raise MICAError(f"{path}: mask '{key}' is not a 1-D array of vertex indices; {hint}") from None
        if n_vertices is not None and a.size and a.max() >= n_vertices:
            raise MICAError(f"{path}: mask '{key}' names vertex {int(a.max())} but the FLAME model has {n_vertices} "
                            f"vertices (indices must be in [0, {n_vertices})): the masks do not belong to this "
                            f"FLAME model; {hint}")
        out[str(key)] = a.astype(np.int64)
    return out


