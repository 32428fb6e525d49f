"""micalib.tracking.overlay: shading against hand-computed Lambert values, landmark dots, the
side-by-side frame, and the atomic mp4v writer read back with cv2.VideoCapture."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from micalib.tracking import overlay
from micalib.tracking.overlay import AMBIENT, MESH_GRAY, VideoWriter, compose_overlay, draw_landmarks, gray_mesh
from tests import numpy_renderer as renderer
from tests.fakes import uv_sphere
from utils.errors import MICAError


def _quad(x0, y0, x1, y1, z=1.0):
    """A camera-facing rectangle (counter-clockwise seen with y up)."""
    verts = np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], np.float64)
    return verts, np.array([[0, 2, 1], [0, 3, 2]])


def test_shade_flat_and_tilted_planes():
    verts, faces = _quad(4.2, 5.3, 40.7, 30.1)
    rgb, mask = gray_mesh(verts, faces, 36, 48)
    assert rgb.shape == (36, 48, 3) and rgb.dtype == np.uint8 and mask.shape == (36, 48) and mask.dtype == bool
    # coverage as the project's independent numpy rasteriser finds it (its pixel centres are at +0.5)
    old = renderer.rasterize(verts + [0.5, 0.5, 0.0], faces, 36, 48)
    np.testing.assert_array_equal(mask, old.face_idx >= 0)
    assert (rgb[mask] == round(MESH_GRAY * 255)).all() and (rgb[~mask] == 0).all()
    # explicit camera-frame normals tilted 60 degrees: n_z = 0.5 (either sign: lit from both sides)
    for sign in (1, -1):
        n = np.tile([np.sqrt(0.75), 0.0, -0.5 * sign], (4, 1))
        rgb, _ = gray_mesh(verts, faces, 36, 48, normals=n)
        assert (rgb[mask] == round((AMBIENT + (1 - AMBIENT) * 0.5) * MESH_GRAY * 255)).all()
    # seen from behind it is culled by default, drawn on request
    back = faces[:, ::-1]
    assert not gray_mesh(verts, back, 36, 48)[1].any()
    np.testing.assert_array_equal(gray_mesh(verts, back, 36, 48, cull_backfaces=False)[1], mask)


def test_shade_sphere_follows_lambert():
    verts, faces = uv_sphere(24, 32)
    r, c = 20.0, 25.0
    # seen by a camera looking at the model's -z (y down: a proper rotation); depth in other units
    scr = torch.stack([verts[:, 0] * r + c, -verts[:, 1] * r + c, 5.0 - verts[:, 2] * r / 10], 1)
    rgb, mask = gray_mesh(scr, faces, 50, 50)
    yy, xx = np.mgrid[:50, :50]
    rho2 = ((xx - c) ** 2 + (yy - c) ** 2) / r ** 2
    inner = rho2 < 0.8
    expect = (AMBIENT + (1 - AMBIENT) * np.sqrt(1 - rho2[inner])) * MESH_GRAY * 255
    assert mask[inner].all()
    assert np.abs(rgb[inner][:, 0] - expect).max() < 6  # Gouraud on a 24x32 sphere


def test_draw_landmarks_dots_and_nan():
    img = np.full((40, 50, 3), 7, np.uint8)
    pts = np.array([[10.0, 20.0], [np.nan, 3.0], [30.2, 5.9], [1e6, 1e6]])
    out = draw_landmarks(img, {"ibug68": pts, "mine": np.array([[45.0, 35.0]])}, radius=1)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert (img == 7).all()  # input untouched
    assert tuple(out[20, 10]) == overlay.LANDMARK_COLORS["ibug68"]
    assert tuple(out[6, 30]) == overlay.LANDMARK_COLORS["ibug68"]
    assert tuple(out[35, 45]) == overlay._PALETTE[0]
    assert (out[20, 13] == 7).all() and (out[25, 10] == 7).all()
    changed = (out != 7).any(2)
    assert 10 <= changed.sum() <= 3 * 9 + 3
    custom = draw_landmarks(img, {"ibug68": pts[:1]}, colors={"ibug68": (1, 2, 3)}, radius=2)
    assert tuple(custom[20, 10]) == (1, 2, 3) and tuple(custom[20, 12]) == (1, 2, 3)


def test_compose_overlay_layout_and_blend():
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    verts, faces = _quad(10.0, 8.0, 50.0, 40.0)
    lmk = {"mediapipe": np.array([[5.0, 5.0]])}
    out = compose_overlay(crop, lmk, verts, faces, mesh_alpha=0.6)
    assert out.shape == (48, 192, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :64], crop)
    np.testing.assert_array_equal(out[:, 64:128], draw_landmarks(crop, lmk))
    mesh, mask = gray_mesh(verts, faces, 48, 64)
    right = out[:, 128:].astype(np.int32)
    np.testing.assert_array_equal(right[~mask], crop[~mask])
    expect = 0.6 * mesh[mask].astype(np.float64) + 0.4 * crop[mask]
    assert np.abs(right[mask] - expect).max() <= 1.0
    assert mask.sum() > 1000


def test_compose_overlay_survives_non_finite_vertices():
    crop = np.full((40, 40, 3), 50, np.uint8)
    verts, faces = _quad(5.0, 5.0, 35.0, 35.0)
    verts = np.concatenate([verts, [[np.nan, 3.0, 1.0], [20.0, 20.0, np.inf]]])
    faces = np.concatenate([faces, [[4, 5, 0]]])
    out = compose_overlay(crop, {"fitted": np.full((3, 2), np.nan)}, verts, faces)
    assert out.shape == (40, 120, 3)
    np.testing.assert_array_equal(out[:, 40:80], crop)  # NaN landmarks are skipped
    inside = out[20, 100].astype(int)
    assert (inside != 50).all()  # the quad is drawn; the broken triangle is skipped


def _write_frames(path, n, size=(64, 48)):
    colors = [(40 * k % 256, 255 - 30 * k % 256, 100) for k in range(n)]
    with VideoWriter(path, 25, size) as vw:
        for col in colors:
            vw.write(np.full((size[1], size[0], 3), col, np.uint8))
    return colors


def test_video_writer_roundtrip(tmp_path):
    path = tmp_path / "video.mp4"
    colors = _write_frames(path, 7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]  # nothing left under a temporary name
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)
    cap.release()
    assert len(frames) == 7 and frames[0].shape == (48, 64, 3)
    for bgr, col in zip(frames, colors, strict=True):  # lossy codec: colours come back within a few levels
        assert np.abs(bgr[..., ::-1].reshape(-1, 3).mean(0) - col).max() < 8


def test_video_writer_exception_and_bad_frames_leave_nothing(tmp_path):
    path = tmp_path / "video.mp4"
    with pytest.raises(KeyError):
        with VideoWriter(path, 25, (32, 32)) as vw:
            vw.write(np.zeros((32, 32, 3), np.uint8))
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []
    with VideoWriter(path, 25, (32, 32)) as vw:
        with pytest.raises(ValueError, match=r"expected a \(32, 32, 3\) uint8"):
            vw.write(np.zeros((32, 30, 3), np.uint8))
        vw.write(np.zeros((32, 32, 3), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["video.mp4"] and vw.frames == 1


def test_video_writer_codec_failure_is_one_line(tmp_path, monkeypatch):
    class Closed:
        def __init__(self, *args):
            pass

        def isOpened(self):
            return False

        def release(self):
            pass

    monkeypatch.setattr(overlay.cv2, "VideoWriter", Closed)
    with pytest.raises(MICAError, match="mp4v") as err:
        VideoWriter(tmp_path / "v.mp4", 25, (32, 32))
    assert "\n" not in str(err.value) and "v.mp4" in str(err.value)
    assert list(tmp_path.iterdir()) == []
