"""Per-vertex loss weights from the FLAME region masks (``FLAME_masks.pkl``).

MICA weights the vertex loss by region: every vertex ``whole`` (1.0), then both eyeballs
``eyes`` (0.01), then both ears ``ears`` (0.01), then the face ``face`` (150.0); later
assignments overwrite earlier ones, so a face vertex that is also an eyeball vertex gets 150.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from utils.errors import MICAError

# (weight name, mask regions) in assignment order; later entries win.
REGION_ORDER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("eyes", ("left_eyeball", "right_eyeball")),
    ("ears", ("left_ear", "right_ear")),
    ("face", ("face",)),
)
DEFAULT_WEIGHTS: dict[str, float] = {"whole": 1.0, "eyes": 0.01, "ears": 0.01, "face": 150.0}


def vertex_weights(masks: Mapping[str, np.ndarray], n_vertices: int,
                   weights: Mapping[str, float] | None = None,
                   order: Sequence[tuple[str, Sequence[str]]] = REGION_ORDER) -> np.ndarray:
    """Loss weight of every vertex.

    Args:
        masks: region name -> vertex indices (as ``load_flame_masks`` returns).
        n_vertices: V, the number of FLAME vertices.
        weights: ``whole`` plus one value per name in ``order`` (defaults: MICA's); extra keys
            (nose, lips, ...) are ignored.
        order: (weight name, regions) pairs assigned in order, later ones winning.

    Returns:
        (V,) float32 weights.

    Raises:
        MICAError: a needed region is missing from ``masks`` or indexes past ``n_vertices``.
    """
    w = dict(DEFAULT_WEIGHTS)
    w.update({k: float(v) for k, v in (weights or {}).items()})
    out = np.full(int(n_vertices), w["whole"], dtype=np.float32)
    for name, regions in order:
        for region in regions:
            if region not in masks:
                raise MICAError(f"FLAME masks have no region '{region}' (use the official FLAME_masks.pkl)")
            idx = np.asarray(masks[region], dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n_vertices):
                raise MICAError(f"FLAME mask '{region}' indexes vertex {int(idx.max())} but the model has "
                                f"{n_vertices} vertices (masks and FLAME model do not match)")
            out[idx] = w[name]
    return out


def from_config(cfg: Any, n_vertices: int) -> np.ndarray:
    """(V,) weights from ``cfg.model.flame_masks_path`` and ``cfg.mask_weights``.

    Returns uniform ones when ``cfg.train.use_mask`` is False (the original's switch).
    """
    from configs.config import resolve_path
    from models.flame_io import load_flame_masks

    if not bool(cfg.train.use_mask):
        return np.ones(int(n_vertices), dtype=np.float32)
    masks = load_flame_masks(resolve_path(cfg.model.flame_masks_path), n_vertices=int(n_vertices))
    return vertex_weights(masks, n_vertices, dict(cfg.mask_weights))
