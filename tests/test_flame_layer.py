"""models/flame.py: the FLAME layer against numpy oracles and the smplx package."""
from __future__ import annotations

import numpy as np
import pytest
import smplx.lbs as smplx_lbs
import torch

from configs.config import load_cfg
from models.flame import FLAME, M_TO_MM, NOW_LANDMARK_IDX, FLAMEOutput, to_millimetres
from models.flame_io import load_flame_model, load_landmark_embedding
from tests.synthetic_flame import write_synthetic_flame


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    return write_synthetic_flame(tmp_path_factory.mktemp("layer_flame"), seed=2, real=False)


@pytest.fixture(scope="module")
def small(small_dir):
    """(FLAME in float64, parsed model, embedding)."""
    m = load_flame_model(small_dir / "generic_model.pkl")
    e = load_landmark_embedding(small_dir / "landmark_embedding.npy")
    return FLAME(m, e, dtype=torch.float64), m, e


def _np_landmarks(verts, faces, idx, bary):
    tri = verts[:, faces[idx]]  # (B, L, 3, 3)
    return np.einsum("blkc,lk->blc", tri, bary)


def test_canonical_vs_numpy(small):
    flame, m, _ = small
    rng = np.random.default_rng(0)
    shape = rng.normal(size=(3, 300))
    ref = m.v_template[None] + np.einsum("bl,vcl->bvc", shape, m.shapedirs[:, :, :300])
    np.testing.assert_allclose(flame.canonical(torch.tensor(shape)).numpy(), ref, atol=1e-12)
    # Fewer coefficients = the rest zero.
    short = flame.canonical(torch.tensor(shape[:, :50])).numpy()
    ref50 = m.v_template[None] + np.einsum("bl,vcl->bvc", shape[:, :50], m.shapedirs[:, :, :50])
    np.testing.assert_allclose(short, ref50, atol=1e-12)


def test_canonical_equals_forward_at_zero_pose(small):
    flame, _, _ = small
    shape = torch.randn(4, 300, dtype=torch.float64)
    out = flame(shape)
    assert isinstance(out, FLAMEOutput)
    torch.testing.assert_close(out.vertices, flame.canonical(shape), atol=1e-12, rtol=0)
    out2 = flame(shape, expression=torch.zeros(4, 100, dtype=torch.float64), pose=torch.zeros(4, 6, dtype=torch.float64))
    torch.testing.assert_close(out2.vertices, out.vertices, atol=1e-12, rtol=0)


def test_forward_vs_smplx(small):
    flame, m, _ = small
    torch.manual_seed(1)
    shape, expr = torch.randn(3, 300, dtype=torch.float64), torch.randn(3, 100, dtype=torch.float64)
    full_pose = torch.randn(3, 15, dtype=torch.float64) * 0.3
    out = flame(shape, expr, full_pose=full_pose)
    t = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    v = m.n_vertices
    ref_v, ref_j = smplx_lbs.lbs(torch.cat([shape, expr], 1), full_pose, t(m.v_template), t(m.shapedirs),
                                 t(m.posedirs.reshape(v * 3, 36).T), t(m.J_regressor),
                                 torch.tensor(m.parents), t(m.weights))
    torch.testing.assert_close(out.vertices, ref_v, atol=1e-10, rtol=0)
    torch.testing.assert_close(out.joints, ref_j, atol=1e-10, rtol=0)


def test_mica_pose_is_global_and_jaw(small):
    flame, _, _ = small
    shape = torch.randn(2, 300, dtype=torch.float64)
    pose6 = torch.randn(2, 6, dtype=torch.float64) * 0.3
    full = torch.zeros(2, 15, dtype=torch.float64)
    full[:, 0:3], full[:, 6:9] = pose6[:, :3], pose6[:, 3:]
    a, b = flame(shape, pose=pose6), flame(shape, full_pose=full)
    torch.testing.assert_close(a.vertices, b.vertices, atol=0, rtol=0)
    torch.testing.assert_close(a.landmarks68, b.landmarks68, atol=0, rtol=0)


def test_landmarks_vs_numpy(small):
    flame, m, e = small
    verts = torch.randn(2, m.n_vertices, 3, dtype=torch.float64)
    vn = verts.numpy()
    ref68 = _np_landmarks(vn, m.faces, e.full_lmk_faces_idx[0], e.full_lmk_bary_coords[0])
    np.testing.assert_allclose(flame.landmarks68(verts).numpy(), ref68, atol=1e-12)
    now = list(NOW_LANDMARK_IDX)
    ref7 = _np_landmarks(vn, m.faces, e.static_lmk_faces_idx[now], e.static_lmk_bary_coords[now])
    np.testing.assert_allclose(flame.landmarks7(verts).numpy(), ref7, atol=1e-12)


def test_forward_landmarks_dynamic_contour(small):
    """Zero pose -> contour row 0; 20 deg yaw -> row 59 (the rule checked in test_flame_lbs)."""
    flame, m, e = small
    shape = torch.randn(1, 300, dtype=torch.float64)
    for yaw_deg, row in ((0.0, 0), (20.0, 59)):
        fp = torch.zeros(1, 15, dtype=torch.float64)
        fp[0, 1] = np.radians(yaw_deg)
        out = flame(shape, full_pose=fp)
        vn = out.vertices.numpy()
        idx = np.concatenate([e.dynamic_lmk_faces_idx[row], e.static_lmk_faces_idx])
        bary = np.concatenate([e.dynamic_lmk_bary_coords[row], e.static_lmk_bary_coords])
        np.testing.assert_allclose(out.landmarks68.numpy(), _np_landmarks(vn, m.faces, idx, bary), atol=1e-12)
        ref7 = _np_landmarks(vn, m.faces, e.static_lmk_faces_idx[list(NOW_LANDMARK_IDX)],
                             e.static_lmk_bary_coords[list(NOW_LANDMARK_IDX)])
        np.testing.assert_allclose(out.landmarks7.numpy(), ref7, atol=1e-12)


@pytest.mark.parametrize("flame_dir", ["synthetic_flame_dir", pytest.param("real_flame_dir", marks=pytest.mark.shared_data)])
def test_landmarks7_from_full68(flame_dir, request):
    """On the random topology and, with ../shared, on the real template and landmark embedding."""
    d = request.getfixturevalue(flame_dir)
    flame = FLAME.from_files(d / "generic_model.pkl", d / "landmark_embedding.npy")
    verts = flame.canonical(torch.randn(2, 300))
    lmk68 = flame.landmarks68(verts)
    assert lmk68.shape == (2, 68, 3)
    torch.testing.assert_close(flame.landmarks7(verts), lmk68[:, 17:][:, list(NOW_LANDMARK_IDX)])
    mm = to_millimetres(verts)
    torch.testing.assert_close(mm, verts * 1000.0)
    assert M_TO_MM == 1000.0


def test_mica_buffers_layout(small):
    flame, m, e = small
    buf = flame.mica_buffers()
    v, f = m.n_vertices, m.faces.shape[0]
    shapes = {"faces_tensor": (f, 3), "v_template": (v, 3), "shapedirs": (v, 3, 400), "posedirs": (36, v * 3),
              "J_regressor": (5, v), "parents": (5,), "lbs_weights": (v, 5), "lmk_faces_idx": (51,),
              "lmk_bary_coords": (51, 3), "dynamic_lmk_faces_idx": (79, 17), "dynamic_lmk_bary_coords": (79, 17, 3),
              "full_lmk_faces_idx": (1, 68), "full_lmk_bary_coords": (1, 68, 3), "neck_kin_chain": (2,),
              "eye_pose": (1, 6), "neck_pose": (1, 3)}
    assert {k: tuple(t.shape) for k, t in buf.items()} == shapes
    np.testing.assert_array_equal(buf["shapedirs"].numpy(), m.shapedirs)
    np.testing.assert_array_equal(buf["posedirs"].numpy(), m.posedirs.reshape(-1, 36).T)
    assert buf["parents"].tolist() == [-1, 0, 1, 1, 1] and buf["neck_kin_chain"].tolist() == [1, 0]
    for k in ("faces_tensor", "parents", "lmk_faces_idx", "dynamic_lmk_faces_idx", "full_lmk_faces_idx",
              "neck_kin_chain"):
        assert buf[k].dtype == torch.long
    assert not buf["eye_pose"].any() and not buf["neck_pose"].any()
    # Fewer components: identity columns then expression columns of FLAME's 400.
    f2 = FLAME(m, e, n_shape=20, n_exp=5, dtype=torch.float64)
    sd = f2.mica_buffers()["shapedirs"].numpy()
    np.testing.assert_array_equal(sd, np.concatenate([m.shapedirs[:, :, :20], m.shapedirs[:, :, 300:305]], 2))


def test_reduced_spaces_and_expression(small):
    _, m, e = small
    f2 = FLAME(m, e, n_shape=20, n_exp=5, dtype=torch.float64)
    shape, expr = torch.randn(2, 10, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    out = f2(shape, expr)
    ref = (m.v_template[None] + np.einsum("bl,vcl->bvc", shape.numpy(), m.shapedirs[:, :, :10])
           + np.einsum("bl,vcl->bvc", expr.numpy(), m.shapedirs[:, :, 300:305]))
    np.testing.assert_allclose(out.vertices.numpy(), ref, atol=1e-12)


def test_dtype_follows_to_and_state_dict_empty(small_dir):
    flame = FLAME.from_files(small_dir / "generic_model.pkl", small_dir / "landmark_embedding.npy")
    assert flame.v_template.dtype == torch.float32 and flame.state_dict() == {}
    shape = torch.randn(2, 300)
    v32 = flame.canonical(shape)
    f64 = flame.to(torch.float64)
    out = f64(shape.double())
    assert out.vertices.dtype == torch.float64 and f64.faces.dtype == torch.long
    torch.testing.assert_close(out.vertices.float(), v32, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(small_dir):
    flame = FLAME.from_files(small_dir / "generic_model.pkl", small_dir / "landmark_embedding.npy")
    shape, pose = torch.randn(3, 300), torch.randn(3, 6) * 0.2
    cpu = flame(shape, pose=pose)
    gpu = flame.to("cuda")(shape.cuda(), pose=pose.cuda())
    torch.testing.assert_close(gpu.vertices.cpu(), cpu.vertices, atol=1e-5, rtol=0)
    torch.testing.assert_close(gpu.landmarks68.cpu(), cpu.landmarks68, atol=1e-5, rtol=0)


def test_bad_inputs(small):
    flame, _, _ = small
    with pytest.raises(ValueError, match="k <= 300"):
        flame.canonical(torch.zeros(1, 301, dtype=torch.float64))
    with pytest.raises(ValueError, match="either"):
        flame(torch.zeros(1, 300, dtype=torch.float64), pose=torch.zeros(1, 6), full_pose=torch.zeros(1, 15))
    with pytest.raises(ValueError, match="pose must be"):
        flame(torch.zeros(1, 300, dtype=torch.float64), pose=torch.zeros(1, 15))
    with pytest.raises(ValueError, match="n_shape"):
        FLAME(*small[1:], n_shape=301)


def test_from_config(small_dir):
    cfg = load_cfg(None, ["model.flame_model_path", str(small_dir / "generic_model.pkl"),
                          "model.flame_lmk_embedding_path", str(small_dir / "landmark_embedding.npy"),
                          "model.n_shape", "100", "model.n_exp", "0"])
    flame = FLAME.from_config(cfg)
    assert flame.n_shape == 100 and flame.n_exp == 0 and flame.shapedirs.shape[0] == 100
    assert flame(torch.zeros(1, 100)).vertices.shape == (1, flame.n_vertices, 3)
