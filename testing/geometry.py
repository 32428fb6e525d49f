"""Geometry for the NoW/Stirling scorers: exact point-to-triangle distances, similarity Procrustes.

Units are whatever the inputs use (millimetres for NoW). All arrays are numpy float64.

``closest_points_on_triangles`` is Ericson's region method ("Real-Time Collision Detection",
5.1.5) written for arrays. ``MeshDistance`` answers "closest point on the triangle surface" for
many query points: it indexes triangle centres in a KD-tree and grows the number of candidate
triangles per point until a bound proves no other triangle can be closer (see ``MeshDistance``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

__all__ = [
    "closest_points_on_triangles",
    "MeshDistance",
    "point_to_mesh_distance",
    "similarity_procrustes",
    "apply_similarity",
    "rotvec_to_matrix",
]


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", a, b)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (degenerate triangles, never selected then)."""
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def closest_points_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest point of each triangle (a, b, c) to the point p (Ericson's Voronoi-region method).

    Args:
        p, a, b, c: (..., 3) arrays broadcast against each other.

    Returns:
        closest: (..., 3) the closest point on the (filled) triangle.
        bary: (..., 3) its barycentric coordinates with respect to (a, b, c).
    """
    p, a, b, c = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (p, a, b, c)))
    shape = p.shape
    p, a, b, c = (x.reshape(-1, 3) for x in (p, a, b, c))
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    bp = p - b
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    cp = p - c
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2

    # Interior (lowest precedence); each following region overrides, so the final precedence is
    # Ericson's early-return order: A, B, AB, C, AC, BC, interior.
    denom = va + vb + vc
    v = _safe_div(vb, denom)
    w = _safe_div(vc, denom)
    u = 1.0 - v - w

    def assign(mask: np.ndarray, uu, vv, ww) -> None:
        u[mask] = np.broadcast_to(uu, u.shape)[mask]
        v[mask] = np.broadcast_to(vv, v.shape)[mask]
        w[mask] = np.broadcast_to(ww, w.shape)[mask]

    # Edge BC.
    e43, e56 = d4 - d3, d5 - d6
    m = (va <= 0) & (e43 >= 0) & (e56 >= 0)
    t = _safe_div(e43, e43 + e56)
    assign(m, 0.0, 1.0 - t, t)
    # Edge AC.
    m = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    t = _safe_div(d2, d2 - d6)
    assign(m, 1.0 - t, 0.0, t)
    # Vertex C.
    m = (d6 >= 0) & (d5 <= d6)
    assign(m, 0.0, 0.0, 1.0)
    # Edge AB.
    m = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    t = _safe_div(d1, d1 - d3)
    assign(m, 1.0 - t, t, 0.0)
    # Vertex B.
    m = (d3 >= 0) & (d4 <= d3)
    assign(m, 0.0, 1.0, 0.0)
    # Vertex A.
    m = (d1 <= 0) & (d2 <= 0)
    assign(m, 1.0, 0.0, 0.0)

    bary = np.stack([u, v, w], axis=-1)
    closest = a * u[..., None] + b * v[..., None] + c * w[..., None]
    return closest.reshape(shape), bary.reshape(shape)


def _subdivide(vertices: np.ndarray, faces: np.ndarray, max_radius: float, max_levels: int = 8):
    """Split triangles whose corner-to-centre radius exceeds ``max_radius`` into 4 (midpoints).

    The union of the pieces is the original triangle, so distances to the surface are unchanged.
    Returns (tri (T,3,3) corner coordinates, parent (T,) original face index).
    """
    tri = vertices[faces]  # (F, 3, 3)
    parent = np.arange(len(faces))
    done_tri, done_parent = [], []
    for _ in range(max_levels):
        radius = np.linalg.norm(tri - tri.mean(axis=1, keepdims=True), axis=2).max(axis=1)
        big = radius > max_radius
        done_tri.append(tri[~big])
        done_parent.append(parent[~big])
        if not big.any():
            tri = tri[:0]
            parent = parent[:0]
            break
        t = tri[big]
        a, b, c = t[:, 0], t[:, 1], t[:, 2]
        ab, bc, ca = (a + b) / 2, (b + c) / 2, (c + a) / 2
        tri = np.concatenate([np.stack(x, axis=1) for x in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
        parent = np.tile(parent[big], 4)
    done_tri.append(tri)
    done_parent.append(parent)
    return np.concatenate(done_tri), np.concatenate(done_parent)


@dataclass
class ClosestPoints:
    """Result of a surface query: ``distances`` (N,), ``points`` (N,3), ``faces`` (N,) original face ids."""

    distances: np.ndarray
    points: np.ndarray
    faces: np.ndarray


class MeshDistance:
    """Exact unsigned distance from points to a triangle mesh surface (not to its vertices).

    Triangles (split until their circumscribing radius about the centre is at most the median
    radius, which leaves the surface unchanged) are indexed by their centres in a KD-tree. For a
    query point, the k nearest centres give a candidate distance ``d``; every other triangle has
    its centre at least ``r_k`` (the k-th centre distance) away, so all its points are at least
    ``r_k - R`` away (R = the largest radius). When ``r_k - R > d`` the answer is proven;
    otherwise k grows (x4) for the unproven points, up to all triangles.

    Args:
        vertices: (V, 3) float.
        faces: (F, 3) int triangle indices.
        k0: initial number of candidate triangles per point.
        chunk_elems: bound on points x candidates evaluated at once (memory).
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, k0: int = 8, chunk_elems: int = 2_000_000):
        vertices = np.asarray(vertices, dtype=np.float64)
        faces = np.asarray(faces, dtype=np.int64)
        if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
            raise ValueError(f"MeshDistance needs (V,3) vertices and (F>0,3) faces, got {vertices.shape} and {faces.shape}")
        if faces.min() < 0 or faces.max() >= len(vertices):
            raise ValueError(f"mesh faces index vertex {faces.max()} but the mesh has {len(vertices)} vertices")
        self.vertices = vertices
        self.faces = faces
        tri = vertices[faces]
        radius = np.linalg.norm(tri - tri.mean(axis=1, keepdims=True), axis=2).max(axis=1)
        target = float(np.median(radius))
        if target <= 0:
            target = float(radius.max()) or 1.0
        self._tri, self._parent = _subdivide(vertices, faces, target)
        centres = self._tri.mean(axis=1)
        self._radius = float(np.linalg.norm(self._tri - centres[:, None], axis=2).max())
        self._tree = cKDTree(centres)
        self._k0 = int(k0)
        self._chunk = int(chunk_elems)

    @property
    def n_triangles(self) -> int:
        """Number of indexed (possibly subdivided) triangles."""
        return len(self._tri)

    def query(self, points: np.ndarray) -> ClosestPoints:
        """Closest surface point of every query point.

        Args:
            points: (N, 3).

        Returns:
            ClosestPoints with distances (N,), points (N, 3) on the surface and faces (N,)
            (index into the original ``faces``).
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        n = len(points)
        best_d = np.full(n, np.inf)
        best_q = np.zeros((n, 3))
        best_t = np.zeros(n, dtype=np.int64)
        n_tri = len(self._tri)
        pending = np.arange(n)
        k = min(self._k0, n_tri)
        while len(pending):
            still = []
            step = max(1, self._chunk // k)
            for s in range(0, len(pending), step):
                idx = pending[s:s + step]
                p = points[idx]
                dk, ik = self._tree.query(p, k=k)
                if k == 1:
                    dk, ik = dk[:, None], ik[:, None]
                t = self._tri[ik]  # (n, k, 3, 3)
                q, _ = closest_points_on_triangles(p[:, None, :], t[..., 0, :], t[..., 1, :], t[..., 2, :])
                d = np.linalg.norm(q - p[:, None, :], axis=2)
                j = d.argmin(axis=1)
                rows = np.arange(len(idx))
                best_d[idx] = d[rows, j]
                best_q[idx] = q[rows, j]
                best_t[idx] = ik[rows, j]
                proven = (k >= n_tri) | (dk[:, -1] - self._radius > best_d[idx])
                still.append(idx[~proven])
            pending = np.concatenate(still) if still else pending[:0]
            k = min(k * 4, n_tri)
        return ClosestPoints(best_d, best_q, self._parent[best_t])

    def distances(self, points: np.ndarray) -> np.ndarray:
        """(N,) unsigned distances from ``points`` (N, 3) to the surface."""
        return self.query(points).distances


def point_to_mesh_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(N,) exact distances from points (N,3) to the surface of the mesh (vertices (V,3), faces (F,3))."""
    return MeshDistance(vertices, faces).distances(points)


def similarity_procrustes(src: np.ndarray, dst: np.ndarray, scaling: bool = True,
                          allow_reflection: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity mapping ``src`` onto ``dst`` (Umeyama / Procrustes).

    Minimises sum |s * R @ src_i + t - dst_i|^2 over rotation R (or, when ``allow_reflection``,
    any orthogonal R: a reflection is taken when it fits better, as NoW's ``reflection='best'``),
    scale s (fixed to 1 when not ``scaling``) and translation t.

    Args:
        src, dst: (N, 3) corresponding points, N >= 3.

    Returns:
        (s, R (3,3), t (3,)) with dst ~ s * src @ R.T + t.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if src.shape != dst.shape or len(src) < 3:
        raise ValueError(f"Procrustes needs two (N>=3, 3) point sets of equal size, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if not allow_reflection and np.linalg.det(u @ vt) < 0:
        d[2] = -1.0
    rot = (u * d) @ vt
    var_s = float((xs ** 2).sum() / len(src))
    scale = float((sig * d).sum() / var_s) if scaling and var_s > 0 else 1.0
    t = mu_d - scale * rot @ mu_s
    return scale, rot, t


def apply_similarity(points: np.ndarray, scale: float, rot: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``scale * points @ rot.T + t`` for points (N, 3)."""
    return scale * np.asarray(points, dtype=np.float64) @ np.asarray(rot).T + np.asarray(t)


def rotvec_to_matrix(r: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) (radians) -> rotation matrix (3, 3)."""
    return Rotation.from_rotvec(np.asarray(r, dtype=np.float64)).as_matrix()
