"""Preview images of a mesh: the demo's and the NoW export's ``render.png`` (``render_preview``) and
the training image grids (``render_mesh`` + ``make_grid``).

The mesh is drawn by ``micalib.render.raster.rasterize`` (the project's one rasteriser; its pixel
and depth conventions are documented there) under an orthographic camera fitted to the mesh
(``fit_camera``), and lit by ``micalib.render.shading.shade`` (the one Lambertian headlight). Mesh
coordinates have +y up and the face looking along +z (FLAME), so the camera frame of the rasteriser
(x right, y down, z forward) is the mesh's (x, -y, -z) after the view rotation.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from micalib.render.raster import rasterize, vertex_normals
from micalib.render.shading import shade
from utils.arrays import to_numpy

__all__ = ["OrthoCamera", "fit_camera", "view_rotation", "render_mesh", "render_preview", "make_grid",
           "DEFAULT_COLOR", "AMBIENT"]

ArrayLike = np.ndarray | torch.Tensor | Sequence

# Mesh colour (RGB in [0, 1]) and the share of light that does not depend on the surface direction.
DEFAULT_COLOR = (0.72, 0.72, 0.78)
AMBIENT = 0.25
# Fraction of the image the mesh's largest extent fills.
FIT_MARGIN = 0.9
# The camera frame of the rasteriser from the (view-rotated) mesh frame: y and z flip.
_MESH_TO_CAMERA = np.array([1.0, -1.0, -1.0])


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
    """Orthographic camera looking along the mesh's -z, ``center`` at the image centre.

    Attributes:
        center: (3,) point of the (view-rotated) mesh placed at the image centre.
        scale: pixels per mesh unit.
    """

    center: np.ndarray
    scale: float

    def project(self, points: np.ndarray, size: int) -> np.ndarray:
        """(N, 3) view-space points -> (N, 3) rasteriser screen vertices (x px, y px down, depth):
        the image centre is at x = y = (size - 1) / 2 (pixel centres at integers); the depth grows
        away from the camera and is shifted to be at least 1 (any offset: the projection is
        orthographic)."""
        d = (np.asarray(points, np.float64) - self.center) * self.scale * _MESH_TO_CAMERA
        screen = d + [(size - 1) / 2.0, (size - 1) / 2.0, 0.0]
        if len(screen):
            screen[:, 2] += 1.0 - screen[:, 2].min()
        return screen


def fit_camera(vertices: ArrayLike, size: int, view: str = "front", margin: float = FIT_MARGIN) -> OrthoCamera:
    """Camera that centres the mesh's bounding box and fits its largest 3D extent to ``margin`` x
    ``size`` pixels (the same scale for every view of the same mesh)."""
    v = to_numpy(vertices, np.float64)
    extent = float((v.max(0) - v.min(0)).max()) if len(v) else 0.0
    scale = margin * size / extent if extent > 0 else 1.0
    rv = v @ view_rotation(view).T
    center = (rv.max(0) + rv.min(0)) / 2.0 if len(v) else np.zeros(3)
    return OrthoCamera(center=center, scale=scale)


def _checked(vertices: ArrayLike, faces: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    v = to_numpy(vertices, np.float64)
    f = to_numpy(faces, np.int64).reshape(-1, 3)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"render_mesh expects (V,3) vertices, got {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError("render_mesh: vertices contain NaN or inf")
    if len(f) and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"render_mesh: face indices out of range for {len(v)} vertices")
    return v, f


def render_mesh(vertices: ArrayLike, faces: ArrayLike, size: int = 256, view: str = "front",
                color: Sequence[float] = DEFAULT_COLOR, background: Sequence[int] = (255, 255, 255),
                camera: OrthoCamera | None = None, smooth: bool = True) -> np.ndarray:
    """Render a triangle mesh with a headlight (light from the camera) onto a square image; both
    windings are drawn, a triangle facing away gets the ambient light only.

    Args:
        vertices: (V, 3) in any unit (numpy or torch); +y up, the face looking along +z.
        faces: (F, 3) vertex indices, counter-clockwise seen from outside.
        size: image side in pixels.
        view: 'front' or 'side' (yaw 90 degrees).
        color: mesh RGB in [0, 1].
        background: RGB uint8 of empty pixels.
        camera: fixed camera (e.g. shared by several meshes); default ``fit_camera(vertices, size, view)``.
        smooth: interpolate vertex normals per pixel (True) or shade each triangle flat.

    Returns:
        (size, size, 3) uint8 RGB.
    """
    v, f = _checked(vertices, faces)
    rv = v @ view_rotation(view).T
    cam = camera if camera is not None else fit_camera(v, size, view)
    ft = torch.from_numpy(f)
    frags = rasterize(torch.from_numpy(cam.project(rv, size)), ft, size, size)
    img = np.empty((size * size, 3), np.uint8)
    img[:] = np.asarray(background, dtype=np.uint8)
    pix = frags.covered_index()
    if len(pix) == 0:
        return img.reshape(size, size, 3)
    tri = frags.tri_id.view(-1).index_select(0, pix)
    cam_verts = torch.from_numpy(rv * _MESH_TO_CAMERA)  # normals in the camera frame, as shade expects
    if smooth:
        vn = vertex_normals(cam_verts, ft)
        corners = ft.index_select(0, tri)  # (P, 3)
        n = (frags.covered_bary[:, :, None] * vn[corners]).sum(1)
    else:
        a, b, c = (cam_verts[ft[tri, k]] for k in range(3))
        n = torch.cross(b - a, c - a, dim=1)
    n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-12)
    rgb = torch.tensor(color, dtype=torch.float64)[None, :] * shade(n, AMBIENT)[:, None]
    img[pix.numpy()] = (rgb * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()
    return img.reshape(size, size, 3)


def _as_rgb(image: np.ndarray, size: int) -> np.ndarray:
    img = to_numpy(image, None)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img * (255.0 if img.max(initial=0) <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        img = img[..., :3]
    if img.shape[:2] != (size, size):
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR)
    return np.ascontiguousarray(img)


def render_preview(vertices_mm: ArrayLike, faces: ArrayLike, crop_rgb: np.ndarray | None = None,
                   size: int = 256) -> np.ndarray:
    """One preview image: [aligned crop |] front render | side render, each ``size`` x ``size``.

    Args:
        vertices_mm: (V, 3) mesh (any unit; the camera is fitted to it).
        faces: (F, 3).
        crop_rgb: optional (h, w, 3) RGB crop, resized to ``size``.

    Returns:
        (size, 2 * size or 3 * size, 3) uint8 RGB.
    """
    tiles = [] if crop_rgb is None else [_as_rgb(crop_rgb, size)]
    tiles.append(render_mesh(vertices_mm, faces, size, "front"))
    tiles.append(render_mesh(vertices_mm, faces, size, "side"))
    return np.concatenate(tiles, axis=1)


def make_grid(images: Sequence[np.ndarray] | np.ndarray, nrow: int = 8, pad: int = 2,
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
        arrs = [to_numpy(a, None) for a in images]
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
