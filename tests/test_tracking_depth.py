"""``depth/NNNNN.png`` (micalib/tracking/depth.py) against ray-plane intersections, the original's
masking and mouth triangles, and the tracked files; the overlay's green / red landmarks."""
from __future__ import annotations

from concurrent.futures import Future

import cv2
import numpy as np
import pytest

from micalib.tracking.depth import (
    DEPTH_MAX_MM,
    FLAME_MOUTH_FACES,
    DepthMesh,
    DepthStats,
    FrameGeometry,
    depth_mm,
    rasterize_frame,
)
from utils.png import encode_png

K = np.array([[600.0, 0, 63.5], [0, 600.0, 63.5], [0, 0, 1]])  # OpenCV convention, 128 x 128
SIZE = 128


def _quad(z0: float, slope: float, half: float = 0.1):
    """Two camera-facing triangles on the plane z = z0 + slope * x (camera frame), and the plane."""
    xs = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    v = np.c_[xs, z0 + slope * xs[:, 0]]
    faces = np.array([[0, 2, 1], [0, 3, 2]])  # seen from the camera (z forward, y down): counter-clockwise
    return v, faces


def _plane_depth_mm(z0: float, slope: float) -> np.ndarray:
    """Per pixel (OpenCV centres) the ray's intersection with z = z0 + slope x, in mm."""
    j, i = np.meshgrid(np.arange(SIZE, dtype=np.float64), np.arange(SIZE, dtype=np.float64))
    dx = (j - K[0, 2]) / K[0, 0]  # the ray (dx, dy, 1) z meets z = z0 + slope * dx * z
    return np.broadcast_to(1000.0 * z0 / (1.0 - slope * dx), i.shape)


@pytest.mark.parametrize("slope", [0.0, 1.5])
def test_depth_is_the_perspective_correct_camera_z_in_mm(slope):
    v, faces = _quad(0.6, slope)
    mesh = DepthMesh.build(faces, len(v), None)
    _screen, frags, c = rasterize_frame(v, K, mesh, SIZE, SIZE)
    d = depth_mm(frags, c, mesh, SIZE, SIZE)
    assert d.dtype == np.uint16 and d.shape == (SIZE, SIZE)
    covered = d > 0
    assert covered.sum() > 2000
    truth = _plane_depth_mm(0.6, slope)
    # whole millimetres, truncated like the original's astype(uint16); float32 vertices
    assert np.abs(d[covered].astype(np.float64) - np.floor(truth[covered])).max() <= 1
    if slope:  # screen-linear z would be off by millimetres inside the tilted quad
        lin = 1000.0 * (0.6 + slope * (np.arange(SIZE) - K[0, 2]) / K[0, 0] * 0.6)
        assert np.abs(np.broadcast_to(lin, (SIZE, SIZE))[covered] - truth[covered]).max() > 3


def test_depth_leaves_out_boundary_and_ears_and_clamps():
    v, faces = _quad(0.6, 0.0)
    masks = {"boundary": np.array([0, 1, 2]), "left_ear": np.array([3]), "right_ear": np.array([], np.int64)}
    mesh = DepthMesh.build(faces, len(v), masks)
    assert mesh.in_depth.tolist() == [False, False]  # every triangle has only left-out vertices
    _screen, frags, c = rasterize_frame(v, K, mesh, SIZE, SIZE)
    assert not depth_mm(frags, c, mesh, SIZE, SIZE).any()
    mesh = DepthMesh.build(faces, len(v), {"boundary": np.array([0, 1, 2])})
    assert mesh.in_depth.tolist() == [False, True]  # triangle 1 has vertex 3: the original's mask > 0
    far = v * np.array([100.0, 100.0, 100.0])  # 60 m: fits; 70 m: clamped
    stats = DepthStats()
    mesh = DepthMesh.build(faces, len(v), None)
    _screen, frags, c = rasterize_frame(far * (70 / 60), K, mesh, SIZE, SIZE)
    d = depth_mm(frags, c, mesh, SIZE, SIZE, stats)
    assert d.max() == DEPTH_MAX_MM and stats.clamped_pixels == int((d > 0).sum()) > 0


def test_mouth_triangles_only_on_flames_topology():
    faces = np.array([[0, 1, 2]])
    flame = DepthMesh.build(faces, 5023, None)
    assert len(flame.faces) == 1 + 30 and flame.n_mesh == 1
    assert np.array_equal(flame.faces[1:], FLAME_MOUTH_FACES) and bool(flame.in_depth.all())
    other = DepthMesh.build(faces, 262, None)
    assert len(other.faces) == 1


def test_png_is_one_channel_uint16_and_lossless():
    rng = np.random.default_rng(0)
    d = rng.integers(0, 65536, (40, 50), dtype=np.uint16)
    back = cv2.imdecode(np.frombuffer(encode_png(d), np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.shape == (40, 50) and np.array_equal(back, d)


def test_tracked_run_writes_depth_at_the_heads_distance(tmp_path):
    from tests.synthetic_tracking import track_synthetic
    from utils.mesh import read_mesh

    _seq, fr, _model, _face, out = track_synthetic(tmp_path, real=False, n_frames=3, noise_px=0.3)
    for k in range(3):
        d = cv2.imread(str(out / "depth" / f"{k:05d}.png"), cv2.IMREAD_UNCHANGED)
        assert d.dtype == np.uint16 and d.shape == (512, 512)
        vals = d[d > 0].astype(np.float64)
        assert vals.size > 1000
        # the fitted head (mesh/NNNNN.ply, metres) in the fitted camera (.frame's opencv R, t): three
        # frames of a still head cannot fix the metric distance (the focal prior decides it)
        verts, _ = read_mesh(out / "mesh" / f"{k:05d}.ply")
        r, t = (np.asarray(fr[k]["opencv"][x][0], np.float64) for x in ("R", "t"))
        cam_z = (verts @ r.T + t)[:, 2] * 1000
        assert cam_z.min() - 5 <= vals.min() and vals.max() <= cam_z.max() + 5


def test_overlay_draws_detected_green_and_model_red():
    from micalib.tracking.writer import overlay_frame as _video_frame

    v, faces = _quad(0.6, 0.0)
    mesh = DepthMesh.build(faces, len(v), None)
    screen, frags, c = rasterize_frame(v, K, mesh, SIZE, SIZE)
    geom: Future = Future()
    normals = np.tile([0.0, 0.0, -1.0], (len(v), 1))
    geom.set_result(FrameGeometry(v.astype(np.float32), screen, frags, c, normals, np.array([[20.0, 20.0]])))
    img = _video_frame(np.zeros((SIZE, SIZE, 3), np.uint8), np.array([[100.0, 100.0], [np.nan, np.nan]]), geom, faces)
    mid = img[:, SIZE:2 * SIZE]
    assert tuple(mid[20, 20]) == (255, 0, 0) and tuple(mid[100, 100]) == (0, 220, 0)
    assert img[:, 2 * SIZE:].any()  # the mesh is drawn on the right


def test_the_nearer_surface_wins():
    near, faces = _quad(0.5, 0.0, half=0.02)  # pixels 40-87
    far, _ = _quad(0.7, 0.0, half=0.1)
    v = np.concatenate([far, near])
    f = np.concatenate([faces, faces + 4])
    mesh = DepthMesh.build(f, len(v), None)
    _screen, frags, c = rasterize_frame(v, K, mesh, SIZE, SIZE)
    d = depth_mm(frags, c, mesh, SIZE, SIZE)
    assert d[64, 64] in (499, 500) and d[64, 5] in (699, 700)  # centre: the near quad; edge: the far one
