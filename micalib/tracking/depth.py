"""``depth/NNNNN.png``: the fitted mesh's camera-space depth, as the original tracker writes it.

The original (``tracker.py`` at the end of each frame, ``renderer.render_depth`` and
``masking.get_mask_depth``) rasterises the FLAME mesh plus 30 extra triangles that close the mouth,
under the frame's camera with back faces culled, takes each covered pixel's camera-space z
(perspective-correct), keeps the pixels whose triangle has a vertex outside FLAME_masks'
``boundary``, ``left_ear`` and ``right_ear`` regions (its interpolated mask is then > 0), multiplies
by 1000 and writes it as a one-channel uint16 PNG (millimetres, background 0). Same here, with two
named differences:

- values above 65,535 mm (a camera over 65 m away) are clamped to 65,535 (the original's
  ``astype(np.uint16)`` wraps them around); ``DepthStats`` counts them and the runner says so;
- the rasterisation is ``micalib.render.raster`` at pixel centres in OpenCV's convention, i.e. pixel
  (row i, column j) is the ray through the file K's (j + 0.5, i + 0.5): the same pixel convention as
  the K written into ``.frame`` (``outputs.k_convert``). It is the overlay's rasterisation: one per
  frame serves both (``overlay.compose_overlay(fragments=...)``). Its depth is ``c - 1/z`` (c a
  per-frame constant keeping it positive): 1/z is linear in screen space, so the rasteriser's own
  interpolation gives the exact perspective-correct z (and the exact nearest surface) with no
  per-pixel barycentric work.

Without ``FLAME_masks.pkl`` every triangle counts (one warning); on a topology other than FLAME's
5023 vertices the mouth stays open (the extra triangles name FLAME vertices).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from micalib.render.raster import Fragments, rasterize, vertex_normals

__all__ = ["DEPTH_MAX_MM", "FLAME_MOUTH_FACES", "DepthMesh", "DepthStats", "FrameGeometry", "depth_mm",
           "frame_geometry", "rasterize_frame"]

DEPTH_MAX_MM = 65535
FLAME_VERTICES = 5023
# The original's extra triangles closing the mouth (its util.get_flame_extra_faces), FLAME vertex ids.
FLAME_MOUTH_FACES = np.array([
    [1573, 1572, 1860], [1742, 1862, 1572], [1830, 1739, 1665], [2857, 2862, 2730], [2708, 2857, 2730],
    [1862, 1742, 1739], [1830, 1862, 1739], [1852, 1835, 1666], [1835, 1665, 1666], [2862, 2861, 2731],
    [1747, 1742, 1594], [3497, 1852, 3514], [1595, 1747, 1594], [1746, 1747, 1595], [1742, 1572, 1594],
    [2941, 3514, 2783], [2708, 2945, 2857], [2941, 3497, 3514], [1852, 1666, 3514], [2930, 2933, 2782],
    [2933, 2941, 2783], [2862, 2731, 2730], [2945, 2930, 2854], [1835, 1830, 1665], [2857, 2945, 2854],
    [1572, 1862, 1860], [2854, 2930, 2782], [2708, 2709, 2943], [2782, 2933, 2783], [2708, 2943, 2945]],
    np.int64)
# FLAME_masks regions left out of the depth (the original's get_mask_depth)
EXCLUDED_REGIONS = ("boundary", "left_ear", "right_ear")


@dataclass
class DepthMesh:
    """The triangles rasterised per frame: the mesh's own (first ``n_mesh``) then the mouth's, and
    per triangle whether its pixels go into the depth."""

    faces: np.ndarray     # (F + M, 3) int64
    n_mesh: int           # F: the mesh's own triangles (the overlay draws these)
    in_depth: torch.Tensor  # (F + M,) bool

    @classmethod
    def build(cls, faces: np.ndarray, n_vertices: int, masks: dict[str, np.ndarray] | None) -> DepthMesh:
        faces = np.asarray(faces, np.int64).reshape(-1, 3)
        extra = FLAME_MOUTH_FACES if n_vertices == FLAME_VERTICES else np.zeros((0, 3), np.int64)
        all_faces = np.concatenate([faces, extra])
        keep_vertex = np.ones(n_vertices, bool)
        for region in EXCLUDED_REGIONS if masks is not None else ():
            keep_vertex[np.asarray(masks.get(region, []), np.int64)] = False
        return cls(all_faces, len(faces), torch.as_tensor(keep_vertex[all_faces].any(1)))


def rasterize_frame(cam_verts: np.ndarray, k: np.ndarray, mesh: DepthMesh, height: int, width: int
                    ) -> tuple[np.ndarray, Fragments, float]:
    """One rasterisation of a frame (back faces culled, as the original's).

    Args:
        cam_verts: (V, 3) vertices in the camera frame (R X + t), metres.
        k: (3, 3) K in OpenCV's pixel convention.

    Returns:
        (V, 3) float32 screen vertices (x, y pixels in OpenCV's convention, ``c - 1/z``), the
        fragments of ``mesh.faces`` and c (``depth_mm`` turns the fragments' depth back into z).
    """
    cam_verts = np.asarray(cam_verts, np.float64)
    z = cam_verts[:, 2]
    front = z > 0
    c = 2.0 / float(z[front].min()) if front.any() else 1.0
    uvw = cam_verts @ np.asarray(k, np.float64).T
    inv = np.where(front, c - 1.0 / np.where(front, z, 1.0), -1.0)  # <= 0: behind the camera, skipped
    screen = np.concatenate([uvw[:, :2] / uvw[:, 2:3], inv[:, None]], 1).astype(np.float32)
    return screen, rasterize(screen, mesh.faces, height, width, cull_backfaces=True), c


@dataclass
class FrameGeometry:
    """What a frame's files and overlay need of the posed mesh, computed once per frame."""

    verts: np.ndarray        # (V, 3) float32 model space (mesh/NNNNN.ply)
    screen: np.ndarray       # (V, 3) float32 pixels (OpenCV convention) and c - 1/z
    fragments: Fragments     # rasterisation of DepthMesh.faces
    depth_offset: float      # c
    normals: np.ndarray      # (V, 3) unit vertex normals in the camera frame (the overlay's shading)
    landmarks: np.ndarray    # (N, 2) the model's landmark points projected (OpenCV pixels)


def frame_geometry(model, mesh: DepthMesh, state, k: np.ndarray, size: int) -> FrameGeometry:
    """Pose frame ``state`` (a ``fitting.FrameState``) on ``model`` (``TrackingFLAME``), project it
    with ``k`` (OpenCV convention) and rasterise it once for the depth and the overlay."""
    verts = model.vertices(state.exp, state.pose, state.eyelids)[0]
    r, t = np.asarray(state.r, np.float64), np.asarray(state.t, np.float64)
    cam = verts.astype(np.float64) @ r.T + t
    screen, frags, c = rasterize_frame(cam, k, mesh, size, size)
    normals = vertex_normals(torch.as_tensor(cam, dtype=torch.float32), mesh.faces[:mesh.n_mesh]).numpy()
    pts = model.full_points(verts, model.contour_bin(r)) @ r.T + t
    uvw = pts @ np.asarray(k, np.float64).T
    return FrameGeometry(verts, screen, frags, c, normals, uvw[:, :2] / uvw[:, 2:3])


class DepthStats:
    """Pixels clamped at 65,535 mm over a run (the writer threads add to it)."""

    def __init__(self) -> None:
        self.clamped_pixels = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        if n:
            with self._lock:
                self.clamped_pixels += n


def depth_mm(frags: Fragments, depth_offset: float, mesh: DepthMesh, height: int, width: int,
             stats: DepthStats | None = None) -> np.ndarray:
    """(H, W) uint16 depth in millimetres (0 = background / a left-out region), clamped to 65,535,
    truncated to whole millimetres as the original's ``astype(np.uint16)``; from ``rasterize_frame``'s
    fragments and c (z = 1 / (c - depth), exact: 1/z is linear on the screen)."""
    out = np.zeros(height * width, np.uint16)
    pix = frags.covered_index()
    if len(pix) == 0:
        return out.reshape(height, width)
    keep = mesh.in_depth.index_select(0, frags.tri_id.view(-1).index_select(0, pix))
    mm = (1000.0 / (depth_offset - frags.covered_depth.double())).masked_fill_(~keep, 0)
    if stats is not None:
        stats.add(int((mm > DEPTH_MAX_MM).sum()))
    out[pix.numpy()] = mm.clamp_(max=DEPTH_MAX_MM).numpy().astype(np.uint16)
    return out.reshape(height, width)

