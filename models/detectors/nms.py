"""Greedy non-maximum suppression shared by SCRFD and MTCNN."""
from __future__ import annotations

import numpy as np

__all__ = ["nms", "NMS_MATRIX_MAX"]

# Up to this many boxes NMS compares all pairs at once (an n x n overlap matrix, then one row
# operation per kept box): faster than box-by-box on MTCNN's 10-150 candidates per call.
NMS_MATRIX_MAX = 512


def _overlap(x1, y1, x2, y2, areas, i, j, mode: str) -> np.ndarray:
    """Overlap of boxes ``i`` with boxes ``j`` (index arrays or broadcastable slices), "+1 pixel" areas."""
    w = np.maximum(0.0, np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]) + 1)
    h = np.maximum(0.0, np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]) + 1)
    inter = w * h
    if mode == "min":
        return inter / np.minimum(areas[i], areas[j])
    return inter / (areas[i] + areas[j] - inter)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression with the "+1 pixel" box area of insightface/MTCNN.

    Args:
        boxes: (N, 4) x1, y1, x2, y2.
        scores: (N,).
        threshold: a box is dropped when its overlap with a kept, higher-scoring box exceeds it.
        mode: "union" (IoU) or "min" (intersection / smaller area, MTCNN's last stage).

    Returns:
        (K,) int64 indices of the kept boxes, highest score first (ties in input order).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if mode not in ("union", "min"):
        raise ValueError(f"nms mode must be 'union' or 'min', not '{mode}'")
    order = np.argsort(-scores, kind="stable")
    n = len(order)
    if n <= 1:
        return order.astype(np.int64)
    x1, y1, x2, y2 = np.ascontiguousarray(boxes[order].T)
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    keep = []
    if n <= NMS_MATRIX_MAX:
        col, row = np.arange(n)[:, None], np.arange(n)[None]
        suppresses = _overlap(x1, y1, x2, y2, areas, col, row, mode) > threshold
        alive = np.ones(n, dtype=bool)
        for i in range(n):
            if alive[i]:
                keep.append(i)
                alive[i + 1:] &= ~suppresses[i, i + 1:]
    else:  # box by box: memory linear in n
        rest = np.arange(n)
        while rest.size > 0:
            i, rest = rest[0], rest[1:]
            keep.append(i)
            rest = rest[_overlap(x1, y1, x2, y2, areas, i, rest, mode) <= threshold]
    return order[np.asarray(keep, dtype=np.int64)]

