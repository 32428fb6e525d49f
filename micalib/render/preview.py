"""CPU mesh renderer (numpy, no pytorch3d): z-buffered rasteriser, Lambertian headlight shading,
orthographic camera fitted to the mesh, and a numpy ``make_grid``.

Conventions: mesh coordinates have +y up and the face looking along +z (FLAME). Screen pixels:
x to the right, y down, pixel (row r, column c) has its centre at (c + 0.5, r + 0.5); a larger depth
is nearer the camera. A FLAME mesh (5023 vertices, 9976 triangles) renders at 256x256 in a few
tens of milliseconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch

__all__ = ["Fragments", "OrthoCamera", "rasterize", "fit_camera", "view_rotation", "shade", "render_mesh",
           "render_preview", "make_grid", "DEFAULT_COLOR"]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence]

# Mesh colour (RGB in [0, 1]) and the share of light that does not depend on the surface direction.
DEFAULT_COLOR = (0.72, 0.72, 0.78)
AMBIENT = 0.25
# Fraction of the image the mesh's largest extent fills.
FIT_MARGIN = 0.9
# Candidate pixels handled per rasteriser chunk (bounds memory on large triangles / images).
_CHUNK_PIXELS = 1 << 21


def _np(x: ArrayLike, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


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
    v = _np(screen)
    f = _np(faces, np.int64).reshape(-1, 3)
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
    for chunk_ids, chunk_counts in zip(np.split(ids, bounds + 1), np.split(counts, bounds + 1)):
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


def view_rotation(view: str) -> np.ndarray:
    """(3, 3) rotation applied to the mesh before projection: 'front' = identity, 'side' = yaw of
    90 degrees about +y (the face then looks to the image right)."""
    if view == "front":
        return np.eye(3)
    if view == "side":
        a = math.pi / 2
        return np.array([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    raise ValueError(f"unknown view '{view}' (use 'front' or 'side')")


@dataclass
class OrthoCamera:
    """Orthographic camera: screen = ((p - center) * scale) with y flipped, centred in the image.

    Attributes:
        center: (3,) point of the (view-rotated) mesh placed at the image centre.
        scale: pixels per mesh unit.
    """

    center: np.ndarray
    scale: float

    def project(self, points: np.ndarray, size: int) -> np.ndarray:
        """(N, 3) view-space points -> (N, 3) screen (x px, y px down, depth = z * scale)."""
        d = (points - self.center) * self.scale
        return np.stack([size / 2.0 + d[:, 0], size / 2.0 - d[:, 1], d[:, 2]], axis=1)


def fit_camera(vertices: ArrayLike, size: int, view: str = "front", margin: float = FIT_MARGIN) -> OrthoCamera:
    """Camera that centres the mesh's bounding box and fits its largest 3D extent to ``margin`` x
    ``size`` pixels (the same scale for every view of the same mesh)."""
    v = _np(vertices)
    extent = float((v.max(0) - v.min(0)).max()) if len(v) else 0.0
    scale = margin * size / extent if extent > 0 else 1.0
    rv = v @ view_rotation(view).T
    center = (rv.max(0) + rv.min(0)) / 2.0 if len(v) else np.zeros(3)
    return OrthoCamera(center=center, scale=scale)


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
                camera: Optional[OrthoCamera] = None, smooth: bool = True) -> np.ndarray:
    """Render a triangle mesh with a headlight (light from the camera) onto a square image.

    Args:
        vertices: (V, 3) in any unit (numpy or torch); +y up, the face looking along +z.
        faces: (F, 3) vertex indices, counter-clockwise seen from outside.
        size: image side in pixels.
        view: 'front' or 'side' (yaw 90 degrees).
        color: mesh RGB in [0, 1].
        background: RGB uint8 of empty pixels.
        camera: fixed camera (e.g. shared by several meshes); default ``fit_camera(vertices, size, view)``.
        smooth: interpolate vertex normals (True) or shade each triangle flat.

    Returns:
        (size, size, 3) uint8 RGB.
    """
    v = _np(vertices)
    f = _np(faces, np.int64).reshape(-1, 3)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"render_mesh expects (V,3) vertices, got {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("render_mesh: vertices contain NaN or inf")
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"render_mesh: face indices out of range for {len(v)} vertices")
    rv = v @ view_rotation(view).T
    cam = camera if camera is not None else fit_camera(v, size, view)
    frags = rasterize(cam.project(rv, size), f, size, size)
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


def _as_rgb(image: np.ndarray, size: int) -> np.ndarray:
    img = _np(image, None)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img * (255.0 if img.max(initial=0) <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[..., :3]
    if img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR)
    return np.ascontiguousarray(img)


def render_preview(vertices_mm: ArrayLike, faces: ArrayLike, crop_rgb: Optional[np.ndarray] = None,
                   size: int = 256) -> np.ndarray:
    """One preview image: [aligned crop |] front render | side render, each ``size`` x ``size``.

    Args:
        vertices_mm: (V, 3) mesh (any unit; the camera is fitted to it).
        faces: (F, 3).
        crop_rgb: optional (h, w, 3) RGB crop, resized to ``size``.

    Returns:
        (size, 2 * size or 3 * size, 3) uint8 RGB.
    """
    cam_front = fit_camera(vertices_mm, size, "front")
    tiles = [] if crop_rgb is None else [_as_rgb(crop_rgb, size)]
    tiles.append(render_mesh(vertices_mm, faces, size, "front", camera=cam_front))
    tiles.append(render_mesh(vertices_mm, faces, size, "side"))
    return np.concatenate(tiles, axis=1)


def make_grid(images: Union[Sequence[np.ndarray], np.ndarray], nrow: int = 8, pad: int = 2,
              pad_value: float = 0) -> np.ndarray:
    """Tile images into a grid with torchvision's ``make_grid`` layout.

    ``min(nrow, B)`` images per row, ``pad`` pixels of ``pad_value`` around and between them.

    Args:
        images: numpy (B, H, W, C) or a list of (H, W, C) or (H, W) arrays of one size.

    Returns:
        The grid, a numpy (H', W', C) array of the images' dtype: H' = rows * (H + pad) + pad, W' = min(nrow, B) * (W + pad) + pad.
    """
    if nrow < 1 or pad < 0:
        raise ValueError(f"make_grid: nrow must be >= 1 and pad >= 0 (got {nrow}, {pad})")
    if isinstance(images, np.ndarray):
        # (B, H, W, C) batch, or one (H, W, C) / (H, W) image
        arrs = list(images) if images.ndim == 4 else [images]
    else:
        arrs = [_np(a, None) for a in images]
    if not arrs:
        raise ValueError("make_grid: no images")
    arrs = [a[..., None] if a.ndim == 2 else a for a in arrs]
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise ValueError(f"make_grid: images differ in shape {sorted(shapes)}")
    h, w, c = arrs[0].shape
    b = len(arrs)
    xm = min(nrow, b)
    ym = math.ceil(b / xm)
    grid = np.full((ym * (h + pad) + pad, xm * (w + pad) + pad, c), pad_value, dtype=arrs[0].dtype)
    for k, a in enumerate(arrs):
        top, left = (k // xm) * (h + pad) + pad, (k % xm) * (w + pad) + pad
        grid[top:top + h, left:left + w] = a
    return grid
