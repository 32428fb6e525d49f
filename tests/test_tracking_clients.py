"""The programs that read track.py's files find the face where it is.

Synthetic frames whose true landmarks are known in OpenCV pixels (pixel centres at integers, the
convention of the detectors) are tracked; each client's whole pixel mapping, re-derived from its
source (not from our code), then projects the fitted model's landmarks from what it reads of our
files, and those must land within 0.1 px of the true pixels (the systematic part: the mean offset
of a frame; a half-pixel convention error moves it by 0.5 px on both axes). The per-point fit error
is bounded separately.

- INSTA (``scripts/transforms.py``) writes ``transform_matrix = inv([R | t])``, ``cx``, ``cy``,
  ``fl_x``, ``fl_y`` from ``opencv.K``, ``w``/``h`` from ``img_size`` (h, w); instant-ngp's
  ``pixel_to_ray`` sends pixel index p's ray through ``(p + 0.5 - c) / f`` (offset 0.5 at one
  sample per pixel; ``screen_center = c / resolution``), camera x right, y down, z forward.
- RGBAvatar (``dataset/flame_dataset.py`` + ``camera/camera.py``, fork ylark1203/gswork): camera
  ``diag(1, -1, -1)`` with frame 0's t, each frame's head placed by ``inv(extri) @ [R | t]``;
  ``IntrinsicsCamera``'s projection ``P[0,0] = 2 fx / w``, ``P[0,2] = 2 cx / w - 1``, w-divide by z;
  then 3DGS's ``ndc2Pix``: pixel = ((ndc + 1) W - 1) / 2 (pixel centres at integers); reads
  ``img_size`` as (width, height).
- FlashAvatar (``scene/__init__.py`` Scene_mica, ``scene/cameras.py``): ``FoVx = 2 atan(W / (2 fx))``
  from ``img_size`` read as (width, height), 3DGS's symmetric ``getProjectionMatrix``
  (``P[0,0] = 1 / tan(FoVx / 2)``, no principal point), world-to-view ``[R | t]``, then ``ndc2Pix``.
  It ignores cx, cy: right only with the principal point pinned at the centre (the default).
"""
from __future__ import annotations

import numpy as np
import pytest

from micalib.tracking.model import observations
from tests.synthetic_tracking import track_synthetic

N_FRAMES = 6
TOL_PX = 0.1
# noise-free landmarks: weigh them far above the priors and iterate to convergence, so that the fit
# itself reproduces the truth to a few hundredths of a pixel and only the pixel mapping is tested
FIT_OPTS = ("tracker.fit.sigma_px", "0.02", "tracker.fit.iters", "20", "tracker.fit.first_iters", "60",
            "tracker.fit.rel_tol", "1e-12")


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    seq, frames, model, _face, out = track_synthetic(tmp_path_factory.mktemp("clients"), real=False,
                                                     n_frames=N_FRAMES, noise_px=0.0, extra_opts=FIT_OPTS)
    return seq, frames, model, out


def _ply_vertices(path) -> np.ndarray:
    """Vertices of our binary little-endian PLY (x, y, z float32 first), read here by its header."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    n = int(next(line.split()[2] for line in header if line.startswith("element vertex")))
    props = []
    for line in header[header.index(next(h for h in header if h.startswith("element vertex"))) + 1:]:
        if not line.startswith("property"):
            break
        props.append(line.split()[1])
    assert all(p == "float" for p in props[:3])
    stride = 4 * len(props) if all(p == "float" for p in props) else None
    assert stride is not None
    return np.frombuffer(data[end:end + n * stride], "<f4").reshape(n, len(props))[:, :3].astype(np.float64)


def _truth_and_points(seq, model, out, k):
    """True landmark pixels (OpenCV) in the model's point order, and the fitted model's points (model space)."""
    obs, valid = observations(model, seq["clean_mediapipe"][k], None)
    verts = _ply_vertices(out / "mesh" / f"{k:05d}.ply")
    pts = model.full_points(verts, 0)
    return obs[valid], pts[valid]


def insta_pixels(frame, pts):
    h, w = (float(v) for v in frame["img_size"])
    k = frame["opencv"]["K"][0].astype(np.float64)
    cx, cy, fx, fy = k[0, 2], k[1, 2], k[0, 0], k[1, 1]
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = frame["opencv"]["R"][0], frame["opencv"]["t"][0]
    c2w = np.linalg.inv(w2c)  # transforms.json's transform_matrix
    # instant-ngp: pixel p's ray d = ((p + 0.5) / res - cx / res) * res / f: solve for p given a point
    cam = (np.linalg.inv(c2w) @ np.c_[pts, np.ones(len(pts))].T).T[:, :3]
    uv_res = np.stack([cam[:, 0] / cam[:, 2] * fx / w + cx / w, cam[:, 1] / cam[:, 2] * fy / h + cy / h], 1)
    return uv_res * np.array([w, h]) - 0.5  # the pixel index whose centre the ray passes: OpenCV units


def _ndc2pix(ndc, size):
    return ((ndc + 1.0) * size - 1.0) * 0.5


def rgbavatar_pixels(frame, frame0, pts):
    k = frame0["opencv"]["K"][0].astype(np.float64)
    width, height = (float(v) for v in frame0["img_size"])  # read as (width, height)
    extri = np.diag([1.0, -1.0, -1.0, 1.0])
    extri[:3, 3] = frame0["opencv"]["t"][0]
    head = np.eye(4)
    head[:3, :3], head[:3, 3] = frame["opencv"]["R"][0], frame["opencv"]["t"][0]
    head = np.linalg.inv(extri) @ head  # global rotation / translation of the FLAME head
    world = (head @ np.c_[pts, np.ones(len(pts))].T).T
    rot, pos = extri[:3, :3].T, -extri[:3, :3].T @ extri[:3, 3]  # IntrinsicsCamera: view-to-world
    w2v = np.eye(4)
    w2v[:3, :3], w2v[:3, 3] = rot.T, -rot.T @ pos
    n, f = 0.01, 100.0
    proj = np.zeros((4, 4))
    proj[0, 0], proj[1, 1] = 2 * k[0, 0] / width, 2 * k[1, 1] / height
    proj[0, 2], proj[1, 2] = -1 + 2 * k[0, 2] / width, -1 + 2 * k[1, 2] / height
    proj[3, 2], proj[2, 2], proj[2, 3] = 1.0, f / (f - n), -(f * n) / (f - n)
    clip = (proj @ w2v @ world.T).T
    ndc = clip[:, :2] / clip[:, 3:4]
    return np.stack([_ndc2pix(ndc[:, 0], width), _ndc2pix(ndc[:, 1], height)], 1)


def flashavatar_pixels(frame, frame0, pts):
    width, height = (float(v) for v in frame0["img_size"])  # orig_w, orig_h = payload['img_size']
    k = frame0["opencv"]["K"][0].astype(np.float64)
    fov_x, fov_y = 2 * np.arctan(width / (2 * k[0, 0])), 2 * np.arctan(height / (2 * k[1, 1]))
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = frame["opencv"]["R"][0], frame["opencv"]["t"][0]
    n, f = 0.01, 100.0
    proj = np.zeros((4, 4))
    proj[0, 0], proj[1, 1] = 1 / np.tan(fov_x / 2), 1 / np.tan(fov_y / 2)
    proj[3, 2], proj[2, 2], proj[2, 3] = 1.0, f / (f - n), -(f * n) / (f - n)
    clip = (proj @ w2c @ np.c_[pts, np.ones(len(pts))].T).T
    ndc = clip[:, :2] / clip[:, 3:4]
    return np.stack([_ndc2pix(ndc[:, 0], width), _ndc2pix(ndc[:, 1], height)], 1)


CLIENTS = {
    "INSTA": lambda fr, fr0, p: insta_pixels(fr, p),
    "RGBAvatar": rgbavatar_pixels,
    "FlashAvatar": flashavatar_pixels,
}


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_clients_project_the_model_landmarks_onto_the_true_pixels(tracked, client):
    seq, frames, model, out = tracked
    for k in range(N_FRAMES):
        truth, pts = _truth_and_points(seq, model, out, k)
        px = CLIENTS[client](frames[k], frames[0], pts)
        err = px - truth
        assert np.abs(err.mean(0)).max() < TOL_PX, (client, k, err.mean(0))
        assert np.sqrt((err ** 2).sum(1).mean()) < 0.5, (client, k)  # the fit itself (noise-free landmarks)


def test_the_written_k_is_half_a_pixel_off_opencvs(tracked):
    """The tolerance can fail: the true K in OpenCV's convention, given to the INSTA mapping as if it
    were the file's, misses the true pixels by half a pixel on both axes."""
    seq, frames, model, out = tracked
    truth, pts = _truth_and_points(seq, model, out, 0)
    fr = {**frames[0], "opencv": {**frames[0]["opencv"], "K": seq["K"][None].astype(np.float32)}}
    err = (insta_pixels(fr, pts) - truth).mean(0)
    assert np.allclose(err, [-0.5, -0.5], atol=TOL_PX)


def test_principal_point_is_pinned_at_the_crop_centre_by_default(tracked):
    """FlashAvatar's symmetric frustum puts the principal point at W / 2 in the renderers' convention."""
    for fr in tracked[1]:
        h, w = (int(v) for v in fr["img_size"])
        assert fr["opencv"]["K"][0, 0, 2] == w / 2 and fr["opencv"]["K"][0, 1, 2] == h / 2
        assert np.all(fr["camera"]["pp"] == 0)  # PyTorch3D's centred camera, as the original's prior pulls it


def test_principal_point_mode_is_checked():
    from micalib.tracking.options import FitSettings
    from utils.errors import MICAError

    assert FitSettings(principal_point="Fitted").principal_point == "fitted"
    assert FitSettings().principal_point == "centre"
    with pytest.raises(MICAError, match="tracker.fit.principal_point"):
        FitSettings(principal_point="middle")
