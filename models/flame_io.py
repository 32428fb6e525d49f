"""Safe readers of the FLAME 2020 files (no chumpy, no arbitrary code from pickles).

``generic_model.pkl``, ``FLAME_masks.pkl`` and ``landmark_embedding.npy`` are Python pickles
(the first one written by Python 2, with some arrays as ``chumpy.ch.Ch`` objects). Loading them
with ``pickle.load`` needs chumpy and runs whatever callable the file names. Here a restricted
unpickler resolves only the globals the formats need:

- numpy array reconstruction (``numpy[._]core.multiarray._reconstruct``, ``numpy.ndarray``,
  ``numpy.dtype``, ``numpy[._]core.multiarray.scalar``, ``numpy[._]core.numeric._frombuffer``);
- ``scipy.sparse`` ``csc_matrix`` / ``csr_matrix`` (old and new module paths), mapped to a stand-in
  that keeps the pickled ``data``/``indices``/``indptr``/shape and is densified afterwards;
- ``chumpy.ch.Ch``, mapped to a stand-in that keeps the array of its pickled state key ``x``;
- ``copy_reg._reconstructor`` (only for the two stand-ins) and ``_codecs.encode`` (only latin-1:
  how Python 3 writes bytes at pickle protocol <= 2);
- pickled torch tensors (``torch._utils._rebuild_tensor_v2`` on a storage from
  ``torch.storage._load_from_bytes``, whose bytes are read with ``torch.load(weights_only=True)``),
  plus ``collections.OrderedDict`` (their empty backward-hook dict).

Any other global (``os.system``, ``builtins.eval``, ...) raises ``MICAError`` naming the file and
the refused global, before anything is called.
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Union

import numpy as np
import scipy.sparse
import torch

from utils.errors import MICAError

PathLike = Union[str, os.PathLike]

FLAME_URL = "https://flame.is.tue.mpg.de"
N_JOINTS = 5
N_SHAPEDIRS = 400
N_POSEDIRS = 36


# ---------------------------------------------------------------------------------------------
# Stand-ins for the pickled classes
# ---------------------------------------------------------------------------------------------
class _ChStandIn:
    """Replaces ``chumpy.ch.Ch``: keeps the array stored under the state key ``x``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.x = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        if not isinstance(state, dict) or "x" not in state:
            raise pickle.UnpicklingError("chumpy.ch.Ch object without an 'x' array in its state")
        self.x = state["x"]


class _SparseStandIn:
    """Replaces ``scipy.sparse.csc_matrix``/``csr_matrix``: keeps the compressed arrays."""

    fmt = "csc"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("sparse matrix with a non-dict state")
        self.state = state

    def to_dense(self) -> np.ndarray:
        s = self.state
        shape = s.get("_shape", s.get("shape"))
        try:
            data, indices, indptr = (np.asarray(s[k]) for k in ("data", "indices", "indptr"))
            cls = scipy.sparse.csc_matrix if self.fmt == "csc" else scipy.sparse.csr_matrix
            return np.asarray(cls((data, indices, indptr), shape=tuple(int(n) for n in shape)).toarray())
        except (KeyError, TypeError, ValueError) as e:
            raise pickle.UnpicklingError(f"invalid sparse matrix state ({e})") from None


class _CscStandIn(_SparseStandIn):
    fmt = "csc"


class _CsrStandIn(_SparseStandIn):
    fmt = "csr"


_STAND_INS = (_ChStandIn, _CscStandIn, _CsrStandIn)


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copy_reg._reconstructor`` limited to the stand-in classes (Python-2 protocol 0/1)."""
    if cls not in _STAND_INS or base is not object:
        raise pickle.UnpicklingError(f"copy_reg._reconstructor refused for {cls!r}")
    return cls()


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3 uses it for bytes at protocol <= 2 (latin-1 only)."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode refused for encoding {encoding!r}")
    return text.encode("latin-1")


def _storage_from_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes`` read with ``torch.load(weights_only=True)``."""
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("torch storage payload is not bytes")
    return torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` limited to real storages."""
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("torch tensor rebuilt from something that is not a storage")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, *rest)


def _allowed_globals() -> Dict[tuple, Any]:
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy's own _frombuffer
    table: Dict[tuple, Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("chumpy.ch", "Ch"): _ChStandIn,
        ("copy_reg", "_reconstructor"): _safe_reconstructor,
        ("copyreg", "_reconstructor"): _safe_reconstructor,
        ("__builtin__", "object"): object,
        ("builtins", "object"): object,
        ("_codecs", "encode"): _latin1_encode,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("collections", "OrderedDict"): OrderedDict,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = reconstruct
        table[(mod, "scalar")] = scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):  # protocol 5 (files re-saved by Python 3)
        table[(mod, "_frombuffer")] = frombuffer
    for mod in ("scipy.sparse", "scipy.sparse.csc", "scipy.sparse._csc"):
        table[(mod, "csc_matrix")] = _CscStandIn
    for mod in ("scipy.sparse", "scipy.sparse.csr", "scipy.sparse._csr"):
        table[(mod, "csr_matrix")] = _CsrStandIn
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """A latin-1 unpickler that resolves only the globals listed in the module docstring.

    Args:
        file: binary file object positioned at the pickle.
        source: the file's path, named in the refusal message.
    """

    def __init__(self, file: Any, source: PathLike) -> None:
        super().__init__(file, encoding="latin1", fix_imports=False)
        self._source = str(source)
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise MICAError(
                f"{self._source}: refused to load the global '{module}.{name}' from this pickle "
                "(not part of the FLAME file formats; the file is not a genuine FLAME file)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise MICAError(f"{self._source}: refused persistent id in pickle (not a genuine FLAME file)")


def _unwrap(obj: Any) -> Any:
    """Replace stand-ins by plain numpy arrays, recursively through dicts/lists/tuples."""
    if isinstance(obj, _ChStandIn):
        return _unwrap(obj.x)
    if isinstance(obj, _SparseStandIn):
        return obj.to_dense()
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: _unwrap(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unwrap(v) for v in obj)
    return obj


def _read_bytes(path: Path, what: str, hint: str) -> bytes:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}: {hint}")
    if path.is_dir():
        raise MICAError(f"{path} is a folder, expected the {what} file: {hint}")
    return path.read_bytes()


def safe_unpickle(data: bytes, source: PathLike) -> Any:
    """Unpickle ``data`` (latin-1) with ``RestrictedUnpickler``; stand-ins become numpy arrays.

    Raises:
        MICAError: a refused global, or a truncated / corrupt pickle (message names ``source``).
    """
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), source).load()
    except MICAError:
        raise
    except Exception as e:  # any parse failure of a user's file is a user error
        first = (str(e).splitlines() or [""])[0]
        raise MICAError(f"{source}: file is truncated or corrupt ({type(e).__name__}: {first}); "
                        "download it again") from None
    return _unwrap(obj)


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
    data = safe_unpickle(_read_bytes(path, "FLAME model generic_model.pkl", hint), path)
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


def _read_npy_object(raw: bytes, path: Path, hint: str) -> Any:
    """Parse an ``.npy`` file; an object array's pickle goes through the restricted unpickler."""
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        raise MICAError(f"{path}: not a valid .npy file ({first}); {hint}") from None
    if dtype.hasobject:
        obj = safe_unpickle(raw[f.tell():], path)
        if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
            obj = obj[()]
        return obj
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception as e:
        raise MICAError(f"{path}: file is truncated or corrupt ({type(e).__name__}); {hint}") from None


def load_landmark_embedding(path: PathLike) -> LandmarkEmbedding:
    """Read ``landmark_embedding.npy`` safely (its dynamic entries are pickled torch tensors).

    Raises:
        FileNotFoundError: the file does not exist.
        MICAError: truncated / corrupt file, refused pickle global, missing keys or wrong shapes.
    """
    path = Path(path)
    hint = f"get landmark_embedding.npy from the MICA repository (data/FLAME2020) and put it at {path}"
    obj = _read_npy_object(_read_bytes(path, "FLAME landmark embedding", hint), path, hint)
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
        out[key] = a
    return LandmarkEmbedding(**out)


# ---------------------------------------------------------------------------------------------
# FLAME_masks.pkl
# ---------------------------------------------------------------------------------------------
MASK_NAMES = ("face", "eye_region", "left_eye_region", "right_eye_region", "left_eyeball",
              "right_eyeball", "left_ear", "right_ear", "forehead", "lips", "nose", "scalp",
              "neck", "boundary")


def load_flame_masks(path: PathLike) -> Dict[str, np.ndarray]:
    """Read ``FLAME_masks.pkl`` safely: region name -> (N,) int64 vertex indices.

    Raises:
        FileNotFoundError: the file does not exist.
        MICAError: truncated / corrupt file, refused pickle global, or not a dict of index arrays.
    """
    path = Path(path)
    hint = f"get FLAME_masks.pkl from {FLAME_URL} (FLAME_masks.zip) and put it at {path}"
    obj = safe_unpickle(_read_bytes(path, "FLAME masks", hint), path)
    if not isinstance(obj, dict) or not obj:
        raise MICAError(f"{path}: expected a dict of vertex index arrays; {hint}")
    out: Dict[str, np.ndarray] = {}
    for key, val in obj.items():
        try:
            a = np.asarray(val)
            if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0) or (a.size and a.min() < 0):
                raise ValueError
        except (TypeError, ValueError):
            raise MICAError(f"{path}: mask '{key}' is not a 1-D array of vertex indices; {hint}") from None
        out[str(key)] = a.astype(np.int64)
    return out


