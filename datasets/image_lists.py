"""Per-dataset image lists: ``actor -> (image paths, FLAME fit path)`` stored as a pickled dict in a
``.npy`` file (the format of MICA's ``datasets/image_paths/NAME.npy``).

Image paths are relative to ``ROOT/NAME/arcface_input/`` (e.g. ``00001/2C.png``; the 3x112x112
network input ``00001/2C.npy`` sits beside it), the fit path is relative to
``ROOT/NAME/FLAME_parameters/`` (e.g. ``00001/130925161618.npz``).

The file is a NumPy 0-d object array wrapping the dict. ``np.load(allow_pickle=True)`` would run
whatever the pickle names, so :func:`load_image_list` reads it with a restricted unpickler that only
allows the three NumPy callables that rebuild an object array, then checks every type.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from utils.errors import MICAError, UserError, UserFileNotFound
from utils.io import atomic_write_bytes
from utils.safe_pickle import load_object_npy

PathLike = str | os.PathLike
ImageList = dict[str, tuple[list[str], str]]

def _as_str(x, what: str) -> str:
    if isinstance(x, (str, np.str_)):
        return str(x)
    raise UserError(f"{what} is a {type(x).__name__}, not a string")


def validate_image_list(obj) -> ImageList:
    """Check the structure ``dict[str, (list[str], str)]`` and return a clean copy.

    Raises:
        ValueError: the object does not have that structure (the message says where).
    """
    if not isinstance(obj, dict):
        raise UserError(f"holds a {type(obj).__name__}, not a dict of actor -> (images, npz)")
    out: ImageList = {}
    for actor, entry in obj.items():
        actor_s = _as_str(actor, "an actor key")
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise UserError(f"entry of actor '{actor_s}' is not a pair (images, npz)")
        images, npz = entry
        if not isinstance(images, (list, tuple)):
            raise UserError(f"images of actor '{actor_s}' are a {type(images).__name__}, not a list")
        out[actor_s] = ([_as_str(p, f"an image path of actor '{actor_s}'") for p in images],
                        _as_str(npz, f"the npz path of actor '{actor_s}'"))
    return out


def load_image_list(path: PathLike) -> ImageList:
    """Load an image list ``NAME.npy`` without executing code from it.

    Returns:
        ``{actor: ([image paths relative to arcface_input/], npz path relative to FLAME_parameters/)}``
        in the stored order (validation takes images in this order).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MICAError: the file is not a valid image list.
    """
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFound(f"image list {path} does not exist (copy it into that folder or build it with "
                                f"python -m datasets.build_lists ROOT/NAME -o {path})")
    try:
        obj = load_object_npy(path)
        return validate_image_list(obj)
    except (ValueError, pickle.UnpicklingError, EOFError, OSError, TypeError, AttributeError) as e:
        raise MICAError(f"image list {path} is not a valid MICA image list ({e}); rebuild it with "
                        f"python -m datasets.build_lists ROOT/NAME -o {path}") from None


def image_list_bytes(image_list: ImageList) -> bytes:
    """The ``.npy`` bytes of ``image_list`` in the original format (0-d object array, pickle protocol 3).

    The array is rebuilt via ``numpy.core.multiarray._reconstruct`` (the name older NumPy releases
    know; NumPy 2 still resolves it), so the original MICA code can read lists written here.
    """
    clean = validate_image_list(image_list)
    arr = np.empty((), dtype=object)
    arr[()] = {a: (list(imgs), npz) for a, (imgs, npz) in clean.items()}
    header = io.BytesIO()  # magic + version 1.0 + header dict
    npy_format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
    payload = pickle.dumps(arr, protocol=3)
    payload = payload.replace(b"cnumpy._core.multiarray\n_reconstruct\n",
                              b"cnumpy.core.multiarray\n_reconstruct\n", 1)
    return header.getvalue() + payload


def save_image_list(path: PathLike, image_list: ImageList) -> None:
    """Write ``image_list`` to ``path`` (``.npy``) atomically in the original format."""
    atomic_write_bytes(path, image_list_bytes(image_list))
