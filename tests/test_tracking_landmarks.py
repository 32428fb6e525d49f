"""micalib.tracking.landmarks: the landmark file schema and its one-line errors; the 68-point
detector's pre/post-processing with small synthetic ONNX models of 1k3d68's interface; MediaPipe on
the first frames of ../shared/data/tracker/justin.mp4 (skipped when absent) checked against an
independent face detector (our MTCNN), shift equivariance, crop-vs-frame detection, quiet start."""
from __future__ import annotations

import numpy as np
import pytest

from micalib.tracking.crop import box_from_landmarks, crop_matrix
from micalib.tracking.landmarks import (
    MEDIAPIPE_IBUG68,
    Ibug68Detector,
    MediaPipeLandmarker,
    detect_in_crop,
    face_box_from_points,
    load_landmarks_npz,
    mediapipe_available,
    save_landmarks_npz,
)
from tests.conftest import SHARED
from utils.errors import MICAError

# ---------------------------------------------------------------------------- landmark files


def test_npz_round_trip_and_zero_rows_are_missing(tmp_path):
    rng = np.random.default_rng(0)
    mp = rng.uniform(0, 500, (5, 478, 2))
    mp[2] = np.nan
    ib = rng.uniform(0, 500, (5, 68, 2)).astype(np.float32)
    save_landmarks_npz(tmp_path / "landmarks.npz", mediapipe=mp, ibug68=ib)
    with np.load(tmp_path / "landmarks.npz", allow_pickle=False) as z:  # plain np.load reads it
        assert sorted(z.files) == ["ibug68", "mediapipe"] and z["mediapipe"].dtype == np.float32
    got = load_landmarks_npz(tmp_path / "landmarks.npz", 5)
    np.testing.assert_allclose(got["mediapipe"], mp.astype(np.float32))
    np.testing.assert_array_equal(got["ibug68"], ib)
    # the original tracker stores a missing detection as zeros: read as NaN
    only68 = ib.copy()
    only68[1] = 0
    np.savez(tmp_path / "user.npz", ibug68=only68)
    got = load_landmarks_npz(tmp_path / "user.npz", 5)
    assert list(got) == ["ibug68"] and np.isnan(got["ibug68"][1]).all() and np.isfinite(got["ibug68"][0]).all()


@pytest.mark.parametrize("arrays, n, pattern", [
    ({"points": np.zeros((3, 478, 2))}, 3, "none of the arrays 'mediapipe' or 'ibug68' \\(found: points\\)"),
    ({"mediapipe": np.zeros((3, 468, 2))}, 3, "shape \\(3, 468, 2\\) but must be \\(T,478,2\\)"),
    ({"ibug68": np.zeros((3, 68, 3))}, 3, "must be \\(T,68,2\\)"),
    ({"mediapipe": np.ones((4, 478, 2))}, 3, "4 rows but the input has 3 frames.*before --fps"),
    ({"ibug68": np.full((3, 68, 2), "a")}, 3, "not numbers"),
    ({"ibug68": np.ones((3, 68, 2)), "mediapipe": np.ones((2, 478, 2))}, None, "different numbers of rows"),
])
def test_npz_schema_errors_name_the_file_in_one_line(tmp_path, arrays, n, pattern):
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    with pytest.raises(MICAError, match=pattern) as e:
        load_landmarks_npz(path, n)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_npz_unreadable_files(tmp_path):
    with pytest.raises(MICAError, match="does not exist.*--landmarks"):
        load_landmarks_npz(tmp_path / "nope.npz", 3)
    np.save(tmp_path / "single.npy", np.zeros((3, 478, 2)))
    with pytest.raises(MICAError, match="single .npy array"):
        load_landmarks_npz(tmp_path / "single.npy", 3)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(MICAError, match="junk.npz is not a readable NumPy .npz"):
        load_landmarks_npz(tmp_path / "junk.npz", 3)
    np.savez(tmp_path / "pickled.npz", mediapipe=np.array([{"a": 1}], dtype=object))
    with pytest.raises(MICAError, match="pickled.npz holds an unreadable or pickled array"):
        load_landmarks_npz(tmp_path / "pickled.npz", 1)


# ---------------------------------------------------------------------------- 68-point detector


def _write_1k3d68_like(path, mxnet_style: bool, const: np.ndarray) -> None:
    """An ONNX model with 1k3d68's interface: input (1,3,192,192), output (1,3309) = 1103 xyz
    points. The points are ``const`` except the last one, which is the mean of each input channel,
    so the test sees the normalisation. ``mxnet_style``: the graph starts with Sub and Mul nodes
    (identity here), which tells insightface the model normalises itself."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    src = "data"
    if mxnet_style:
        inits += [numpy_helper.from_array(np.zeros(1, np.float32), "zero"), numpy_helper.from_array(np.ones(1, np.float32), "one")]
        nodes += [helper.make_node("Sub", ["data", "zero"], ["sub_out"], name="Sub_0"),
                  helper.make_node("Mul", ["sub_out", "one"], ["mul_out"], name="Mul_1")]
        src = "mul_out"
    inits.append(numpy_helper.from_array(const[:-1].reshape(1, -1).astype(np.float32), "prefix"))
    nodes += [helper.make_node("ReduceMean", [src], ["means"], axes=[2, 3], keepdims=0, name="mean"),
              helper.make_node("Concat", ["prefix", "means"], ["fc1"], axis=1, name="concat")]
    graph = helper.make_graph(nodes, "lmk", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3309])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.parametrize("mxnet_style", [False, True])
def test_ibug68_pre_and_post_processing(tmp_path, mxnet_style):
    rng = np.random.default_rng(3)
    const = rng.uniform(-0.8, 0.8, (1103, 3))
    path = tmp_path / "1k3d68.onnx"
    _write_1k3d68_like(path, mxnet_style, const)
    det = Ibug68Detector(path)
    img = np.zeros((300, 400, 3), np.uint8)
    img[:] = (200, 50, 10)  # R, G, B
    box = (150.0, 100.0, 230.0, 160.0)  # w 80, h 60 -> scale 192 / (1.5 * 80) = 1.6, centre (190, 130)
    pts = det.detect(img, box)
    assert pts.shape == (68, 2) and pts.dtype == np.float32
    # points 0..66 are const[-68:-1]: network pixel (v + 1) * 96, image = centre + (pixel - 96) / 1.6
    expected = np.array([190.0, 130.0]) + ((const[-68:-1, :2] + 1) * 96 - 96) / 1.6
    np.testing.assert_allclose(pts[:67], expected, rtol=0, atol=1e-3)
    # the last point is (mean R, mean G) of the normalised RGB input (the crop is uniform: the box
    # lies inside the image, even enlarged 1.5x)
    mean, std = (0.0, 1.0) if mxnet_style else (127.5, 128.0)
    v = (np.array([200.0, 50.0]) - mean) / std
    np.testing.assert_allclose(pts[67], np.array([190.0, 130.0]) + ((v + 1) * 96 - 96) / 1.6, rtol=1e-5, atol=1e-3)
    assert np.isnan(det.detect(img, None)).all()


def test_face_box_from_points():
    pts = np.array([[10.0, 20.0], [30.0, 5.0], [np.nan, np.nan]])
    assert face_box_from_points(pts) == (10.0, 5.0, 30.0, 20.0)
    assert face_box_from_points(np.full((3, 2), np.nan)) is None


# ---------------------------------------------------------------------------- MediaPipe on a real clip

JUSTIN = SHARED / "data" / "tracker" / "justin.mp4"


@pytest.fixture(scope="module")
def justin_frames():
    if not JUSTIN.is_file():
        pytest.skip(f"{JUSTIN} not present (../shared is only available in the development sandbox)")
    if not mediapipe_available():
        pytest.skip("mediapipe is not installed (install.sh installs it)")
    from micalib.tracking.frames import open_frames

    frames = []
    for _, _, rgb in open_frames(JUSTIN):
        frames.append(rgb)
        if len(frames) == 8:
            break
    return frames


@pytest.fixture(scope="module")
def first_detection(justin_frames):
    with MediaPipeLandmarker(video_mode=False) as lm:
        return lm.detect(justin_frames[0])


@pytest.mark.shared_data
def test_mediapipe_points_on_the_face_found_by_mtcnn(justin_frames, first_detection):
    from models.detectors import MTCNN, pick_centre_face

    p = first_detection
    assert p.shape == (478, 2) and p.dtype == np.float32 and np.isfinite(p).all()
    face = pick_centre_face(MTCNN().detect(justin_frames[0]), justin_frames[0].shape)
    assert face is not None
    x1, y1, x2, y2 = face.box
    w = x2 - x1
    # the mesh spans the face: its bounding box holds MTCNN's box centre, and nearly all of it lies
    # within MTCNN's box grown 1.5x (the mesh reaches the forehead, above MTCNN's box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    assert p[:, 0].min() < cx < p[:, 0].max() and p[:, 1].min() < cy < p[:, 1].max()
    inside = (np.abs(p[:, 0] - cx) < 0.75 * w) & (np.abs(p[:, 1] - cy) < 0.75 * (y2 - y1))
    assert inside.mean() > 0.95
    # MTCNN's 5 points (image-left eye, image-right eye, nose, mouth corners) against the mesh
    mesh5 = np.stack([p[[33, 133]].mean(0), p[[362, 263]].mean(0), p[4], p[61], p[291]])
    err = np.linalg.norm(mesh5 - face.kps, axis=1)
    assert err.max() < 0.08 * w, err


@pytest.mark.shared_data
def test_mediapipe_ibug68_table_is_anatomical(first_detection):
    q = first_detection[MEDIAPIPE_IBUG68].astype(np.float64)
    jaw, brows, nose, eyes, mouth = q[:17], q[17:27], q[27:36], q[36:48], q[48:68]
    # the jaw runs from the image's left to its right (its ends near the ears are almost vertical)
    assert np.all(np.diff(jaw[2:15, 0]) > 0) and jaw[0, 0] < jaw[8, 0] < jaw[16, 0]
    assert jaw[[0, 16], 1].max() < jaw[8, 1]
    assert np.argmax(jaw[:, 1]) in (7, 8, 9) and jaw[8, 1] > mouth[:, 1].max()  # the chin is lowest
    assert brows[:, 1].max() < eyes[:, 1].min()  # brows above the eyes
    assert eyes[:6, 0].max() < nose[:, 0].mean() < eyes[6:, 0].min()  # one eye on each side of the nose
    assert np.all(np.diff(nose[:4, 1]) > 0)  # the bridge runs down to the tip
    assert eyes[0, 0] < eyes[3, 0] < eyes[6, 0] < eyes[9, 0]  # corners 36 < 39 < 42 < 45
    assert mouth[0, 0] < mouth[3, 0] < mouth[6, 0] and mouth[3, 1] < mouth[9, 1]  # corners, upper/lower lip
    assert nose[4, 1] < mouth[:, 1].min()  # the nose tip above the mouth
    box = box_from_landmarks(q)
    assert box[1] - box[0] == box[3] - box[2]


@pytest.mark.shared_data
def test_mediapipe_shift_equivariance(justin_frames):
    """Detecting on a window shifted by (dx, dy) and adding the shift back gives the same points:
    pixel units, axes and signs are right (the network itself moves points by up to ~0.6 px)."""
    img = justin_frames[0]
    a0, b0 = (150, 700), (163, 724)  # (y, x) origins of two 700x700 windows: shift (24, 13)
    with MediaPipeLandmarker(video_mode=False) as lm:
        pa = lm.detect(np.ascontiguousarray(img[a0[0]:a0[0] + 700, a0[1]:a0[1] + 700])) + (a0[1], a0[0])
        pb = lm.detect(np.ascontiguousarray(img[b0[0]:b0[0] + 700, b0[1]:b0[1] + 700])) + (b0[1], b0[0])
    d = pb - pa
    assert np.abs(d.mean(axis=0)).max() < 1.0, d.mean(axis=0)
    assert np.median(np.linalg.norm(d, axis=1)) < 2.0


@pytest.mark.shared_data
def test_detect_in_crop_matches_the_full_frame(justin_frames, first_detection):
    box = box_from_landmarks(first_detection[MEDIAPIPE_IBUG68])
    M = crop_matrix(box, 512)
    with MediaPipeLandmarker(video_mode=False) as lm:
        q = detect_in_crop(lm, justin_frames[0], M, (512, 512))
    d = np.linalg.norm(q - first_detection, axis=1)
    scale = (box[1] - box[0]) / 512  # input px per crop px
    assert np.median(d) < 2.0 * scale, np.median(d)
    assert np.abs((q - first_detection).mean(axis=0)).max() < 1.0 * scale


@pytest.mark.shared_data
def test_mediapipe_video_mode_is_quiet_and_follows_the_face(justin_frames, capfd):
    capfd.readouterr()
    with MediaPipeLandmarker(video_mode=True) as lm:
        pts = [lm.detect(f) for f in justin_frames]
    err = capfd.readouterr().err
    assert "XNNPACK" not in err and "inference_feedback_manager" not in err, err
    pts = np.stack(pts)
    assert np.isfinite(pts).all()
    step = np.linalg.norm(np.diff(pts, axis=0), axis=2).mean(axis=1)
    assert step.max() < 10.0, step  # 30 fps: the face moves a few pixels per frame
    with MediaPipeLandmarker(video_mode=False) as lm:
        assert np.isnan(lm.detect(np.zeros((256, 256, 3), np.uint8))).all()  # no face: NaN


def _mirror_pairs() -> np.ndarray:
    """Pairs (i, j) of MediaPipe points that are mirror images of each other: the 105 points of the
    original tracker's MediaPipe embedding placed on FLAME's (symmetric) template and matched with
    their reflections, plus the two irises."""
    import trimesh
    from scipy.spatial import cKDTree

    template = SHARED / "data" / "flame_public" / "head_template.obj"
    embedding = SHARED / "data" / "tracker" / "mediapipe_landmark_embedding.npz"
    if not (template.is_file() and embedding.is_file()):
        pytest.skip("FLAME template or MediaPipe embedding not present in ../shared")
    mesh = trimesh.load(template, process=False)
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.faces)
    with np.load(embedding) as e:
        idx, tri, bary = e["landmark_indices"], e["lmk_face_idx"], e["lmk_b_coords"]
    pts = np.einsum("nk,nkj->nj", bary, v[f[tri]])
    dist, j = cKDTree(pts).query(pts * [-1.0, 1.0, 1.0])
    pairs = [(int(idx[a]), int(idx[j[a]])) for a in range(len(idx)) if dist[a] < 2.5e-3]
    pairs += [(468 + k, 473 + k) for k in range(5)] + [(473 + k, 468 + k) for k in range(5)]
    assert len(pairs) > 80
    return np.array(pairs)


@pytest.mark.shared_data
def test_mediapipe_points_are_in_opencv_pixel_centres(justin_frames):
    """Mirror test: detect on an image and on its left-right mirror, mirror the second back with
    OpenCV's x -> W - 1 - x and compare mirror-pair points. The difference has a part proportional
    to the face size (the network's own asymmetry) and a constant part that is 0 in the right
    convention (1 px off if 0.5 were subtracted, as TRACKER_FACTS says, -1 if 0.5 were added); fit
    over 4 image scales, the constant must be near 0."""
    import cv2

    pairs = _mirror_pairs()
    scales, offsets = (0.5, 0.75, 1.0, 1.5), []
    with MediaPipeLandmarker(video_mode=False) as lm:
        for s in scales:
            per_image = []
            for frame in justin_frames[::2]:
                for dx in (0, 5):
                    img = np.ascontiguousarray(frame[200:700, 820 + dx:1320 + dx])
                    if s != 1.0:
                        img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
                    w = img.shape[1]
                    a = lm.detect(img).astype(np.float64)
                    b = lm.detect(np.ascontiguousarray(img[:, ::-1])).astype(np.float64)
                    per_image.append(np.mean((w - 1 - b[pairs[:, 1], 0]) - a[pairs[:, 0], 0]))
            offsets.append(per_image)
    offsets = np.array(offsets)  # (scale, image)
    design = np.stack([np.ones(len(scales)), np.array(scales)], axis=1)
    (constant, slope), *_ = np.linalg.lstsq(design, offsets.mean(axis=1), rcond=None)
    assert abs(constant) < 0.45, (constant, slope, offsets.mean(axis=1))
