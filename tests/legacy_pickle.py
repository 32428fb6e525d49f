"""Writing pickles the way the original writers did (for tests): Python 2 and numpy-1 global names.

The original files were written by older software than ours: FLAME's ``generic_model.pkl`` by
Python 2 with chumpy and old scipy, MICA's image lists, landmark embedding and checkpoints by
numpy 1.x (``numpy.core.multiarray._reconstruct``; numpy 2 writes ``numpy._core.multiarray``).
:class:`LegacyPickler` is the pure-Python pickler with two switches:

- ``renames``: (module, qualname) of an object -> the (module, name) written in its GLOBAL;
- ``py2_strings``: ``bytes`` and ASCII ``str`` written as Python 2 ``str`` (``BINSTRING``; the
  text ``STRING`` opcode at protocol 0), as Python 2 wrote them.

``torch_save_numpy1(obj)`` is ``torch.save`` through this pickler (numpy-1 names), i.e. what the
official trainer's environment (torch 1.13, numpy 1.23) wrote. ``classes_named(module, name)``
makes a throwaway class pickled under a foreign name (``chumpy.ch.Ch``) without importing it.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import struct
import types
from typing import Any

import numpy as np
import torch
from numpy.lib import format as npy_format

Name = tuple[str, str]

# numpy 2 location -> the name numpy 1.x wrote.
NUMPY1_NAMES: dict[Name, Name] = {
    ("numpy._core.multiarray", "_reconstruct"): ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"): ("numpy.core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"): ("numpy.core.numeric", "_frombuffer"),
}

# Python 3 / current scipy location -> the name Python 2 with old numpy/scipy wrote.
PY2_NAMES: dict[Name, Name] = dict(NUMPY1_NAMES)
PY2_NAMES.update({
    ("builtins", "set"): ("__builtin__", "set"),
    ("builtins", "frozenset"): ("__builtin__", "frozenset"),
    ("builtins", "object"): ("__builtin__", "object"),
    ("copyreg", "_reconstructor"): ("copy_reg", "_reconstructor"),
    ("scipy.sparse._csc", "csc_matrix"): ("scipy.sparse.csc", "csc_matrix"),
})


class LegacyPickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch can be extended
    """See the module docstring; subclass and set ``renames`` / ``py2_strings``."""

    renames: dict[Name, Name] = NUMPY1_NAMES
    py2_strings = False
    dispatch = dict(pickle._Pickler.dispatch)

    def _binstring(self, obj: object, data: bytes) -> None:
        if self.proto == 0:  # Python 2's text STRING opcode: the repr of the str
            self.write(pickle.STRING + repr(data)[1:].encode("ascii") + b"\n")
        elif len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_bytes(self, obj: bytes) -> None:
        if self.py2_strings:
            self._binstring(obj, obj)
        else:
            pickle._Pickler.save_bytes(self, obj)

    def save_str(self, obj: str) -> None:
        if self.py2_strings:
            try:
                return self._binstring(obj, obj.encode("ascii"))
            except UnicodeEncodeError:
                pass
        pickle._Pickler.save_str(self, obj)

    def save_global(self, obj: object, name: str | None = None) -> None:
        key = (getattr(obj, "__module__", None), name or getattr(obj, "__qualname__", None))
        if key in self.renames:
            module, qualname = self.renames[key]
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
            self.memoize(obj)
        else:
            pickle._Pickler.save_global(self, obj, name)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str
    dispatch[types.FunctionType] = save_global
    dispatch[type] = save_global


class Numpy1Pickler(LegacyPickler):
    """numpy 1.x global names, Python 3 strings (numpy 1.23 + Python 3: the MICA environment)."""

    renames = NUMPY1_NAMES


class Py2Pickler(LegacyPickler):
    """Python 2 names and strings (the FLAME 2020 files)."""

    renames = PY2_NAMES
    py2_strings = True


def class_named(module: str, name: str, getstate=None) -> type:
    """A throwaway class whose instances pickle as ``module.name`` (never put in ``sys.modules``;
    pickle it with a :class:`LegacyPickler` whose ``renames`` holds ``(module, name)``)."""
    body: dict[str, Any] = {"__module__": module}
    if getstate is not None:
        body["__getstate__"] = getstate
    cls = type(name, (object,), body)
    cls.__qualname__ = name
    return cls


def dumps(obj: Any, pickler: type = Numpy1Pickler, protocol: int = 3) -> bytes:
    buf = io.BytesIO()
    pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


def npy_object_bytes(obj: Any, pickler: type = Numpy1Pickler) -> bytes:
    """``np.save(f, np.array(obj, dtype=object))`` as numpy 1.x wrote it (format 1.0, protocol 3)."""
    arr = np.empty((), dtype=object)
    arr[()] = obj
    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
    return header.getvalue() + dumps(arr, pickler, protocol=3)


def torch_save_numpy1(obj: Any) -> bytes:
    """``torch.save(obj)`` bytes with numpy's globals under their numpy-1 names."""
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_module=types.SimpleNamespace(Pickler=Numpy1Pickler, __name__="pickle"))
    return buf.getvalue()


def pickle_globals(data: bytes) -> set[str]:
    """The ``module.name`` of every GLOBAL / INST opcode in a pickle (``pickletools.genops``).

    Python 2's protocol-0 ``STRING`` of binary data does not decode as ASCII, which pickletools
    insists on; while listing, that argument is read undecoded (the opcodes are unchanged).
    """
    out = set()
    reader = pickletools.stringnl.reader
    pickletools.stringnl.reader = lambda f: pickletools.read_stringnl(f, decode=False)
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                out.add(".".join(arg.split(" ", 1)))
            elif op.name == "STACK_GLOBAL":
                raise AssertionError("STACK_GLOBAL (protocol 4+) is not what the original writers used")
    finally:
        pickletools.stringnl.reader = reader
    return out


def torch_file_globals(data: bytes) -> set[str]:
    """:func:`pickle_globals` of the ``data.pkl`` inside a ``torch.save`` zip file."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        name = next(n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl")
        return pickle_globals(z.read(name))
