"""The tests' independent reference renderer (numpy): a z-buffered rasteriser written per pixel
(barycentrics from signed areas, the nearest candidate by sorting), Lambertian headlight shading and
the preview layout, in the opposite conventions to ``micalib.render.raster`` (which the product uses):
pixel (row r, column c) has its centre at (c + 0.5, r + 0.5) and a larger depth is nearer the
camera. It was the project's preview renderer until the previews moved to the torch rasteriser;
``tests/test_tracking_raster.py``, ``tests/test_renderer.py`` and ``tests/test_render_before_after.py``
compare the two. The camera (``fit_camera``, ``view_rotation``) is the product's, so both render
the same geometry. Mesh coordinates have +y up and the face looking along +z (FLAME).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from micalib.render.preview import AMBIENT, DEFAULT_COLOR, OrthoCamera, _as_rgb, _checked, fit_camera, view_rotation
from utils.arrays import to_numpy

__all__ = ["Fragments", "project", "rasterize", "shade", "render_mesh", "render_preview"]

ArrayLike = np.ndarray | torch.Tensor | Sequence

# Candidate pixels handled per rasteriser chunk (bounds memory on large triangles / images).
_CHUNK_PIXELS = 1 << 21



@dataclass
class Fragments:
    """Rasteriser output for an (H, W) image.

    Attributes:
        face_idx: (H, W) int64 index of the visible triangle, -1 where empty.
        bary: (H, W, 3) float64 barycentric weights of the visible triangle's vertices (0 where empty).
        depth: (H, W) float64 interpolated depth (larger = nearer), -inf where empty.
    """

    face_idx: np.ndarray
    bary: np.ndarray
    depth: np.ndarray


def rasterize(screen: ArrayLike, faces: ArrayLike, height: int, width: int) -> Fragments:
    """Z-buffered rasterisation of triangles given in screen coordinates.

    A pixel belongs to a triangle when its centre lies inside it or on its edge; of all triangles
    covering a pixel the one with the largest interpolated depth wins. Both windings are drawn.

    Args:
        screen: (V, 3) vertices as (x pixels, y pixels down, depth).
        faces: (F, 3) vertex indices.
        height, width: image size in pixels.
    """
    v = to_numpy(screen, np.float64)
    f = to_numpy(faces, np.int64).reshape(-1, 3)
    n_pix = height * width
    best_depth = np.full(n_pix, -np.inf)
    best_face = np.full(n_pix, -1, np.int64)
    best_bary = np.zeros((n_pix, 3))
    if len(f) == 0:
        return Fragments(best_face.reshape(height, width), best_bary.reshape(height, width, 3),
                         best_depth.reshape(height, width))
    tri = v[f]  # (F, 3, 3)
    x, y, z = tri[..., 0], tri[..., 1], tri[..., 2]
    area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    # columns/rows whose pixel centres fall inside each triangle's bounding box
    c0 = np.clip(np.ceil(x.min(1) - 0.5), 0, width).astype(np.int64)
    c1 = np.clip(np.floor(x.max(1) - 0.5), -1, width - 1).astype(np.int64)
    r0 = np.clip(np.ceil(y.min(1) - 0.5), 0, height).astype(np.int64)
    r1 = np.clip(np.floor(y.max(1) - 0.5), -1, height - 1).astype(np.int64)
    bw, bh = c1 - c0 + 1, r1 - r0 + 1
    valid = (bw > 0) & (bh > 0) & (np.abs(area2) > 1e-12) & np.isfinite(area2)
    ids = np.nonzero(valid)[0]
    counts = (bw[ids] * bh[ids]).astype(np.int64)
    # chunks of triangles holding about _CHUNK_PIXELS candidate pixels each
    bounds = np.searchsorted(np.cumsum(counts), np.arange(1, counts.sum() // _CHUNK_PIXELS + 1) * _CHUNK_PIXELS)
    for chunk_ids, chunk_counts in zip(np.split(ids, bounds + 1), np.split(counts, bounds + 1), strict=True):
        if len(chunk_ids) == 0:
            continue
        t = np.repeat(chunk_ids, chunk_counts)
        start = np.repeat(np.cumsum(chunk_counts) - chunk_counts, chunk_counts)
        local = np.arange(len(t)) - start
        px = c0[t] + local % bw[t]
        py = r0[t] + local // bw[t]
        cx, cy = px + 0.5, py + 0.5
        xt, yt = x[t], y[t]
        # barycentrics from the signed areas of the sub-triangles opposite each vertex
        w0 = ((xt[:, 1] - cx) * (yt[:, 2] - cy) - (xt[:, 2] - cx) * (yt[:, 1] - cy)) / area2[t]
        w1 = ((xt[:, 2] - cx) * (yt[:, 0] - cy) - (xt[:, 0] - cx) * (yt[:, 2] - cy)) / area2[t]
        w2 = 1.0 - w0 - w1
        eps = -1e-9
        inside = (w0 >= eps) & (w1 >= eps) & (w2 >= eps)
        if not inside.any():
            continue
        t, w0, w1, w2 = t[inside], w0[inside], w1[inside], w2[inside]
        pix = py[inside] * width + px[inside]
        depth = w0 * z[t, 0] + w1 * z[t, 1] + w2 * z[t, 2]
        # nearest candidate per pixel: sort by pixel, then by depth descending
        order = np.lexsort((-depth, pix))
        pix_s = pix[order]
        first = np.ones(len(order), bool)
        first[1:] = pix_s[1:] != pix_s[:-1]
        win = order[first]
        p = pix[win]
        better = depth[win] > best_depth[p]
        win, p = win[better], p[better]
        best_depth[p] = depth[win]
        best_face[p] = t[win]
        best_bary[p] = np.stack([w0[win], w1[win], w2[win]], 1)
    return Fragments(best_face.reshape(height, width), best_bary.reshape(height, width, 3),
                     best_depth.reshape(height, width))


def project(camera: OrthoCamera, points: np.ndarray, size: int) -> np.ndarray:
    """(N, 3) view-space points -> (N, 3) screen in this module's convention (x px, y px down,
    depth = z * scale, larger = nearer; pixel centres at +0.5)."""
    d = (points - camera.center) * camera.scale
    return np.stack([size / 2.0 + d[:, 0], size / 2.0 - d[:, 1], d[:, 2]], axis=1)


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """(V, 3) unit vertex normals: area-weighted mean of adjacent face normals (right-hand winding)."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, f[:, k], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return vn / np.maximum(norm, 1e-12)


def shade(normals: np.ndarray, light_dir: Sequence[float] = (0.0, 0.0, 1.0), ambient: float = AMBIENT) -> np.ndarray:
    """Lambertian intensity in [ambient, 1]: ambient + (1 - ambient) * max(0, n . l), n (..., 3) unit."""
    l = np.asarray(light_dir, dtype=np.float64)
    l = l / np.linalg.norm(l)
    return ambient + (1.0 - ambient) * np.clip(normals @ l, 0.0, None)


def render_mesh(vertices: ArrayLike, faces: ArrayLike, size: int = 256, view: str = "front",
                color: Sequence[float] = DEFAULT_COLOR, background: Sequence[int] = (255, 255, 255),
                camera: OrthoCamera | None = None, smooth: bool = True) -> np.ndarray:
    """``micalib.render.preview.render_mesh`` (same arguments and result) drawn by this module's
    rasteriser and shading."""
    v, f = _checked(vertices, faces)
    rv = v @ view_rotation(view).T
    cam = camera if camera is not None else fit_camera(v, size, view)
    frags = rasterize(project(cam, rv, size), f, size, size)
    hit = frags.face_idx >= 0
    img = np.empty((size, size, 3), np.uint8)
    img[:] = np.asarray(background, dtype=np.uint8)
    if not hit.any():
        return img
    fi = frags.face_idx[hit]
    if smooth:
        vn = _vertex_normals(rv, f)
        n = (frags.bary[hit][..., None] * vn[f[fi]]).sum(1)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    else:
        fn = np.cross(rv[f[fi, 1]] - rv[f[fi, 0]], rv[f[fi, 2]] - rv[f[fi, 0]])
        n = fn / np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-12)
    intensity = shade(n)
    rgb = np.asarray(color, dtype=np.float64)[None, :] * intensity[:, None]
    img[hit] = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return img


def render_preview(vertices_mm: ArrayLike, faces: ArrayLike, crop_rgb: np.ndarray | None = None,
                   size: int = 256) -> np.ndarray:
    """``micalib.render.preview.render_preview``'s layout, the meshes drawn by this module."""
    cam_front = fit_camera(vertices_mm, size, "front")
    tiles = [] if crop_rgb is None else [_as_rgb(crop_rgb, size)]
    tiles.append(render_mesh(vertices_mm, faces, size, "front", camera=cam_front))
    tiles.append(render_mesh(vertices_mm, faces, size, "side"))
    return np.concatenate(tiles, axis=1)
