"""The one allow-list unpickler for every plain pickle the project reads, with per-format lists.

``pickle.load`` / ``np.load(allow_pickle=True)`` run whatever callable a file names. Every plain
pickle we read (FLAME ``generic_model.pkl``, ``FLAME_masks.pkl``, ``landmark_embedding.npy``, the
image lists, NoW face boxes, NoW result files) goes through :class:`AllowListUnpickler`, which
resolves only the ``(module, name)`` globals of that file's format and refuses anything else
before it is called. The formats (``NUMPY_DATA`` < ``TORCH_TENSORS``, ``FLAME_MODEL``):

- ``NUMPY_DATA``: numpy arrays, scalars and dtypes under the numpy-1 (``numpy.core...``) and
  numpy-2 (``numpy._core...``) names, protocol-5 ``_frombuffer``, and ``_codecs.encode`` limited
  to latin-1 (how Python 3 writes bytes at protocol <= 2). Masks, image lists, boxes, NoW results.
- ``TORCH_TENSORS``: plus pickled torch tensors (``torch._utils._rebuild_tensor_v2`` on a storage
  from ``torch.storage._load_from_bytes``, whose bytes are read by ``torch.load(weights_only=True)``)
  and ``collections.OrderedDict`` (a tensor's backward-hook dict). ``landmark_embedding.npy``.
- ``FLAME_MODEL``: ``NUMPY_DATA`` plus what chumpy's Python-2 pickles of FLAME name:
  ``chumpy.ch.Ch`` (a stand-in that keeps the state key ``x`` and ignores the rest of chumpy's
  state: ``_dirty_vars``, ``_itr``, ``_make_dense``, ``_make_sparse``, ``_depends_on_deps``),
  ``scipy.sparse`` ``csc_matrix``/``csr_matrix`` (a stand-in keeping the compressed arrays),
  ``__builtin__.set``/``builtins.set``/``frozenset`` (chumpy's ``_dirty_vars``; plain
  constructors), and for protocol 0/1 ``copy_reg._reconstructor`` (only for the stand-ins) with
  ``__builtin__.object``.

Checkpoints are not plain pickles: ``utils/checkpoint.py`` reads them with
``torch.load(weights_only=True)`` inside ``torch.serialization.safe_globals(torch_numpy_safe_globals())``.
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
import sys
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from utils.errors import UserError

PathLike = str | os.PathLike
AllowList = Mapping[tuple[str, str], Any]


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the format's allow-list (nothing was called)."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"refusing to load {module}.{name}")
        self.global_name = f"{module}.{name}"


# ---------------------------------------------------------------------------------------------
# numpy: the objects behind the numpy-1 and numpy-2 names
# ---------------------------------------------------------------------------------------------
def _numpy_reconstruct() -> Any:
    return np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct, whatever its module


def _numpy_scalar() -> Any:
    return np.float64(0).__reduce__()[0]


NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


def torch_numpy_safe_globals() -> list[Any]:
    """What ``torch.serialization.safe_globals`` needs to read numpy arrays and scalars as data.

    Exactly numpy's ``_reconstruct``, ``ndarray``, ``dtype`` and ``scalar``, registered under the
    ``numpy.core.multiarray`` (numpy 1, e.g. the official trainer's numpy 1.23) and
    ``numpy._core.multiarray`` (numpy 2) names as ``(object, name)`` pairs; plus numpy's concrete
    dtype classes (``numpy.dtypes.Float32DType``, ...): torch only lets BUILD set state on
    instances of registered types, and a pickled dtype's state is set on such an instance. They
    are dtype constructors, nothing else. Left out: the datetime64 / timedelta64 dtype classes
    (``M``, ``m``): numpy 2 segfaults when a plain dtype's state is set on one (one flipped bit of a
    file, 'i8' -> 'm8', does it), and the project's files hold no dates; a file with them is refused
    unexecuted (torch sets no state on an unregistered type).
    """
    reconstruct, scalar = _numpy_reconstruct(), _numpy_scalar()
    out: list[Any] = [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    for mod in NUMPY_MODULES:
        out += [(reconstruct, f"{mod}._reconstruct"), (scalar, f"{mod}.scalar")]
    classes = set()
    for code in np.typecodes["All"].replace("M", "").replace("m", "") + "OVSU":
        try:
            classes.add(type(np.dtype(code)))
        except TypeError:
            continue
    out += sorted(classes, key=lambda c: c.__name__)
    return out


# ---------------------------------------------------------------------------------------------
# Stand-ins and restricted helpers
# ---------------------------------------------------------------------------------------------
class ChStandIn:
    """Replaces ``chumpy.ch.Ch``: keeps the array of the state key ``x``, ignores chumpy's other state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.x = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        if not isinstance(state, dict) or "x" not in state:
            raise pickle.UnpicklingError("chumpy.ch.Ch object without an 'x' array in its state")
        self.x = state["x"]


class SparseStandIn:
    """Replaces ``scipy.sparse.csc_matrix``/``csr_matrix``: keeps the compressed arrays."""

    fmt = "csc"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("sparse matrix with a non-dict state")
        self.state = state

    def to_dense(self) -> np.ndarray:
        import scipy.sparse

        s = self.state
        shape = s.get("_shape", s.get("shape"))
        try:
            data, indices, indptr = (np.asarray(s[k]) for k in ("data", "indices", "indptr"))
            cls = scipy.sparse.csc_matrix if self.fmt == "csc" else scipy.sparse.csr_matrix
            return np.asarray(cls((data, indices, indptr), shape=tuple(int(n) for n in shape)).toarray())
        except (KeyError, TypeError, ValueError) as e:
            raise pickle.UnpicklingError(f"invalid sparse matrix state ({e})") from None


class CscStandIn(SparseStandIn):
    fmt = "csc"


class CsrStandIn(SparseStandIn):
    fmt = "csr"


_STAND_INS = (ChStandIn, CscStandIn, CsrStandIn)


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copy_reg._reconstructor`` (protocol 0/1) limited to the stand-in classes."""
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
    import torch

    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("torch storage payload is not bytes")
    return torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *rest: Any) -> Any:
    """``torch._utils._rebuild_tensor_v2`` limited to real storages."""
    import torch

    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("torch tensor rebuilt from something that is not a storage")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, *rest)


# ---------------------------------------------------------------------------------------------
# The per-format allow-lists
# ---------------------------------------------------------------------------------------------
def _data_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` for pickles, refusing datetime64 / timedelta64: numpy 2 segfaults when a
    damaged pickle sets a plain dtype's state on one ('i8' -> 'm8' is one bit); no data read here
    holds dates."""
    dt = np.dtype(*args)
    if dt.kind in "mM":
        raise pickle.UnpicklingError(f"numpy {dt} dtype refused (no data read here holds dates; a damaged pickle?)")
    return dt


def _numpy_data() -> dict[tuple[str, str], Any]:
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # numpy's own _frombuffer (protocol 5)
    table: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _data_dtype,
                                         ("_codecs", "encode"): _latin1_encode}
    for mod in NUMPY_MODULES:
        table[(mod, "_reconstruct")] = _numpy_reconstruct()
        table[(mod, "scalar")] = _numpy_scalar()
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        table[(mod, "_frombuffer")] = frombuffer
    return table


def _torch_tensors() -> dict[tuple[str, str], Any]:
    table = _numpy_data()
    table.update({("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                  ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
                  ("collections", "OrderedDict"): OrderedDict})
    return table


def _flame_model() -> dict[tuple[str, str], Any]:
    table = _numpy_data()
    table.update({("chumpy.ch", "Ch"): ChStandIn,
                  ("copy_reg", "_reconstructor"): _safe_reconstructor,
                  ("copyreg", "_reconstructor"): _safe_reconstructor,
                  ("__builtin__", "object"): object, ("builtins", "object"): object})
    for mod in ("__builtin__", "builtins"):
        table[(mod, "set")] = set
        table[(mod, "frozenset")] = frozenset
    for mod in ("scipy.sparse", "scipy.sparse.csc", "scipy.sparse._csc"):
        table[(mod, "csc_matrix")] = CscStandIn
    for mod in ("scipy.sparse", "scipy.sparse.csr", "scipy.sparse._csr"):
        table[(mod, "csr_matrix")] = CsrStandIn
    return table


NUMPY_DATA: AllowList = _numpy_data()
TORCH_TENSORS: AllowList = _torch_tensors()
FLAME_MODEL: AllowList = _flame_model()


# ---------------------------------------------------------------------------------------------
# Unpickling
# ---------------------------------------------------------------------------------------------
class AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the ``(module, name)`` pairs of ``allowed`` (latin-1 strings)."""

    def __init__(self, file: Any, allowed: AllowList = NUMPY_DATA, encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding, fix_imports=False)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise RefusedGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent id")


def plain(obj: Any) -> Any:
    """Replace stand-ins and torch tensors by numpy arrays, recursively through dicts/lists/tuples."""
    if isinstance(obj, ChStandIn):
        return plain(obj.x)
    if isinstance(obj, SparseStandIn):
        return obj.to_dense()
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


def unpickle(data: bytes, allowed: AllowList = NUMPY_DATA) -> Any:
    """Unpickle ``data`` with :class:`AllowListUnpickler`; stand-ins and tensors become numpy.

    Raises:
        RefusedGlobal: a global outside ``allowed`` (nothing of it was called).
        pickle.UnpicklingError, EOFError, ValueError, ...: a truncated or corrupt pickle.
    """
    return plain(AllowListUnpickler(io.BytesIO(data), allowed).load())


def object_npy_from_bytes(raw: bytes, allowed: AllowList = NUMPY_DATA) -> Any:
    """The object in the bytes of an ``.npy`` holding a pickled 0-d object array.

    Raises:
        ValueError: not an ``.npy`` of a pickled object array (the message says what it holds).
        RefusedGlobal / pickle.UnpicklingError / EOFError: refused global, corrupt or truncated pickle.
    """
    f = io.BytesIO(raw)
    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = npy_format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = npy_format.read_array_header_2_0(f)
    else:
        raise UserError(f"unsupported .npy version {version}")
    if not dtype.hasobject:
        raise UserError(f"holds a {dtype} array of shape {shape}, not a pickled dict")
    arr = unpickle(raw[f.tell():], allowed)
    if isinstance(arr, np.ndarray):
        if arr.shape != ():
            raise UserError(f"holds an object array of shape {arr.shape}, not a 0-d array")
        return arr[()]
    return arr


def load_object_npy(path: PathLike, allowed: AllowList = NUMPY_DATA) -> Any:
    """The object stored in an ``.npy`` holding a pickled 0-d object array (restricted unpickling).

    Raises:
        OSError: unreadable file.
        ValueError: not an object-array ``.npy`` (the message says what it holds).
        pickle.UnpicklingError: the pickle names a global outside ``allowed`` (``RefusedGlobal``)
            or is corrupt.
        EOFError: truncated file.
    """
    return object_npy_from_bytes(Path(path).read_bytes(), allowed)
