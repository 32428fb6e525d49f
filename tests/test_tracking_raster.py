"""micalib.render.raster: the fast rasteriser against a slow per-pixel reference, depth order,
differentiable interpolation (gradcheck) and vertex normals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from micalib.render import raster as raster
from micalib.render.raster import interpolate, rasterize, vertex_normals
from tests import numpy_renderer as renderer
from tests.fakes import uv_sphere


def _random_mesh(seed: int, n_tri: int = 40, size: int = 64):
    """Triangles of mixed sizes partly outside a ``size`` image, random depths in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-4, size + 4, size=(n_tri, 1, 2))
    scale = rng.choice([1.5, 4.0, 12.0, 40.0], size=(n_tri, 1, 1))
    xy = centres + rng.normal(size=(n_tri, 3, 2)) * scale
    z = rng.uniform(0.5, 2.0, size=(n_tri, 3, 1))
    verts = np.concatenate([xy, z], axis=2).reshape(-1, 3)
    faces = np.arange(3 * n_tri).reshape(n_tri, 3)
    return verts, faces


def _reference(verts: np.ndarray, faces: np.ndarray, height: int, width: int):
    """Per-pixel loop: barycentrics by solving the 2x2 system of each triangle, nearest depth wins.
    Also flags pixels where the answer is ambiguous (centre within 1e-7 of an edge of a covering or
    nearly covering triangle, or two depths within 1e-6)."""
    tri = verts[faces]  # (F, 3, 3)
    m = np.stack([tri[:, 1, :2] - tri[:, 0, :2], tri[:, 2, :2] - tri[:, 0, :2]], axis=2)  # (F, 2, 2)
    good = np.abs(np.linalg.det(m)) > 1e-12
    minv = np.zeros_like(m)
    minv[good] = np.linalg.inv(m[good])
    tri_id = np.full((height, width), -1)
    bary = np.zeros((height, width, 3))
    ambiguous = np.zeros((height, width), bool)
    for i in range(height):
        for j in range(width):
            w12 = np.einsum("fab,fb->fa", minv, np.array([j, i]) - tri[:, 0, :2])
            w = np.concatenate([1 - w12.sum(1, keepdims=True), w12], axis=1)
            wmin = w.min(1)
            inside = good & (wmin >= 0)
            ambiguous[i, j] = bool((good & (np.abs(wmin) < 1e-7)).any())
            if not inside.any():
                continue
            depth = np.where(inside, (w * tri[:, :, 2]).sum(1), np.inf)
            order = np.argsort(depth, kind="stable")
            if inside.sum() > 1 and depth[order[1]] - depth[order[0]] < 1e-6:
                ambiguous[i, j] = True
            tri_id[i, j] = order[0]
            bary[i, j] = w[order[0]]
    return tri_id, bary, ambiguous


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [None, 37])
def test_rasterize_matches_reference(seed, chunk, monkeypatch):
    if chunk is not None:  # force many chunks of the span expansion
        monkeypatch.setattr(raster, "_CHUNK", chunk)
    verts, faces = _random_mesh(seed)
    ref_id, ref_bary, ambiguous = _reference(verts, faces, 48, 64)
    fr = rasterize(torch.from_numpy(verts), torch.from_numpy(faces), 48, 64)
    assert fr.tri_id.shape == (48, 64) and fr.bary.shape == (48, 64, 3) and fr.depth.shape == (48, 64)
    assert fr.tri_id.dtype == torch.int64 and fr.bary.dtype == torch.float64
    got = fr.tri_id.numpy()
    clear = ~ambiguous
    assert (ref_id >= 0).sum() > 500 and (ref_id < 0).sum() > 100  # the scene covers and misses pixels
    assert ambiguous.sum() < 20
    np.testing.assert_array_equal(got[clear], ref_id[clear])
    same = clear & (ref_id >= 0)
    np.testing.assert_allclose(fr.bary.numpy()[same], ref_bary[same], atol=1e-5)
    ref_depth = (ref_bary * verts[faces][np.maximum(ref_id, 0)][..., 2]).sum(-1)
    np.testing.assert_allclose(fr.depth.numpy()[same], ref_depth[same], atol=1e-9)
    assert (fr.bary.numpy()[got < 0] == 0).all() and (fr.depth.numpy()[got < 0] == 0).all()
    np.testing.assert_array_equal(fr.mask.numpy(), got >= 0)


def test_rasterize_float32_and_numpy_input():
    verts, faces = _random_mesh(5)
    ref_id, ref_bary, ambiguous = _reference(verts, faces, 40, 40)
    fr = rasterize(verts.astype(np.float32), faces, 40, 40)
    assert fr.bary.dtype == torch.float32
    # float32 rounding may flip pixels within ~1e-5 of an edge; all else agrees
    assert (fr.tri_id.numpy() != ref_id)[~ambiguous].mean() < 0.003
    same = (fr.tri_id.numpy() == ref_id) & (ref_id >= 0)
    np.testing.assert_allclose(fr.bary.numpy()[same], ref_bary[same], atol=2e-4)


def test_depth_order_and_interpenetration():
    # A (depth 1) and B (depth 2) overlap; the nearer one wins whatever the order in the face list
    a = [[2.0, 2.0, 1.0], [28.0, 3.0, 1.0], [4.0, 28.0, 1.0]]
    b = [[6.0, 6.0, 2.0], [30.0, 8.0, 2.0], [8.0, 30.0, 2.0]]
    for order in ([0, 1], [1, 0]):
        tris = np.array([a, b])[order]
        fr = rasterize(tris.reshape(-1, 3), np.arange(6).reshape(2, 3), 32, 32)
        id_a = order.index(0)
        assert fr.tri_id[10, 10] == id_a  # inside both: A is nearer
        assert fr.tri_id[25, 8] == 1 - id_a  # only B
        assert fr.tri_id[0, 0] == -1
        assert fr.depth[10, 10] == pytest.approx(1.0)
    # two triangles crossing each other along x = 16: left of it the first is nearer, right the second
    c = [[0.0, 0.0, 1.0], [31.0, 0.0, 3.0], [0.0, 31.0, 1.0]]  # depth 1 + x / 15.5
    d = [[0.0, 0.0, 3.0], [31.0, 0.0, 1.0], [31.0, 31.0, 1.0]]  # depth 3 - x / 15.5
    fr = rasterize(np.array([c, d]).reshape(-1, 3), np.arange(6).reshape(2, 3), 32, 32)
    row = fr.tri_id[2].numpy()
    assert (row[3:15] == 0).all() and (row[17:29] == 1).all()


def test_rasterize_skips_behind_camera_and_degenerate():
    tris = np.array([
        [[2.0, 2.0, -1.0], [20.0, 2.0, 1.0], [2.0, 20.0, 1.0]],  # a vertex behind the camera
        [[2.0, 2.0, 1.0], [20.0, 20.0, 1.0], [10.0, 10.0, 1.0]],  # zero area
        [[2.0, 2.0, 1.0], [20.0, 2.0, np.nan], [2.0, 20.0, 1.0]],  # not finite
    ])
    fr = rasterize(tris.reshape(-1, 3), np.arange(9).reshape(3, 3), 24, 24)
    assert (fr.tri_id == -1).all()
    with pytest.raises(ValueError, match="out of range"):
        rasterize(tris.reshape(-1, 3), [[0, 1, 99]], 24, 24)
    empty = rasterize(np.zeros((0, 3)), np.zeros((0, 3), np.int64), 5, 7)
    assert empty.tri_id.shape == (5, 7) and (empty.tri_id == -1).all()


def _tiny_scene():
    verts = torch.tensor([[1.3, 1.2, 1.0], [10.6, 2.1, 1.5], [2.2, 9.7, 2.0], [11.4, 10.8, 1.2]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
    return verts, faces


def test_interpolate_forward_matches_bary():
    verts, faces = _tiny_scene()
    fr = rasterize(verts, faces, 12, 12)
    values = torch.randn(4, 5, dtype=torch.float64)
    img, mask = interpolate(values, faces, fr, verts)
    assert img.shape == (12, 12, 5) and mask.dtype == torch.bool
    expect = (fr.bary[..., None] * values[faces[fr.tri_id.clamp_min(0)]]).sum(2)
    np.testing.assert_allclose(img[mask].numpy(), expect[mask].numpy(), atol=1e-12)
    assert (img[~mask] == 0).all() and mask.sum() > 40 and (~mask).sum() > 10


def test_interpolate_gradcheck():
    verts, faces = _tiny_scene()
    fr = rasterize(verts, faces, 12, 12)  # triangle ids fixed; no pixel centre lies near an edge
    values = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    v = verts.clone().requires_grad_(True)
    for persp in (False, True):
        assert torch.autograd.gradcheck(lambda val, vv, p=persp: interpolate(val, faces, fr, vv, p)[0], (values, v))
    # the gradient w.r.t. positions is not trivially zero
    img, _ = interpolate(values, faces, fr, v)
    (g,) = torch.autograd.grad(img.sum(), v)
    assert g[:, :2].abs().sum() > 0


def test_interpolate_perspective_correct_recovers_3d_points():
    # a 3D triangle seen by a pinhole camera: perspective-correct interpolation of its 3D vertices
    # gives the point whose projection is the pixel centre
    f, cx, cy = 40.0, 15.5, 15.5
    pts = torch.tensor([[-0.3, -0.3, 1.0], [0.4, -0.2, 2.5], [-0.1, 0.5, 1.6]], dtype=torch.float64)
    scr = torch.stack([f * pts[:, 0] / pts[:, 2] + cx, f * pts[:, 1] / pts[:, 2] + cy, pts[:, 2]], 1)
    faces = torch.tensor([[0, 1, 2]])
    fr = rasterize(scr, faces, 32, 32)
    img, mask = interpolate(pts, faces, fr, scr, perspective_correct=True)
    iy, ix = mask.nonzero(as_tuple=True)
    p = img[mask]
    np.testing.assert_allclose((f * p[:, 0] / p[:, 2] + cx).numpy(), ix.double().numpy(), atol=1e-9)
    np.testing.assert_allclose((f * p[:, 1] / p[:, 2] + cy).numpy(), iy.double().numpy(), atol=1e-9)
    assert mask.sum() > 50


def test_vertex_normals_of_a_sphere_point_outwards():
    verts, faces = uv_sphere()
    n = vertex_normals(verts * 0.1 + torch.tensor([0.2, 0.0, 0.5], dtype=torch.float64), faces)
    np.testing.assert_allclose(n.norm(dim=1).numpy(), 1.0, atol=1e-12)
    assert (n * verts).sum(1).min() > 0.98
    v = verts.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: vertex_normals(x, faces), (v,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_rasterize_and_interpolate_on_cuda_match_cpu():
    verts, faces = _random_mesh(3, n_tri=200, size=128)
    cpu = rasterize(torch.from_numpy(verts), torch.from_numpy(faces), 128, 128)
    gpu = rasterize(torch.from_numpy(verts).cuda(), torch.from_numpy(faces).cuda(), 128, 128)
    assert gpu.tri_id.is_cuda
    assert (gpu.tri_id.cpu() != cpu.tri_id).float().mean() < 1e-3
    values = torch.randn(len(verts), 3, dtype=torch.float64)
    img, _ = interpolate(values.cuda(), torch.from_numpy(faces).cuda(), gpu, torch.from_numpy(verts).cuda())
    ref, _ = interpolate(values, torch.from_numpy(faces), cpu, torch.from_numpy(verts))
    same = gpu.tri_id.cpu() == cpu.tri_id
    np.testing.assert_allclose(img.cpu()[same].numpy(), ref[same].numpy(), atol=1e-9)


def test_cull_backfaces_keeps_the_camera_facing_half_of_a_sphere():
    verts, faces = uv_sphere(16, 24)  # counter-clockwise seen from outside
    # OpenCV camera 3 units in front: x right, y down, z forward (a proper rotation of the model)
    cam = torch.stack([verts[:, 0], -verts[:, 1], 3.0 - verts[:, 2]], 1)
    scr = torch.stack([20 * cam[:, 0] / cam[:, 2] + 16, 20 * cam[:, 1] / cam[:, 2] + 16, cam[:, 2]], 1)
    full = rasterize(scr, faces, 32, 32)
    culled = rasterize(scr, faces, 32, 32, cull_backfaces=True)
    torch.testing.assert_close(culled.tri_id, full.tri_id)  # a closed surface: same picture
    # the kept triangles are exactly those whose outward normal points towards the camera
    tri = cam[faces]
    normal = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=1)
    facing = (normal * tri.mean(1)).sum(1) < 0
    drawn = torch.unique(culled.tri_id[culled.tri_id >= 0])
    assert facing[drawn].all()
    inner = rasterize(scr, faces[~facing], 32, 32, cull_backfaces=True)
    assert (inner.tri_id == -1).all()


@pytest.mark.shared_data
def test_flame_head_matches_the_numpy_renderer(flame_public_dir):
    """The public FLAME template seen by a pinhole camera, against the project's independent numpy
    rasteriser (its pixel centres sit at +0.5 and a larger depth is nearer)."""
    from tests.synthetic_flame import read_obj_topology

    v, f = read_obj_topology(flame_public_dir / "head_template.obj")
    v = v - (v.max(0) + v.min(0)) / 2
    a = np.radians(30)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, -1, 0], [np.sin(a), 0, -np.cos(a)]])  # y down, yaw 30
    cam = v @ rot.T + [0, 0, 0.6]
    scr = np.stack([384 * cam[:, 0] / cam[:, 2] + 127.5, 384 * cam[:, 1] / cam[:, 2] + 127.5, cam[:, 2]], 1)
    ours = rasterize(scr, f, 256, 256)
    ref = renderer.rasterize(scr * [1, 1, -1] + [0.5, 0.5, 0], f, 256, 256)
    assert (ref.face_idx >= 0).sum() > 10000
    differ = ours.tri_id.numpy() != ref.face_idx
    assert differ.mean() < 1e-3
    same = ~differ & (ref.face_idx >= 0)
    np.testing.assert_allclose(ours.bary.numpy()[same], ref.bary[same], atol=1e-6)
    # only camera-facing triangles are ever visible on FLAME's closed surface ...
    culled = rasterize(scr, f, 256, 256, cull_backfaces=True)
    assert (culled.tri_id != ours.tri_id).float().mean() < 2e-3  # ... except through the mouth and eyes
