"""``to_numpy``: a numpy array from a numpy array, a torch tensor (any device, with or without
grad) or a nested sequence, in the requested dtype, C-contiguous."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_numpy"]


def to_numpy(x, dtype=np.float32) -> np.ndarray:
    """``x`` as a C-contiguous numpy array of ``dtype`` (a tensor is detached and moved to the CPU
    first; no copy when ``x`` already is such an array)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)
