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
    "rotvec_derivatives",
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
        nonlocal u, v, w
        u, v, w = np.where(mask, uu, u), np.where(mask, vv, v), np.where(mask, ww, w)

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


class _Bucket:
    """Triangles of similar size: corners (T,3,3), original face ids (T,), KD-tree of centres, max radius."""

    def __init__(self, tri: np.ndarray, parent: np.ndarray) -> None:
        self.tri, self.parent = tri, parent
        centres = tri.mean(axis=1)
        self.radius = float(np.linalg.norm(tri - centres[:, None], axis=2).max())
        self.tree = cKDTree(centres)


class MeshDistance:
    """Exact unsigned distance from points to a triangle mesh surface (not to its vertices).

    Triangles larger than the 75th percentile of the circumscribing radius about their centre are
    split (4-way, midpoints; the surface is unchanged), then grouped by radius into buckets
    (factor 1.5 apart), each with a KD-tree of triangle centres. For a query point, every bucket's
    k nearest centres give candidate distances; their minimum ``d`` bounds the answer. Any triangle
    of a bucket that is not among its k nearest has its centre at least ``r_k`` (the k-th centre
    distance) away, so all its points are at least ``r_k - R_b`` away (R_b = the bucket's largest
    radius). When ``r_k - R_b > d`` holds for every bucket the answer is proven; otherwise k grows
    (x2) in that bucket for the unproven points, up to all its triangles.

    Args:
        vertices: (V, 3) float.
        faces: (F, 3) int triangle indices.
        k0: initial number of candidate triangles per point and bucket.
        chunk_elems: bound on points x candidates evaluated at once (memory).
    """

    # Tuned on a FLAME mesh against a 12k-point scan crop (bench/eval.py).
    SPLIT_PERCENTILE = 75.0
    N_BUCKETS = 8
    BUCKET_RATIO = 1.5
    GROWTH = 2

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, k0: int = 4, chunk_elems: int = 2_000_000):
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
        target = float(np.percentile(radius, self.SPLIT_PERCENTILE))
        if target <= 0:
            target = float(radius.max()) or 1.0
        tri, parent = _subdivide(vertices, faces, target)
        radius = np.linalg.norm(tri - tri.mean(axis=1, keepdims=True), axis=2).max(axis=1)
        # Bucket b holds radii in (R_max / ratio^(b+1), R_max / ratio^b]; the smallest classes are merged.
        r_max = float(radius.max()) or 1.0
        nb, ratio = self.N_BUCKETS, self.BUCKET_RATIO
        level = np.floor(np.log(r_max / np.maximum(radius, r_max * ratio ** -nb)) / np.log(ratio)).astype(int)
        level = np.minimum(level, nb - 1)
        self._buckets = [_Bucket(tri[level == b], parent[level == b]) for b in range(nb) if (level == b).any()]
        self._k0 = int(k0)
        self._chunk = int(chunk_elems)

    @property
    def n_triangles(self) -> int:
        """Number of indexed (possibly subdivided) triangles."""
        return sum(len(b.tri) for b in self._buckets)

    def _search(self, bucket: _Bucket, points: np.ndarray, idx: np.ndarray, k: int, best_d: np.ndarray,
                best_q: np.ndarray, best_f: np.ndarray) -> np.ndarray:
        """Test the k nearest triangles of ``bucket`` for points[idx]; update the bests in place.

        Returns the k-th centre distance (len(idx),) (inf when k covers the whole bucket)."""
        n_tri = len(bucket.tri)
        kth = np.empty(len(idx))
        step = max(1, self._chunk // k)
        for s in range(0, len(idx), step):
            sub = idx[s:s + step]
            p = points[sub]
            dk, ik = bucket.tree.query(p, k=k)
            if k == 1:
                dk, ik = dk[:, None], ik[:, None]
            t = bucket.tri[ik]  # (n, k, 3, 3)
            q, _ = closest_points_on_triangles(p[:, None, :], t[..., 0, :], t[..., 1, :], t[..., 2, :])
            d = np.linalg.norm(q - p[:, None, :], axis=2)
            j = d.argmin(axis=1)
            rows = np.arange(len(sub))
            better = d[rows, j] < best_d[sub]
            upd = sub[better]
            best_d[upd] = d[rows, j][better]
            best_q[upd] = q[rows, j][better]
            best_f[upd] = bucket.parent[ik[rows, j][better]]
            kth[s:s + step] = np.inf if k >= n_tri else dk[:, -1]
        return kth

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
        best_f = np.zeros(n, dtype=np.int64)
        everyone = np.arange(n)
        kth = [self._search(b, points, everyone, min(self._k0, len(b.tri)), best_d, best_q, best_f)
               for b in self._buckets]
        # Proofs only get easier as best_d decreases, so each bucket can be finished in turn.
        for b, r_k in zip(self._buckets, kth, strict=True):
            k = min(self._k0, len(b.tri))
            pending = everyone[r_k - b.radius <= best_d]
            while len(pending) and k < len(b.tri):
                k = min(k * self.GROWTH, len(b.tri))
                r = self._search(b, points, pending, k, best_d, best_q, best_f)
                pending = pending[r - b.radius <= best_d[pending]]
        return ClosestPoints(best_d, best_q, best_f)

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


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def rotvec_derivatives(r: np.ndarray) -> np.ndarray:
    """(3, 3, 3): the exact partial derivatives dR/dr_k (k = 0, 1, 2) of the rotation matrix of the
    axis-angle vector ``r`` (radians).

    From Rodrigues' formula R = I + a K + b K^2 with K = [r]_x, theta = |r|, a = sin(theta)/theta,
    b = (1 - cos(theta))/theta^2:
    dR/dr_k = r_k a' K + a E_k + r_k b' K^2 + b (E_k K + K E_k), E_k = [e_k]_x,
    a' = (theta cos(theta) - sin(theta))/theta^3, b' = (theta sin(theta) - 2 (1 - cos(theta)))/theta^4;
    below theta = 1e-2 the coefficients come from their Taylor series (no cancellation).
    """
    r = np.asarray(r, dtype=np.float64).reshape(3)
    th2 = float(r @ r)
    th = np.sqrt(th2)
    if th < 1e-2:
        a = 1.0 - th2 / 6.0 + th2 * th2 / 120.0
        b = 0.5 - th2 / 24.0 + th2 * th2 / 720.0
        da = -1.0 / 3.0 + th2 / 30.0 - th2 * th2 / 840.0
        db = -1.0 / 12.0 + th2 / 180.0 - th2 * th2 / 6720.0
    else:
        sn, cs = np.sin(th), np.cos(th)
        a, b = sn / th, (1.0 - cs) / th2
        da = (th * cs - sn) / (th2 * th)
        db = (th * sn - 2.0 * (1.0 - cs)) / (th2 * th2)
    k = _skew(r)
    k2 = k @ k
    out = np.empty((3, 3, 3))
    for i in range(3):
        e = _skew(np.eye(3)[i])
        out[i] = r[i] * da * k + a * e + r[i] * db * k2 + b * (e @ k + k @ e)
    return out
