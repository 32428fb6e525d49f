"""Point-to-triangle distances and Procrustes, against hand values and independent oracles."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import trimesh

from testing.geometry import MeshDistance, closest_points_on_triangles, point_to_mesh_distance, similarity_procrustes


def _oracle_closest(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Independent oracle: interior projection if it lies inside, else the best clamped edge projection."""
    n = np.cross(b - a, c - a)
    nn = n @ n
    if nn > 0:
        q = p - (p - a) @ n / nn * n
        # barycentric by areas
        u = np.cross(c - b, q - b) @ n / nn
        v = np.cross(a - c, q - c) @ n / nn
        w = 1 - u - v
        if min(u, v, w) >= 0:
            return q
    best, best_d = None, np.inf
    for x, y in ((a, b), (b, c), (c, a)):
        e = y - x
        t = 0.0 if e @ e == 0 else float(np.clip((p - x) @ e / (e @ e), 0, 1))
        q = x + t * e
        d = np.linalg.norm(p - q)
        if d < best_d:
            best, best_d = q, d
    return best


def test_closest_point_hand_values():
    a, b, c = np.array([0.0, 0, 0]), np.array([1.0, 0, 0]), np.array([0.0, 1, 0])
    cases = [
        ([0.25, 0.25, 3.0], [0.25, 0.25, 0.0]),  # interior: straight down
        ([2.0, 2.0, 0.0], [0.5, 0.5, 0.0]),  # edge BC midpoint
        ([-1.0, -1.0, 1.0], [0.0, 0.0, 0.0]),  # vertex A
        ([3.0, -1.0, 0.0], [1.0, 0.0, 0.0]),  # vertex B
        ([0.5, -2.0, 0.0], [0.5, 0.0, 0.0]),  # edge AB
        ([-2.0, 0.5, 1.0], [0.0, 0.5, 0.0]),  # edge AC
        ([-1.0, 4.0, 0.0], [0.0, 1.0, 0.0]),  # vertex C
    ]
    for p, expected in cases:
        q, bary = closest_points_on_triangles(np.array(p), a, b, c)
        np.testing.assert_allclose(q, expected, atol=1e-12)
        np.testing.assert_allclose(bary @ np.stack([a, b, c]), expected, atol=1e-12)
        assert bary.min() >= -1e-12 and abs(bary.sum() - 1) < 1e-12


def test_closest_point_matches_oracle_on_random_triangles():
    rng = np.random.default_rng(1)
    tris = rng.normal(size=(300, 3, 3))
    tris[:10, 2] = tris[:10, 0] + 2.0 * (tris[:10, 1] - tris[:10, 0])  # degenerate (collinear)
    pts = rng.normal(scale=2.0, size=(300, 3))
    q, _ = closest_points_on_triangles(pts, tris[:, 0], tris[:, 1], tris[:, 2])
    for i in range(len(pts)):
        ref = _oracle_closest(pts[i], *tris[i])
        assert np.linalg.norm(pts[i] - q[i]) == pytest.approx(np.linalg.norm(pts[i] - ref), abs=1e-9)


def test_plane_offset_equals_distance():
    # A 10x10 mm triangulated plane at z=0; points at height h above its interior are h away
    # (and farther from every vertex), points beyond the border are at the hand-computed distance.
    xs = np.linspace(0.0, 10.0, 6)
    grid = np.array(list(itertools.product(xs, xs)))
    v = np.column_stack([grid, np.zeros(len(grid))])
    faces = []
    for i, j in itertools.product(range(5), range(5)):
        k = i * 6 + j
        faces += [[k, k + 6, k + 1], [k + 1, k + 6, k + 7]]
    faces = np.array(faces)
    rng = np.random.default_rng(2)
    h = rng.uniform(0.1, 3.0, size=200)
    xy = rng.uniform(0.5, 9.5, size=(200, 2))
    pts = np.column_stack([xy, h])
    md = MeshDistance(v, faces)
    res = md.query(pts)
    np.testing.assert_allclose(res.distances, h, atol=1e-12)
    np.testing.assert_allclose(res.points[:, :2], xy, atol=1e-12)
    vertex_d = np.linalg.norm(pts[:, None] - v[None], axis=2).min(axis=1)
    assert (vertex_d > h + 1e-3).mean() > 0.9  # vertex distances would be wrong
    out = np.array([[13.0, 14.0, 0.0], [-2.0, 5.0, 1.0]])
    np.testing.assert_allclose(md.distances(out), [5.0, np.sqrt(5.0)], atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mesh_distance_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    sphere = trimesh.creation.icosphere(subdivisions=2)
    v = np.asarray(sphere.vertices) * np.array([60.0, 80.0, 70.0]) + rng.normal(scale=3.0, size=(len(sphere.vertices), 3))
    f = np.asarray(sphere.faces)
    # A few very large triangles (the spatial index must still be exact).
    v = np.vstack([v, [[-300.0, -300.0, 0.0], [300.0, -300.0, 0.0], [0.0, 400.0, 0.0]]])
    f = np.vstack([f, [[len(v) - 3, len(v) - 2, len(v) - 1]]])
    near = v[rng.integers(0, len(v) - 3, 400)] + rng.normal(scale=2.0, size=(400, 3))
    far = rng.normal(scale=150.0, size=(200, 3))
    pts = np.vstack([near, far])
    res = MeshDistance(v, f).query(pts)
    t = v[f]
    q, _ = closest_points_on_triangles(pts[:, None], t[None, :, 0], t[None, :, 1], t[None, :, 2])
    brute = np.linalg.norm(q - pts[:, None], axis=2)
    np.testing.assert_allclose(res.distances, brute.min(axis=1), atol=1e-9)
    # the reported face really holds the reported closest point at that distance
    np.testing.assert_allclose(brute[np.arange(len(pts)), res.faces], res.distances, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(res.points - pts, axis=1), res.distances, atol=1e-9)


def test_mesh_distance_agrees_with_trimesh():
    rng = np.random.default_rng(3)
    box = trimesh.creation.box(extents=(30.0, 20.0, 10.0))
    pts = rng.normal(scale=20.0, size=(300, 3))
    _, d_ref, _ = trimesh.proximity.closest_point(box, pts)
    np.testing.assert_allclose(point_to_mesh_distance(pts, box.vertices, box.faces), d_ref, atol=1e-9)


def test_procrustes_recovers_similarity_exactly():
    rng = np.random.default_rng(4)
    for _ in range(20):
        src = rng.normal(scale=40.0, size=(7, 3))
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        rot = q * np.sign(np.diag(r))
        if np.linalg.det(rot) < 0:
            rot[:, 0] *= -1
        s, t = rng.uniform(0.2, 5.0), rng.normal(scale=100.0, size=3)
        dst = s * src @ rot.T + t
        s2, r2, t2 = similarity_procrustes(src, dst)
        assert s2 == pytest.approx(s, rel=1e-10)
        np.testing.assert_allclose(r2, rot, atol=1e-10)
        np.testing.assert_allclose(t2, t, atol=1e-8)
        s3, r3, t3 = similarity_procrustes(src, dst, scaling=False)
        assert s3 == 1.0
        np.testing.assert_allclose(r3, rot, atol=1e-10)


def test_procrustes_reflection_only_when_allowed():
    rng = np.random.default_rng(5)
    src = rng.normal(size=(7, 3))
    mirror = np.diag([-1.0, 1.0, 1.0])
    dst = 2.0 * src @ mirror.T + 1.0
    s, rot, t = similarity_procrustes(src, dst, allow_reflection=True)
    np.testing.assert_allclose(rot, mirror, atol=1e-10)
    assert s == pytest.approx(2.0)
    _, rot2, _ = similarity_procrustes(src, dst, allow_reflection=False)
    assert np.linalg.det(rot2) == pytest.approx(1.0)


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="Procrustes"):
        similarity_procrustes(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="vertices"):
        MeshDistance(np.zeros((3, 3)), np.array([[0, 1, 5]]))


def test_rotvec_derivatives_hand_values_and_differences():
    from testing.geometry import rotvec_derivatives, rotvec_to_matrix

    # At r = 0: dR/dr_k = [e_k]_x.
    d0 = rotvec_derivatives(np.zeros(3))
    np.testing.assert_array_equal(d0[2], [[0, -1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(d0[0], [[0, 0, 0], [0, 0, -1], [0, 1, 0]])
    # About z: R = [[c, -s, 0], [s, c, 0], [0, 0, 1]], so dR/dtheta = [[-s, -c, 0], [c, -s, 0], [0, 0, 0]].
    for th in (1e-4, 0.7, 3.0):
        c, s = np.cos(th), np.sin(th)
        np.testing.assert_allclose(rotvec_derivatives(np.array([0.0, 0.0, th]))[2],
                                   [[-s, -c, 0], [c, -s, 0], [0, 0, 0]], atol=1e-14)
    # General vectors (small ones use the series): central differences of scipy's rotations.
    h = 1e-6
    for r in (np.array([3e-4, -2e-3, 1e-3]), np.array([0.004, 0.003, -0.008]), np.array([0.3, -1.2, 0.5])):
        fd = np.stack([(rotvec_to_matrix(r + h * e) - rotvec_to_matrix(r - h * e)) / (2 * h) for e in np.eye(3)])
        np.testing.assert_allclose(rotvec_derivatives(r), fd, atol=1e-9)
