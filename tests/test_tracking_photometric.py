"""micalib.render.shading and .photometric: SH orthonormality by exact quadrature, hand formulas, the
Lambert approximation, and the photometric stage on a synthetic render (loss drops, pose moves
toward the truth, appearance is learned)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from micalib.render.shading import directional_sh, sh_basis, sh_shading
from micalib.tracking.photometric import PhotometricRefiner
from tests.fakes import uv_sphere


@pytest.fixture(autouse=True)
def _one_thread():
    """The small per-iteration tensors run faster on one thread; two threads on a busy 2-core machine
    made these tests 10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sphere_quadrature(n_z: int = 6, n_phi: int = 12):
    """Nodes and weights integrating polynomials of degree <= 4 exactly over the unit sphere
    (Gauss-Legendre in z times the trapezoid rule in the azimuth)."""
    z, wz = np.polynomial.legendre.leggauss(n_z)
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    r = np.sqrt(1 - zz ** 2)
    nodes = np.stack([r * np.cos(pp), r * np.sin(pp), zz], -1).reshape(-1, 3)
    weights = (wz[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None]).reshape(-1)
    return torch.from_numpy(nodes), torch.from_numpy(weights)


def test_sh_basis_is_orthonormal():
    nodes, w = _sphere_quadrature()
    assert float(w.sum()) == pytest.approx(4 * math.pi)
    y = sh_basis(nodes)  # (N, 9)
    gram = (y * w[:, None]).T @ y
    np.testing.assert_allclose(gram.numpy(), np.eye(9), atol=1e-12)


def test_sh_basis_hand_values():
    n = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.6, 0.8, 0.0]], dtype=torch.float64)
    y = sh_basis(n).numpy()
    c0, c1 = 0.5 / math.sqrt(math.pi), math.sqrt(3 / (4 * math.pi))
    np.testing.assert_allclose(y[0], [c0, 0, c1, 0, 0, 0, 2 * math.sqrt(5 / (16 * math.pi)), 0, 0], atol=1e-15)
    np.testing.assert_allclose(y[1], [c0, 0, 0, c1, 0, 0, -math.sqrt(5 / (16 * math.pi)), 0,
                                      math.sqrt(15 / (16 * math.pi))], atol=1e-15)
    assert y[2, 4] == pytest.approx(math.sqrt(15 / (4 * math.pi)) * 0.48)
    assert y[2, 8] == pytest.approx(math.sqrt(15 / (16 * math.pi)) * (0.36 - 0.64))


def test_directional_sh_approximates_lambert():
    d = np.array([0.3, -0.5, 0.8])
    d /= np.linalg.norm(d)
    sh = directional_sh(d, intensity=1.0, ambient=0.25).double()
    n = torch.from_numpy(np.random.default_rng(0).normal(size=(2000, 3)))
    n = n / n.norm(dim=1, keepdim=True)
    got = sh_shading(n, sh)
    assert got.shape == (2000, 3)
    exact = 0.25 + np.clip(n.numpy() @ d, 0, None)
    err = np.abs(got[:, 0].numpy() - exact)
    assert err.max() < 0.11 and err.mean() < 0.04  # band-2 truncation of the clamped cosine


# ------------------------------------------------------------------ synthetic photometric scene
SIZE, FOCAL = 96, 150.0


def _rot_y(yaw: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(yaw), torch.sin(yaw)
    o, z = torch.ones_like(yaw), torch.zeros_like(yaw)
    return torch.stack([torch.stack([c, z, s]), torch.stack([z, o, z]), torch.stack([-s, z, c])])


def _scene():
    verts, faces = uv_sphere(20, 28)
    verts = (verts * 0.09).float()
    p = verts.double() / 0.09
    albedo = 0.5 + 0.35 * torch.stack([torch.sin(5 * p[:, 0] + 1) * torch.cos(4 * p[:, 1]),
                                       torch.sin(4 * p[:, 1] + 2 * p[:, 2]),
                                       torch.cos(6 * p[:, 2] - p[:, 0])], 1).float()

    def project(params):
        cam = verts @ _rot_y(params["yaw"]).T + params["t"]
        screen = torch.stack([FOCAL * cam[:, 0] / cam[:, 2] + (SIZE - 1) / 2,
                              FOCAL * cam[:, 1] / cam[:, 2] + (SIZE - 1) / 2, cam[:, 2]], 1)
        return screen, cam

    truth = {"yaw": torch.tensor(0.15), "t": torch.tensor([0.01, -0.005, 0.5])}
    sh = directional_sh((0.3, -0.4, -1.0), intensity=0.8, ambient=0.4)
    return verts, faces, albedo, sh, project, truth


def _target(faces, albedo, sh, project, truth):
    ref = PhotometricRefiner(faces, len(albedo), SIZE, SIZE)
    img, mask, _ = ref.render(project(truth), albedo=albedo, sh=sh)
    return img.detach().clamp(0, 1), mask


def test_photometric_refinement_recovers_pose():
    verts, faces, albedo, sh, project, truth = _scene()
    image, mask = _target(faces, albedo, sh, project, truth)
    assert mask.sum() > 2000
    start = {"yaw": truth["yaw"] + 0.06, "t": truth["t"] + torch.tensor([0.004, -0.003, 0.0])}
    ref = PhotometricRefiner(faces, len(verts), SIZE, SIZE)
    ref.albedo, ref.sh = albedo.clone(), sh.clone()
    out, hist = ref.refine(image, project, start, iters=60, lr={"yaw": 3e-3, "t": 3e-4}, fit_appearance=False)
    assert len(hist) == 60 and hist[-1] < 0.3 * hist[0]
    err0 = abs(float(start["yaw"] - truth["yaw"])), float((start["t"] - truth["t"])[:2].norm())
    err1 = abs(float(out["yaw"] - truth["yaw"])), float((out["t"] - truth["t"])[:2].norm())
    assert err1[0] < 0.3 * err0[0] and err1[1] < 0.3 * err0[1], (err0, err1)
    assert start["yaw"] == truth["yaw"] + 0.06  # the caller's params are not modified


def test_photometric_refinement_learns_appearance():
    verts, faces, albedo, sh, project, truth = _scene()
    image, _ = _target(faces, albedo, sh, project, truth)
    ref = PhotometricRefiner(faces, len(verts), SIZE, SIZE, loss="l2")
    before = ref.photometric_loss(*ref.render(project(truth))[::2], image)  # gray albedo, default light
    out, hist = ref.refine(image, project, truth, iters=40, lr={}, fit_appearance=True)
    assert ref.albedo_initialised and not ref.albedo.requires_grad
    assert hist[-1] < 0.5 * hist[0] and hist[0] < float(before)  # initialising the albedo helps at once
    torch.testing.assert_close(out["t"], truth["t"])  # nothing but the appearance moved


def test_vertex_weights_and_image_mask_restrict_the_error():
    verts, faces, albedo, sh, project, truth = _scene()
    image, _ = _target(faces, albedo, sh, project, truth)
    upper = (verts[:, 1] < 0).float()  # y down: the upper half of the sphere on the image
    ref = PhotometricRefiner(faces, len(verts), SIZE, SIZE, vertex_weights=upper)
    img, mask, weight = ref.render(project(truth))
    assert weight[mask].min() >= 0 and weight[mask].max() <= 1 + 1e-6
    rows = weight.sum(1)
    assert rows[: SIZE // 2 - 8].sum() > 0 and rows[SIZE // 2 + 8:].sum() == 0
    # an image mask that keeps only the lower half leaves no error to fit
    lower = torch.zeros(SIZE, SIZE)
    lower[SIZE // 2 + 8:] = 1
    start = {"yaw": truth["yaw"] + 0.06, "t": truth["t"]}
    out, hist = ref.refine(image, project, start, iters=3, lr={"yaw": 1e-2}, fit_appearance=False, image_mask=lower)
    assert hist == [0.0, 0.0, 0.0] and float(out["yaw"]) == pytest.approx(float(start["yaw"]))
    with pytest.raises(ValueError, match="expected a"):
        ref.refine(image[:10], project, truth, iters=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_photometric_refinement_on_cuda():
    verts, faces, albedo, sh, project, truth = _scene()
    image, _ = _target(faces, albedo, sh, project, truth)
    dev = torch.device("cuda")
    verts_d = verts.to(dev)

    def project_d(params):
        cam = verts_d @ _rot_y(params["yaw"]).T + params["t"]
        return torch.stack([FOCAL * cam[:, 0] / cam[:, 2] + (SIZE - 1) / 2,
                            FOCAL * cam[:, 1] / cam[:, 2] + (SIZE - 1) / 2, cam[:, 2]], 1), cam

    start = {"yaw": (truth["yaw"] + 0.06).to(dev), "t": (truth["t"] + torch.tensor([0.004, -0.003, 0.0])).to(dev)}
    ref = PhotometricRefiner(faces, len(verts), SIZE, SIZE, device=dev)
    ref.albedo, ref.sh = albedo.to(dev), sh.to(dev)
    out, hist = ref.refine(image.to(dev), project_d, start, iters=60, lr={"yaw": 3e-3, "t": 3e-4},
                           fit_appearance=False)
    assert out["t"].is_cuda and hist[-1] < 0.3 * hist[0]
    assert abs(float(out["yaw"].cpu() - truth["yaw"])) < 0.3 * 0.06
