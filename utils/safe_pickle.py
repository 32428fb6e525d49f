"""Reading pickled ``.npy`` files (a 0-d object array holding a dict) without running code.

The MICA image lists and the NoW face boxes are ``np.save`` of a Python dict. ``np.load(...,
allow_pickle=True)`` would execute whatever the file names; here only the globals NumPy needs to
rebuild an object array are resolved and anything else raises ``pickle.UnpicklingError``.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, FrozenSet, Tuple, Union

import numpy as np
from numpy.lib import format as npy_format

PathLike = Union[str, os.PathLike]

# The globals a pickled object array of plain Python/NumPy values needs (NumPy 1.x and 2.x names).
NUMPY_OBJECT_GLOBALS: FrozenSet[Tuple[str, str]] = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})


class AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the ``(module, name)`` pairs in ``allowed``."""

    def __init__(self, file, allowed: FrozenSet[Tuple[str, str]] = NUMPY_OBJECT_GLOBALS, encoding: str = "latin1"):
        super().__init__(file, encoding=encoding)
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_object_npy(path: PathLike) -> Any:
    """The object stored in a ``.npy`` holding a pickled 0-d object array (restricted unpickling).

    Raises:
        ValueError: not an object-array ``.npy`` (the message says what it holds).
        pickle.UnpicklingError: the pickle names a global outside ``NUMPY_OBJECT_GLOBALS``.
        EOFError: truncated file.
    """
    with open(Path(path), "rb") as f:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = npy_format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = npy_format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        if dtype != np.dtype(object):
            raise ValueError(f"holds a {dtype} array of shape {shape}, not a pickled dict")
        arr = AllowListUnpickler(f).load()
    if isinstance(arr, np.ndarray):
        if arr.shape != ():
            raise ValueError(f"holds an object array of shape {arr.shape}, not a 0-d array")
        return arr[()]
    return arr
