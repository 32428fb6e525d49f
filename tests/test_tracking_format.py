"""The ``.frame`` files in the original tracker's format (TRACKER_FACTS): keys, shapes, dtypes, the 6D
row convention, the PyTorch3D -> OpenCV camera conversion and the OpenCV block's reprojection.

Oracles are independent of the writer: OpenCV's Rodrigues for rotations, the conversion rule of
TRACKER_FACTS written out here, meshes read back through trimesh, landmarks interpolated by hand.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from micalib.tracking.outputs import frame_dict, read_frame, save_frame
from tests.synthetic_tracking import track_synthetic
from utils.errors import MICAError

FLAME_KEYS = {"exp": (1, 100), "shape": (1, 300), "tex": (1, 140), "sh": (1, 9, 3), "eyes": (1, 12),
              "eyelids": (1, 2), "jaw": (1, 6)}
CAMERA_KEYS = {"R": (1, 6), "t": (1, 3), "fl": (1, 1), "pp": (1, 2)}
OPENCV_KEYS = {"R": (1, 3, 3), "t": (1, 3), "K": (1, 3, 3)}


def _decode_6d(d6):
    """TRACKER_FACTS: b1 = n(a1), b2 = n(a2 - (b1.a2) b1), b3 = b1 x b2; rows b1, b2, b3."""
    a1, a2 = np.asarray(d6[:3], float), np.asarray(d6[3:], float)
    b1 = a1 / np.linalg.norm(a1)
    b2 = a2 - b1.dot(a2) * b1
    b2 /= np.linalg.norm(b2)
    return np.stack([b1, b2, np.cross(b1, b2)])


def _p3d_to_opencv(r6, t, fl, pp, h, w):
    """TRACKER_FACTS: negate the first two columns of R and entries of T, transpose R;
    s = min(h, w)/2, c = (w/2, h/2): principal point = -pp s + c, focal = fl s."""
    r = _decode_6d(r6).copy()
    r[:, :2] *= -1
    t = np.asarray(t, float).copy()
    t[:2] *= -1
    s = min(h, w) / 2
    k = np.array([[fl * s, 0, -pp[0] * s + w / 2], [0, fl * s, -pp[1] * s + h / 2], [0, 0, 1]])
    return r.T, t, k


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fmt")
    return track_synthetic(tmp, real=False, n_frames=6, noise_px=0.3)


def test_frame_keys_shapes_dtypes(tracked):
    _seq, frames, _model, _face, out = tracked
    assert len(frames) == 6
    for k, fr in enumerate(frames):
        assert set(fr) == {"flame", "camera", "opencv", "img_size", "frame_id", "global_step"}
        for block, spec in (("flame", FLAME_KEYS), ("camera", CAMERA_KEYS), ("opencv", OPENCV_KEYS)):
            assert set(fr[block]) == set(spec)
            for key, shape in spec.items():
                a = fr[block][key]
                assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == shape, (block, key)
        assert fr["frame_id"] == f"{k:05d}" and int(fr["frame_id"]) == k
        assert isinstance(fr["global_step"], int)
        assert tuple(int(v) for v in fr["img_size"]) == (512, 512)
        # plain torch.load with weights_only and numpy allowed reads it too (no code objects inside)
        assert (out / "checkpoint" / f"{k:05d}.frame").is_file()


def test_6d_is_the_first_two_rows_with_a_non_symmetric_rotation(tmp_path):
    pose9 = np.array([0.3, -0.2, 0.1, 0.05, 0.2, -0.1, -0.15, 0.1, 0.25])
    r_cv = cv2.Rodrigues(np.array([0.2, -0.4, 0.3]))[0]
    k = np.array([[700.0, 0, 250.0], [0, 700.0, 260.0], [0, 0, 1]])
    d = frame_dict(np.zeros(100), pose9, [0.1, 0.2], np.zeros(300), r_cv, np.array([0.01, -0.02, 0.6]), k,
                   (512, 512), 3, 3)
    save_frame(tmp_path / "x.frame", d)
    d = read_frame(tmp_path / "x.frame")
    jaw = cv2.Rodrigues(pose9[:3])[0]
    assert not np.allclose(jaw, jaw.T)
    assert np.allclose(d["flame"]["jaw"][0], jaw[:2].reshape(-1), atol=1e-6)  # rows, not columns
    assert not np.allclose(d["flame"]["jaw"][0], jaw.T[:2].reshape(-1), atol=1e-3)
    assert np.allclose(_decode_6d(d["flame"]["jaw"][0]), jaw, atol=1e-6)
    left, right = cv2.Rodrigues(pose9[3:6])[0], cv2.Rodrigues(pose9[6:])[0]
    assert np.allclose(d["flame"]["eyes"][0], np.concatenate([left[:2].ravel(), right[:2].ravel()]), atol=1e-6)
    # the PyTorch3D block converts to the OpenCV block
    r, t, kk = _p3d_to_opencv(d["camera"]["R"][0], d["camera"]["t"][0], d["camera"]["fl"][0, 0],
                              d["camera"]["pp"][0], 512, 512)
    assert np.allclose(r, d["opencv"]["R"][0], atol=1e-6) and np.allclose(r, r_cv, atol=1e-6)
    assert np.allclose(t, d["opencv"]["t"][0], atol=1e-6)
    assert np.allclose(kk, d["opencv"]["K"][0], atol=1e-3)
    # K is written in the renderers' convention: the principal point half a pixel right and down
    assert np.allclose(kk, k + np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]]), atol=1e-3)


def test_pytorch3d_block_converts_to_opencv_block_in_tracked_files(tracked):
    for fr in tracked[1]:
        h, w = (int(v) for v in fr["img_size"])
        r, t, k = _p3d_to_opencv(fr["camera"]["R"][0], fr["camera"]["t"][0], fr["camera"]["fl"][0, 0],
                                 fr["camera"]["pp"][0], h, w)
        assert np.allclose(r, fr["opencv"]["R"][0], atol=1e-5)
        assert np.allclose(t, fr["opencv"]["t"][0], atol=1e-6)
        assert np.allclose(k, fr["opencv"]["K"][0], rtol=1e-5, atol=1e-3)


def test_opencv_block_reprojects_the_mesh_landmarks_onto_the_input_landmarks(tracked):
    import trimesh

    seq, frames, _model, _face, out = tracked
    from micalib.tracking.model import load_mediapipe_embedding

    emb = load_mediapipe_embedding(out.parent.parent / "assets" / "mediapipe_landmark_embedding.npz")
    for k, fr in enumerate(frames):
        mesh = trimesh.load(out / "mesh" / f"{k:05d}.ply", process=False)
        v = np.asarray(mesh.vertices, np.float64)
        f = np.asarray(mesh.faces)
        pts = np.einsum("nkc,nk->nc", v[f[emb.lmk_face_idx]], emb.lmk_b_coords)
        kk, r, t = (fr["opencv"][x][0].astype(np.float64) for x in ("K", "R", "t"))
        uvw = (pts @ r.T + t) @ kk.T
        uv = uvw[:, :2] / uvw[:, 2:]
        obs = seq["mediapipe"][k][emb.landmark_indices]
        err = np.linalg.norm(uv - obs, axis=1)
        assert np.sqrt((err ** 2).mean()) < 1.5, k  # noise 0.3 px per axis; float32 files


def test_read_frame_refuses_code_and_names_the_file(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "00000.frame"
    torch.save({"flame": Evil(), "camera": {}, "opencv": {}}, p)
    with pytest.raises(MICAError, match="00000.frame"):
        read_frame(p)


def test_read_frame_reads_numpy1_pickles(tmp_path):
    """The original tracker's files come from numpy 1, whose pickles name numpy.core.multiarray."""
    import io
    import zipfile

    d = frame_dict(np.arange(100) / 100, np.full(9, 0.1), [0.3, 0.4], np.ones(300), np.eye(3),
                   np.array([0.0, 0.0, 0.7]), np.diag([600.0, 600.0, 1.0]), (512, 512), 7, 7)
    buf = io.BytesIO()
    torch.save(d, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    pkl = next(n for n in src.namelist() if n.endswith("data.pkl"))
    assert b"numpy._core.multiarray" in src.read(pkl)
    p = tmp_path / "00007.frame"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            data = src.read(name)
            dst.writestr(name, data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray") if name == pkl else data)
    back = read_frame(p)
    assert back["frame_id"] == "00007"
    assert np.array_equal(back["flame"]["exp"], d["flame"]["exp"]) and back["flame"]["exp"].dtype == np.float32
