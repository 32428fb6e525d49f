"""models/lbs.py against independent oracles: scipy rotations, numpy, and the smplx package."""
from __future__ import annotations

import math

import numpy as np
import pytest
import smplx.lbs as smplx_lbs
import torch
from scipy.spatial.transform import Rotation

from models.flame_io import load_flame_model
from models.lbs import (
    batch_rodrigues,
    blend_shapes,
    find_dynamic_lmk_idx_and_bcoords,
    lbs,
    vertices2joints,
    vertices2landmarks,
    yaw_bin,
)
from tests.synthetic_flame import write_synthetic_flame

DT = torch.float64


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = write_synthetic_flame(tmp_path_factory.mktemp("lbs_flame"), seed=1, real=False)
    m = load_flame_model(folder / "generic_model.pkl")
    v = m.n_vertices
    return {
        "v_template": torch.tensor(m.v_template, dtype=DT),
        "shapedirs": torch.tensor(m.shapedirs, dtype=DT),  # (V, 3, 400)
        "shapedirs_flat": torch.tensor(m.shapedirs.reshape(v * 3, -1).T.copy(), dtype=DT),
        "posedirs": torch.tensor(m.posedirs.reshape(v * 3, -1).T.copy(), dtype=DT),
        "J_regressor": torch.tensor(m.J_regressor, dtype=DT),
        "parents": torch.tensor(m.parents),
        "weights": torch.tensor(m.weights, dtype=DT),
        "faces": torch.tensor(m.faces),
    }


def test_batch_rodrigues_vs_scipy():
    rng = np.random.default_rng(0)
    rv = rng.normal(size=(20, 3)) * 1.5
    rv[0] = 0.0
    ours = batch_rodrigues(torch.tensor(rv)).numpy()
    np.testing.assert_allclose(ours, Rotation.from_rotvec(rv).as_matrix(), atol=1e-7)


def test_blend_shapes_and_joints_vs_numpy(model):
    rng = np.random.default_rng(1)
    betas = rng.normal(size=(3, 120))
    ours = blend_shapes(torch.tensor(betas), model["shapedirs_flat"]).numpy()
    ref = np.einsum("bl,vcl->bvc", betas, model["shapedirs"].numpy()[:, :, :120])
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    verts = torch.tensor(rng.normal(size=(2, model["v_template"].shape[0], 3)))
    np.testing.assert_allclose(vertices2joints(model["J_regressor"], verts).numpy(),
                               np.einsum("jv,bvc->bjc", model["J_regressor"].numpy(), verts.numpy()), atol=1e-12)


def test_lbs_vs_smplx(model):
    torch.manual_seed(0)
    b = 4
    betas = torch.randn(b, 400, dtype=DT)
    pose = torch.randn(b, 15, dtype=DT) * 0.4
    args = (model["v_template"], model["shapedirs_flat"], model["posedirs"], model["J_regressor"],
            model["parents"], model["weights"])
    before = [a.clone() for a in (betas, pose) + args]
    verts, joints = lbs(betas, pose, *args)
    ref_v, ref_j = smplx_lbs.lbs(betas, pose, model["v_template"], model["shapedirs"], model["posedirs"],
                                 model["J_regressor"], model["parents"], model["weights"])
    torch.testing.assert_close(verts, ref_v, atol=1e-10, rtol=0)
    torch.testing.assert_close(joints, ref_j, atol=1e-10, rtol=0)
    for x, y in zip(before, (betas, pose) + args, strict=True):  # inputs untouched
        assert torch.equal(x, y)
    # The pose really matters (the comparison is not between two rest meshes).
    rest, _ = lbs(betas, torch.zeros_like(pose), *args)
    assert (verts - rest).abs().max() > 1e-3


def test_lbs_rigid_root_rotation_by_hand(model):
    """Only a root rotation R: every vertex is R @ v_shaped (root joint J0 stays put)."""
    b = 1
    betas = torch.zeros(b, 10, dtype=DT)
    rv = np.array([0.3, -0.5, 0.2])
    pose = torch.zeros(b, 15, dtype=DT)
    pose[0, :3] = torch.tensor(rv)
    verts, _ = lbs(betas, pose, model["v_template"], model["shapedirs_flat"], model["posedirs"],
                   model["J_regressor"], model["parents"], model["weights"])
    v = model["v_template"].numpy()
    j0 = model["J_regressor"].numpy()[0] @ v
    ref = (v - j0) @ Rotation.from_rotvec(rv).as_matrix().T + j0
    np.testing.assert_allclose(verts[0].numpy(), ref, atol=1e-10)


def test_vertices2landmarks_by_hand(model):
    rng = np.random.default_rng(2)
    verts = rng.normal(size=(2, model["v_template"].shape[0], 3))
    faces = model["faces"].numpy()
    idx = rng.integers(0, len(faces), size=(2, 7))
    bary = rng.dirichlet(np.ones(3), size=(2, 7))
    ours = vertices2landmarks(torch.tensor(verts), model["faces"], torch.tensor(idx), torch.tensor(bary)).numpy()
    ref = np.zeros((2, 7, 3))
    for i in range(2):
        for l in range(7):
            a, bb, c = faces[idx[i, l]]
            ref[i, l] = bary[i, l, 0] * verts[i, a] + bary[i, l, 1] * verts[i, bb] + bary[i, l, 2] * verts[i, c]
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    # Shared (L,) / (L, 3) tables broadcast over the batch.
    shared = vertices2landmarks(torch.tensor(verts), model["faces"], torch.tensor(idx[0]), torch.tensor(bary[0]))
    np.testing.assert_allclose(shared[0].numpy(), ref[0], atol=1e-12)


# yaw of the head in degrees -> expected contour row, from the rule
# a = round(clamp(-yaw, max=39)); a >= 0 -> a; -39 <= a < 0 -> 39 - a; a < -39 -> 78.
@pytest.mark.parametrize("yaw_deg,expected", [(0, 0), (10, 49), (-10, 10), (-25.4, 25), (38.6, 78),
                                              (39, 78), (60, 78), (-60, 39), (1, 40), (-39, 39)])
def test_contour_bin_for_root_yaw(yaw_deg, expected):
    pose = torch.zeros(1, 15, dtype=DT)
    pose[0, 1] = math.radians(yaw_deg)  # rotation about y = yaw
    faces_tab = torch.arange(79 * 17).view(79, 17)
    bary_tab = torch.rand(79, 17, 3, dtype=DT)
    idx, bary = find_dynamic_lmk_idx_and_bcoords(pose, faces_tab, bary_tab, torch.tensor([1, 0]))
    assert idx[0, 0].item() // 17 == expected
    assert torch.equal(bary[0], bary_tab[expected])


def test_contour_bin_composes_neck_and_root():
    pose = torch.zeros(2, 15, dtype=DT)
    pose[0, 1], pose[0, 4] = math.radians(15), math.radians(20)  # root 15 + neck 20 = 35 deg yaw
    pose[1, 1], pose[1, 4] = math.radians(-15), math.radians(-10)  # -25 deg
    faces_tab = torch.arange(79 * 17).view(79, 17)
    idx, _ = find_dynamic_lmk_idx_and_bcoords(pose, faces_tab, torch.zeros(79, 17, 3, dtype=DT),
                                              torch.tensor([1, 0]))
    assert (idx[:, 0] // 17).tolist() == [39 + 35, 25]


def test_contour_selection_vs_smplx():
    torch.manual_seed(3)
    pose = torch.randn(32, 15, dtype=DT) * 0.6
    faces_tab = torch.randint(0, 1000, (79, 17))
    bary_tab = torch.rand(79, 17, 3, dtype=DT)
    chain = torch.tensor([1, 0])
    ours = find_dynamic_lmk_idx_and_bcoords(pose, faces_tab, bary_tab, chain)
    ref = smplx_lbs.find_dynamic_lmk_idx_and_bcoords(torch.zeros(32, 10, 3, dtype=DT), pose, faces_tab,
                                                     bary_tab, chain)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])


def test_yaw_bin_values():
    r = torch.tensor(Rotation.from_euler("y", [[5.0], [-5.0], [45.0]], degrees=True).as_matrix())
    assert yaw_bin(r).tolist() == [44, 5, 78]
