"""``torch.save`` whose pickle names numpy's objects as numpy 1.x does (``numpy.core.multiarray``).

numpy 2 pickles arrays and scalars under ``numpy._core.multiarray._reconstruct`` / ``.scalar``;
numpy 1.25 and older (the clients of the original tracker: FlashAvatar pins numpy <= 1.21,
SplattingAvatar 1.23) cannot import ``numpy._core`` and fail with "No module named 'numpy._core'".
numpy 1.x wrote ``numpy.core.multiarray``, which numpy 2 still reads (a deprecated alias of the same
objects), so files written with numpy-1 names open under both.

How: :class:`Numpy1Pickler` pickles into memory as usual (protocol 2, as ``torch.save`` does by
default), then rewrites the module of every ``GLOBAL`` opcode that starts with ``numpy._core`` to
``numpy.core``. At protocol <= 3 a ``GLOBAL`` carries its module and name as newline-terminated
text and nothing in a pickle refers to byte offsets (the memo counts objects), so the rewrite
changes those names and nothing else. Protocol 4+ (``STACK_GLOBAL``, names as pushed strings) is
refused rather than guessed at.
"""
from __future__ import annotations

import io
import pickle
import pickletools
import types
from typing import Any

import torch

__all__ = ["NUMPY2_PREFIX", "NUMPY1_PREFIX", "Numpy1Pickler", "numpy1_names", "numpy1_pickle_module", "torch_save_numpy1"]

NUMPY2_PREFIX = "numpy._core"
NUMPY1_PREFIX = "numpy.core"
PROTOCOL = 2


def _renamed(module: str) -> str:
    if module == NUMPY2_PREFIX or module.startswith(NUMPY2_PREFIX + "."):
        return NUMPY1_PREFIX + module[len(NUMPY2_PREFIX):]
    return module


def numpy1_names(data: bytes) -> bytes:
    """The pickle ``data`` with every ``GLOBAL numpy._core...`` written as ``numpy.core...``.

    Raises:
        ValueError: ``data`` uses ``STACK_GLOBAL`` (protocol 4 or later).
    """
    out, last = [], 0
    for op, arg, pos in pickletools.genops(data):
        if op.name == "STACK_GLOBAL":
            raise ValueError("numpy1_names needs a pickle of protocol <= 3 (GLOBAL opcodes), got STACK_GLOBAL")
        if op.name != "GLOBAL":
            continue
        module, name = arg.split(" ", 1)
        new = _renamed(module)
        if new == module:
            continue
        end = pos + 1 + len(module) + 1 + len(name) + 1  # 'c' module '\n' name '\n'
        out += [data[last:pos], b"c", new.encode("ascii"), b"\n", name.encode("ascii"), b"\n"]
        last = end
    out.append(data[last:])
    return b"".join(out)


class Numpy1Pickler(pickle.Pickler):
    """A ``pickle.Pickler`` whose output names numpy's objects as numpy 1 did (see the module doc).

    ``persistent_id`` (set by ``torch.save``) works as on the plain pickler; the pickle is written
    to ``file`` when ``dump`` returns.
    """

    def __init__(self, file, protocol: int | None = None, **kwargs: Any) -> None:
        self._target = file
        self._buffer = io.BytesIO()
        super().__init__(self._buffer, PROTOCOL if protocol is None else protocol, **kwargs)

    def dump(self, obj: Any) -> None:
        super().dump(obj)
        self._target.write(numpy1_names(self._buffer.getvalue()))
        self._buffer.seek(0)
        self._buffer.truncate()


# what torch.save(pickle_module=...) uses of a pickle module
numpy1_pickle_module = types.SimpleNamespace(Pickler=Numpy1Pickler, __name__="numpy1_pickle")


def torch_save_numpy1(obj: Any, f) -> None:
    """``torch.save(obj, f)`` with numpy-1 names (protocol 2, torch's default)."""
    torch.save(obj, f, pickle_module=numpy1_pickle_module, pickle_protocol=PROTOCOL)
