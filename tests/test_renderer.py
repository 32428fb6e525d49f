"""micalib/render/preview.py on micalib/render/raster.py: coverage, z-buffer, shading, views, previews
and make_grid. The exact pixel counts and shading values are worked out by hand; the comparison with
the independent numpy renderer is tests/test_render_before_after.py."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from micalib.render.preview import OrthoCamera, make_grid, render_mesh, render_preview, view_rotation
from micalib.render.raster import rasterize

WHITE = (1.0, 1.0, 1.0)
BG = (0, 0, 0)


def test_rasterize_square_exact_pixels() -> None:
    # the product's convention (micalib.render.raster): pixel centres at integers, depth > 0
    screen = np.array([[10, 20, 1], [110, 20, 1], [110, 70, 1], [10, 70, 1]], float) - [0.5, 0.5, 0]
    faces = [[0, 1, 2], [0, 2, 3]]
    frags = rasterize(screen, faces, 100, 128)
    covered = frags.mask.numpy()
    assert covered.sum() == 100 * 50
    rows, cols = np.nonzero(covered)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (20, 69, 10, 109)
    # barycentrics reproduce the pixel centre
    r, c = 33, 47
    tri = screen[faces[int(frags.tri_id[r, c])]]
    np.testing.assert_allclose(frags.bary[r, c].numpy() @ tri[:, :2], [c, r])


def test_rasterize_triangle_pixel_count() -> None:
    # pixel centres (c, r) with c + r <= 63 lie inside or on the edge of this triangle: 64*65/2 pixels
    frags = rasterize(np.array([[-0.5, -0.5, 1], [63.5, -0.5, 1], [-0.5, 63.5, 1]], float), [[0, 1, 2]], 64, 64)
    assert int(frags.mask.sum()) == 64 * 65 // 2
    assert (int(frags.tri_id[0, 63]), int(frags.tri_id[63, 0]), int(frags.tri_id[1, 63])) == (0, 0, -1)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_zbuffer_keeps_nearer(order: tuple[int, int]) -> None:
    near = [[0, 0, 1], [40, 0, 1], [0, 40, 1]]  # smaller depth = nearer
    far = [[0, 0, 5], [40, 0, 5], [0, 40, 5]]
    tris = [near, far]
    screen = np.array([tris[order[0]], tris[order[1]]], float).reshape(-1, 3)
    frags = rasterize(screen, [[0, 1, 2], [3, 4, 5]], 40, 40)
    near_idx = order.index(0)
    covered = frags.mask
    assert bool((frags.tri_id[covered] == near_idx).all())
    np.testing.assert_allclose(frags.depth[covered].numpy(), 1.0)


def test_zbuffer_interpenetrating_planes() -> None:
    # A: depth 2 everywhere; B: depth goes from 3 (x=-0.5) to 1 (x=63.5): B is nearer right of x = 31.5
    a = [[0, 0, 2], [64, 0, 2], [64, 64, 2], [0, 64, 2]]
    b = [[0, 0, 3], [64, 0, 1], [64, 64, 1], [0, 64, 3]]
    screen = np.array(a + b, float) - [0.5, 0.5, 0]
    faces = [[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]]
    frags = rasterize(screen, faces, 64, 64)
    winner_is_b = (frags.tri_id >= 2).numpy()
    assert not winner_is_b[:, :32].any()
    assert winner_is_b[:, 32:].all()


def test_render_square_front_area_and_edge_on_side() -> None:
    v = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    img = render_mesh(v, f, size=256, view="front", color=WHITE, background=BG)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    # extent 2 fitted to 0.9*256 px: x in [12.3, 242.7] (pixel centres at integers) -> columns 13..242 -> 230
    covered = img.any(axis=2)
    assert covered.sum() == 230 * 230
    np.testing.assert_array_equal(img[128, 128], [255, 255, 255])  # facing the headlight
    # seen from the side the square is edge-on: nothing covered
    assert not render_mesh(v, f, size=256, view="side", background=BG).any()
    # the same square in the y-z plane faces the side camera
    side = render_mesh(v[:, [2, 1, 0]], f, size=256, view="side", color=WHITE, background=BG)
    assert side.any(axis=2).sum() == 230 * 230


def test_view_rotation_side_puts_face_right() -> None:
    np.testing.assert_allclose(view_rotation("side") @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(view_rotation("front"), np.eye(3))
    with pytest.raises(ValueError):
        view_rotation("top")
    # a "nose" spike pointing +z shows at the image right in the side view
    sphere = trimesh.creation.icosphere(subdivisions=2)
    v = np.asarray(sphere.vertices).copy()
    v[np.argmax(v[:, 2])] *= 1.8
    img = render_mesh(v, sphere.faces, size=128, view="side", background=BG)
    cols = np.nonzero(img.any(axis=(0, 2)))[0]
    centre_col = (cols.min() + cols.max()) / 2
    assert np.argmax(v @ view_rotation("side").T[:, 0]) == np.argmax(v[:, 2])
    assert cols.max() - centre_col > centre_col - cols.min() - 1e-9


@pytest.mark.parametrize("smooth", [False, True])
def test_shading_brighter_toward_light(smooth: bool) -> None:
    # three separate triangles: facing the camera, tilted 60 degrees about y, facing away
    def tri(cx: float, angle: float, flip: bool = False) -> np.ndarray:
        base = np.array([[-10, -10, 0], [10, -10, 0], [0, 10, 0]], float)
        if flip:
            base = base[[0, 2, 1]]
        c, s = math.cos(angle), math.sin(angle)
        rot = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
        return base @ rot.T + [cx, 0, 0]

    v = np.concatenate([tri(-30, 0.0), tri(0, math.radians(60)), tri(30, 0.0, flip=True)])
    f = np.arange(9).reshape(3, 3)
    cam = OrthoCamera(center=np.zeros(3), scale=2.0)  # 2 px per unit, image 192 px
    img = render_mesh(v, f, size=192, color=WHITE, background=BG, camera=cam, smooth=smooth)
    # ambient 0.25: facing -> 1.0 -> 255; cos 60 = 0.5 -> 0.625 -> 159; facing away -> 0.25 -> 64
    assert img[96, 96 - 60, 0] == 255
    assert img[96, 96, 0] == 159
    assert img[96, 96 + 60, 0] == 64


def test_sphere_area() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=5)  # 10242 vertices, 20480 triangles
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    img = render_mesh(v, f, size=256, background=BG)
    area = img.any(axis=2).sum()
    r = 0.9 * 256 / 2
    assert abs(area - math.pi * r * r) / (math.pi * r * r) < 0.01
    assert img[128, 128].max() > img[128, 20].max()  # the centre faces the light, the rim does not


@pytest.mark.shared_data
def test_flame_template_front_and_side(flame_public_dir: Path) -> None:
    mesh = trimesh.load(flame_public_dir / "head_template.obj", process=False)
    v, f = np.asarray(mesh.vertices) * 1000.0, np.asarray(mesh.faces)
    assert f.shape == (9976, 3)
    front = render_mesh(v, f, size=256)
    mask = (front != 255).any(axis=2)
    # FLAME's template is left-right symmetric: the silhouette nearly mirrors onto itself
    assert (mask & mask[:, ::-1]).sum() / mask.sum() > 0.95
    side = render_mesh(torch.as_tensor(v), torch.as_tensor(f), size=256, view="side")
    assert (side != 255).any(axis=2).sum() > 0.2 * 256 * 256


def test_render_preview_layout() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=2)
    crop = np.full((224, 224, 3), 7, np.uint8)
    p = render_preview(sphere.vertices * 90.0, sphere.faces, crop, size=128)
    assert p.shape == (128, 384, 3) and p.dtype == np.uint8
    assert np.all(p[:, :128] == 7)
    np.testing.assert_array_equal(p[:, 128:256], render_mesh(sphere.vertices * 90.0, sphere.faces, 128, "front"))
    assert render_preview(sphere.vertices, sphere.faces, None, size=64).shape == (64, 128, 3)


def test_render_mesh_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        render_mesh(np.full((3, 3), np.nan), [[0, 1, 2]])
    with pytest.raises(ValueError):
        render_mesh(np.zeros((3, 3)), [[0, 1, 5]])


def test_make_grid_layout() -> None:
    imgs = [np.full((4, 6, 3), k + 1, np.uint8) for k in range(5)]
    g = make_grid(imgs, nrow=2, pad=1, pad_value=0)
    # 2 per row, 3 rows: H = 3*(4+1)+1 = 16, W = 2*(6+1)+1 = 15
    assert g.shape == (16, 15, 3) and g.dtype == np.uint8
    for k in range(5):
        top, left = (k // 2) * 5 + 1, (k % 2) * 7 + 1
        assert np.all(g[top:top + 4, left:left + 6] == k + 1)
    assert (g == 0).sum() == g.size - 5 * 4 * 6 * 3  # everything else is padding
    np.testing.assert_array_equal(make_grid(np.stack(imgs), nrow=2, pad=1), g)
    grey = make_grid([np.ones((5, 5))] * 3, nrow=8, pad=2, pad_value=0.5)
    assert grey.shape == (9, 23, 1)  # 1 row of 3: H = 5+4, W = 3*7+2
    assert grey[0, 0, 0] == 0.5 and grey[2, 2, 0] == 1.0
    with pytest.raises(ValueError):
        make_grid([np.zeros((4, 4, 3)), np.zeros((5, 4, 3))])
