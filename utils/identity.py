"""The one reader of MICA identity files (``identity.npy``: the FLAME shape coefficients).

Every reader goes through :func:`read_identity`: ``track.py --identity``, the tracker's cached
``OUT/NAME/identity.npy`` and the demo's saved identities (``--fuse`` re-runs). Whatever the file
holds, the result is (N,) float32 coefficients or one line naming the file and the fix; nothing
from the file is executed (no pickles).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from utils.errors import MICAError

PathLike = Union[str, os.PathLike]

N_SHAPE = 300
# MICA's identities are FLAME shape coefficients in units of the shape space's standard deviations;
# real faces lie within a few. Beyond this the file is not an identity (issue 21, T49: 1e30 gave
# meshes kilometres across, no warning).
MAX_ABS_COEFFICIENT = 10.0

__all__ = ["read_identity", "N_SHAPE", "MAX_ABS_COEFFICIENT"]


def read_identity(path: PathLike, fix: str = "pass MICA's identity.npy", n_shape: int = N_SHAPE) -> np.ndarray:
    """The (n_shape,) float32 identity in ``path`` (``np.save`` of (n_shape,) or (1, n_shape)).

    Args:
        fix: what the user should do about a bad file (e.g. "delete it to compute it again" for a cache).

    Raises:
        MICAError: missing, empty, truncated, pickled or not an .npy; not real numbers; another
            shape; NaN/inf; a coefficient beyond ``MAX_ABS_COEFFICIENT`` in magnitude.
    """
    path = Path(path)
    what = f"identity {path}"
    try:
        if os.path.getsize(path) == 0:
            raise MICAError(f"{what} is an empty file (0 bytes); {fix}")
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MICAError(f"{what} does not exist; {fix}") from None
    except IsADirectoryError:
        raise MICAError(f"{what} is a folder, not an .npy file; {fix}") from None
    except (OSError, ValueError, EOFError) as e:  # truncated, pickled, not an .npy
        detail = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise MICAError(f"{what} is not a readable .npy of numbers ({detail}); {fix}") from None
    if not isinstance(arr, np.ndarray):  # an .npz archive
        arr.close()
        raise MICAError(f"{what} is an .npz archive, not an .npy array; {fix}")
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise MICAError(f"{what} holds {arr.dtype} values, not real numbers; {fix}")
    if arr.shape not in ((n_shape,), (1, n_shape)):
        raise MICAError(f"{what} has shape {arr.shape}, not MICA's ({n_shape},) coefficients; {fix}")
    ident = arr.astype(np.float64).reshape(-1)
    if not np.isfinite(ident).all():
        raise MICAError(f"{what} holds non-finite values (NaN/inf); {fix}")
    worst = int(np.abs(ident).argmax())
    if abs(ident[worst]) > MAX_ABS_COEFFICIENT:
        raise MICAError(f"{what} holds coefficient {worst} = {ident[worst]:.3g}, beyond +-{MAX_ABS_COEFFICIENT:g} "
                        f"(MICA's identities lie within a few); {fix}")
    return ident.astype(np.float32)
