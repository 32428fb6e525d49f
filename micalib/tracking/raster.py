"""Fast triangle rasteriser in plain torch (no pytorch3d, no compiled extension) and differentiable
attribute interpolation on its output.

Rasterisation itself is not differentiable: it finds, per pixel, the nearest triangle and its
barycentric coordinates. ``interpolate`` then recomputes the barycentrics of each covered pixel from
the vertex positions with autograd, so gradients flow to per-vertex values (colours, normals) and to
the screen positions of the vertices (hence to pose, camera and shape). Gradients do not see
occlusion boundaries move (as with a hard rasteriser in pytorch3d, blur radius 0).

Conventions (OpenCV): ``verts_screen`` is (V, 3) = (x pixels to the right, y pixels down, depth > 0
along the viewing axis, e.g. the camera-space z in metres); pixel (row i, column j) has its centre at
x = j, y = i. A pixel belongs to a triangle when its centre lies inside it or on an edge; of all
triangles covering it, the smallest interpolated depth (the nearest) wins, ties to the lower triangle
index. Both windings are drawn. Triangles with a vertex at depth <= 0 (behind the camera) or with a
non-finite or zero-area projection are skipped. Barycentrics and depth are linear in screen space
(``interpolate(..., perspective_correct=True)`` corrects attributes for perspective).

Speed: per-triangle bounding boxes are expanded into candidate pixels with one broadcast per size
class (2x2, 4x4, 8x8, 16x16 tiles; larger boxes through a generic expansion), inside-tested with
precomputed edge coefficients, and resolved with one ``scatter_reduce(amin)`` on int64 keys
(float32 depth bits << 32 | triangle index), so the depth test and the winner's index come out of a
single reduction. The same code runs on CUDA tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["Fragments", "rasterize", "interpolate", "vertex_normals"]

TensorLike = Union[torch.Tensor, np.ndarray, Sequence]

# Candidate pixels expanded at once (bounds memory for huge triangles).
_CHUNK = 1 << 22
_EMPTY = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF


@dataclass
class Fragments:
    """Rasteriser output for an (H, W) image.

    Attributes:
        tri_id: (H, W) int64 index of the visible triangle, -1 on the background.
        bary: (H, W, 3) barycentric weights of that triangle's three vertices (0 on the background).
        depth: (H, W) interpolated depth of the visible surface (0 on the background).
    """

    tri_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    # flat indices (row * width + column) of the covered pixels, ascending; computed when None
    covered: Optional[torch.Tensor] = field(default=None, repr=False)

    def covered_index(self) -> torch.Tensor:
        """(P,) int64 flat indices (row * width + column) of the covered pixels, ascending."""
        if self.covered is None:
            self.covered = (self.tri_id.reshape(-1) >= 0).nonzero().squeeze(1)
        return self.covered

    @property
    def mask(self) -> torch.Tensor:
        """(H, W) bool: pixels covered by the mesh."""
        return self.tri_id >= 0


def _as_tensor(x: TensorLike, device=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x if device is None else x.to(device)
    return torch.as_tensor(np.ascontiguousarray(x), device=device)


def _float_verts(verts_screen: TensorLike) -> torch.Tensor:
    v = _as_tensor(verts_screen)
    if not v.is_floating_point():
        v = v.double()
    elif v.dtype in (torch.float16, torch.bfloat16):
        v = v.float()
    if v.dim() != 2 or v.shape[1] != 3:
        raise ValueError(f"rasterize expects (V, 3) screen vertices, got {tuple(v.shape)}")
    return v


def _faces(faces: TensorLike, device) -> torch.Tensor:
    f = _as_tensor(faces, device).long()
    if f.dim() != 2 or f.shape[1] != 3:
        raise ValueError(f"rasterize expects (F, 3) faces, got {tuple(f.shape)}")
    return f


def _coefficients(tri: torch.Tensor) -> torch.Tensor:
    """(F, 10) per triangle: x0, y0, z0, a1, b1, a2, b2, gx, gy, area2. With (dx, dy) = (x - x0,
    y - y0) the barycentrics are w1 = a1 dx + b1 dy, w2 = a2 dx + b2 dy, w0 = 1 - w1 - w2, and the
    depth z = z0 + gx dx + gy dy; area2 is the doubled signed area (0: degenerate)."""
    x0, y0, z0 = tri[:, 0, 0], tri[:, 0, 1], tri[:, 0, 2]
    e1 = tri[:, 1] - tri[:, 0]
    e2 = tri[:, 2] - tri[:, 0]
    area2 = e1[:, 0] * e2[:, 1] - e2[:, 0] * e1[:, 1]
    inv = 1.0 / torch.where(area2 == 0, torch.ones_like(area2), area2)
    a1, b1 = e2[:, 1] * inv, -e2[:, 0] * inv
    a2, b2 = -e1[:, 1] * inv, e1[:, 0] * inv
    gx, gy = a1 * e1[:, 2] + a2 * e2[:, 2], b1 * e1[:, 2] + b2 * e2[:, 2]
    return torch.stack([x0, y0, z0, a1, b1, a2, b2, gx, gy, area2], dim=1)


def rasterize(verts_screen: TensorLike, faces: TensorLike, height: int, width: int,
              cull_backfaces: bool = False) -> Fragments:
    """Nearest-triangle rasterisation (no gradient).

    Args:
        verts_screen: (V, 3) tensor or array: x pixels, y pixels (down), depth > 0 (smaller = nearer).
        faces: (F, 3) vertex indices.
        height, width: image size in pixels.
        cull_backfaces: skip triangles whose screen winding is clockwise as seen with y up (positive
            signed area in these y-down pixel coordinates). A mesh whose triangles are counter-clockwise
            seen from outside (FLAME) keeps exactly its camera-facing triangles under a proper rotation
            (an OpenCV camera); about a third fewer triangles to draw, and holes (the mouth) show the
            background instead of the inside of the head.

    Returns:
        Fragments on the device of ``verts_screen`` (a numpy input gives CPU tensors); ``bary`` and
        ``depth`` in float64 for float64 vertices, else float32.
    """
    v = _float_verts(verts_screen).detach()
    device, dtype = v.device, v.dtype
    f = _faces(faces, device)
    height, width = int(height), int(width)
    buf = torch.full((height * width,), _EMPTY, dtype=torch.int64, device=device)
    coef = None
    if len(f) and len(v):
        if int(f.min()) < 0 or int(f.max()) >= len(v):
            raise ValueError(f"rasterize: face indices out of range for {len(v)} vertices")
        coef = _rasterize_into(buf, v, f, height, width, cull_backfaces)
    covered = buf != _EMPTY
    tri_id = (buf & _LOW32).masked_fill_(~covered, -1)
    bary = torch.zeros(height * width, 3, dtype=dtype, device=device)
    depth = torch.zeros(height * width, dtype=dtype, device=device)
    pix = covered.nonzero().squeeze(1)
    if coef is not None:
        if len(pix):
            x0, y0, z0, a1, b1, a2, b2, gx, gy, _ = coef.index_select(0, tri_id.index_select(0, pix)).unbind(1)
            dx = (pix % width).to(dtype) - x0
            dy = torch.div(pix, width, rounding_mode="floor").to(dtype) - y0
            w1 = a1 * dx + b1 * dy
            w2 = a2 * dx + b2 * dy
            bary.index_copy_(0, pix, torch.stack([1.0 - w1 - w2, w1, w2], dim=1))
            depth.index_copy_(0, pix, z0 + gx * dx + gy * dy)
    tri_id, bary, depth = tri_id.view(height, width), bary.view(height, width, 3), depth.view(height, width)
    return Fragments(tri_id=tri_id, bary=bary, depth=depth, covered=pix)


def _expand(counts: torch.Tensor, total: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """For counts > 0 (1-D, int64) summing to ``total``: the owner index of each of the ``total``
    expanded items and the start of each owner's run (a fast ``repeat_interleave``)."""
    starts = counts.cumsum(0) - counts
    marks = torch.zeros(total, dtype=torch.int64, device=counts.device)
    marks.index_fill_(0, starts[1:], 1)
    return marks.cumsum(0), starts


def _rasterize_into(buf: torch.Tensor, v: torch.Tensor, f: torch.Tensor, height: int, width: int,
                    cull_backfaces: bool) -> torch.Tensor:
    """Scatter the keys of all covered (pixel, triangle) pairs into ``buf``; returns the (F, 10)
    triangle coefficients."""
    device, dtype = v.device, v.dtype
    tri = v.index_select(0, f.view(-1)).view(-1, 3, 3)
    coef = _coefficients(tri)
    ok = torch.isfinite(tri).all(dim=2).all(dim=1) & (tri[:, :, 2] > 0).all(dim=1) & (coef[:, 9] != 0)
    ys = tri[:, :, 1]
    r0 = ys.amin(1).ceil().clamp(0, height)
    r1 = ys.amax(1).floor().clamp(-1, height - 1)
    ok &= r1 >= r0
    if cull_backfaces:
        ok &= coef[:, 9] < 0
    ids = ok.nonzero().squeeze(1)
    if len(ids) == 0:
        return coef
    r0 = r0.index_select(0, ids).long()
    nrows = r1.index_select(0, ids).long() - r0 + 1
    # one entry per (triangle, pixel row): the triangle's span of pixel centres on that row
    t, row_first = _expand(nrows, int(nrows.sum()))
    py = r0.index_select(0, t) + (torch.arange(len(t), device=device) - row_first.index_select(0, t))
    tid = ids.index_select(0, t)
    x0, y0, z0, a1, b1, a2, b2, gx, gy, _ = coef.index_select(0, tid).unbind(1)
    dy = py.to(dtype) - y0
    # w1 = a1 u + b1 dy >= 0, w2 = a2 u + b2 dy >= 0, w0 = 1 - (a1 + a2) u - (b1 + b2) dy >= 0 with u = x - x0
    alphas = torch.stack([a1, a2, -(a1 + a2)])
    betas = torch.stack([b1 * dy, b2 * dy, 1.0 - (b1 + b2) * dy])
    bound = -betas / torch.where(alphas == 0, torch.ones_like(alphas), alphas)
    lo = bound.masked_fill(alphas <= 0, -float("inf")).amax(0)
    hi = bound.masked_fill(alphas >= 0, float("inf")).amin(0)
    hi.masked_fill_(((alphas == 0) & (betas < 0)).any(0), -float("inf"))
    xl = (lo + x0).ceil().clamp(0, width)
    xr = (hi + x0).floor().clamp(-1, width - 1)
    count = (xr - xl + 1).clamp_min(0).long()
    keep = (count > 0).nonzero().squeeze(1)
    count = count.index_select(0, keep)
    xl, x0, z0, gx, gy, dy = (a.index_select(0, keep) for a in (xl, x0, z0, gx, gy, dy))
    zl = z0 + gx * (xl - x0) + gy * dy
    base = py.index_select(0, keep) * width + xl.long()
    tid = tid.index_select(0, keep)
    # expand the spans into pixels, in chunks of about _CHUNK pixels
    ends = count.cumsum(0)
    start = 0
    while start < len(count):
        offset = int(ends[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(ends, offset + _CHUNK, right=True)), start + 1)
        r, first = _expand(count[start:stop], int(ends[stop - 1]) - offset)
        local = torch.arange(len(r), device=device) - first.index_select(0, r)
        z = zl[start:stop].index_select(0, r) + gx[start:stop].index_select(0, r) * local.to(dtype)
        z = z.float().clamp_min(1e-30)  # positive floats order as their bit patterns
        key = (z.view(torch.int32).long() << 32) | tid[start:stop].index_select(0, r)
        buf.scatter_reduce_(0, base[start:stop].index_select(0, r) + local, key, "amin")
        start = stop
    return coef


def interpolate(values: torch.Tensor, faces: TensorLike, fragments: Fragments, verts_screen: torch.Tensor,
                perspective_correct: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel interpolation of per-vertex values, differentiable w.r.t. ``values`` and ``verts_screen``.

    The barycentrics of every covered pixel are recomputed with autograd from the screen positions of
    its triangle's vertices (the triangle ids come from ``fragments``, without gradient).

    Args:
        values: (V, C) per-vertex values.
        faces: (F, 3) vertex indices (the ones rasterised).
        fragments: output of ``rasterize`` for these vertices.
        verts_screen: (V, 3) screen vertices (x, y, depth) as rasterised, possibly requiring grad.
        perspective_correct: weight by 1/depth (attributes linear in 3D instead of on the screen).

    Returns:
        image (H, W, C) in the dtype of ``values`` (0 on the background) and mask (H, W) bool.
    """
    tri_id = fragments.tri_id
    height, width = tri_id.shape
    mask = tri_id >= 0
    pix = fragments.covered_index().to(values.device)
    if len(pix) == 0:
        return values.new_zeros(height, width, values.shape[1]), mask
    f = _faces(faces, values.device)
    fv = f.index_select(0, tri_id.reshape(-1).index_select(0, pix))  # (P, 3)
    tri = verts_screen.index_select(0, fv.reshape(-1)).view(-1, 3, 3)
    x0, y0 = tri[:, 0, 0], tri[:, 0, 1]
    e1x, e1y = tri[:, 1, 0] - x0, tri[:, 1, 1] - y0
    e2x, e2y = tri[:, 2, 0] - x0, tri[:, 2, 1] - y0
    dx = (pix % width).to(tri.dtype) - x0
    dy = torch.div(pix, width, rounding_mode="floor").to(tri.dtype) - y0
    area2 = e1x * e2y - e2x * e1y
    w1 = (dx * e2y - dy * e2x) / area2
    w2 = (e1x * dy - e1y * dx) / area2
    w = torch.stack([1.0 - w1 - w2, w1, w2], dim=1)
    if perspective_correct:
        w = w / tri[:, :, 2]
        w = w / w.sum(dim=1, keepdim=True)
    vals = (w.to(values.dtype)[:, :, None] * values.index_select(0, fv.reshape(-1)).view(-1, 3, values.shape[1])).sum(1)
    out = values.new_zeros(height * width, values.shape[1]).index_copy(0, pix, vals).view(height, width, -1)
    return out, mask


def vertex_normals(verts: torch.Tensor, faces: TensorLike) -> torch.Tensor:
    """(V, 3) unit vertex normals (area-weighted sum of the adjacent face normals; counter-clockwise
    triangles seen from outside give outward normals), differentiable."""
    f = _faces(faces, verts.device)
    a, b, c = verts[f[:, 0]], verts[f[:, 1]], verts[f[:, 2]]
    fn = torch.cross(b - a, c - a, dim=1)
    vn = torch.zeros_like(verts)
    for k in range(3):
        vn = vn.index_add(0, f[:, k], fn)
    return vn / vn.norm(dim=1, keepdim=True).clamp_min(1e-12)
