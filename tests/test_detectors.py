"""models/detectors/: SCRFD decoding (tiny hand-made ONNX graph), NMS, MTCNN on real photos,
the factory and the centre-face choice."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from loguru import logger

import models.detectors.nms as nms_module
from models.detectors import MTCNN, SCRFD, SCRFD_FILE, Face, create_detector, pick_centre_face
from models.detectors.mtcnn import PNet, shrink_area
from models.detectors.nms import nms
from tests.fakes import DET, make_scrfd_onnx
from tests.photos import portrait_variants
from utils.alignment import ARCFACE_TEMPLATE, estimate_norm
from utils.errors import MICAError
from utils.image_io import list_images, read_image


@pytest.mark.parametrize("batched", [False, True])
def test_scrfd_decoding_matches_hand_computed(tmp_path: Path, batched: bool) -> None:
    make_scrfd_onnx(tmp_path / "tiny.onnx", batched)
    det = SCRFD(tmp_path / "tiny.onnx", det_size=(DET, DET), threshold=0.5)
    image = np.zeros((64, 128, 3), np.uint8)  # w=128, h=64 -> resized to 64x32, det_scale 0.5
    faces = det.detect(image)
    assert len(faces) == 2
    a, c = faces
    assert a.score == pytest.approx(0.9) and c.score == pytest.approx(0.7)
    # A: centre (24,16), distances (1,2,3,4)*8 -> (16,0,48,48) in input pixels -> /0.5
    np.testing.assert_allclose(a.box, [32, 0, 96, 96], atol=1e-4)
    # keypoints: centre + d*8 -> (28,18),(32,18),(30,24),(28,32),(32,32) -> /0.5
    np.testing.assert_allclose(a.kps, [[56, 36], [64, 36], [60, 48], [56, 64], [64, 64]], atol=1e-4)
    # C: centre (32,32) +- 0.25*32 -> (24,24,40,40) -> /0.5; zero keypoint distances -> centre
    np.testing.assert_allclose(c.box, [48, 48, 80, 80], atol=1e-4)
    np.testing.assert_allclose(c.kps, np.full((5, 2), 64.0), atol=1e-4)
    assert a.box.dtype == np.float32 and a.kps.shape == (5, 2)


def test_scrfd_fixed_input_size_wins_over_det_size(tmp_path: Path) -> None:
    make_scrfd_onnx(tmp_path / "fixed.onnx", fixed=True)
    det = SCRFD(tmp_path / "fixed.onnx", det_size=(224, 224))
    assert det.input_size == (DET, DET)
    np.testing.assert_allclose(det.detect(np.zeros((64, 128, 3), np.uint8))[0].box, [32, 0, 96, 96], atol=1e-4)


def test_scrfd_preprocess_letterbox_and_normalisation(tmp_path: Path) -> None:
    make_scrfd_onnx(tmp_path / "tiny.onnx")
    det = SCRFD(tmp_path / "tiny.onnx", det_size=(DET, DET))
    img = np.zeros((128, 32, 3), np.uint8)  # tall: h/w = 4 -> new_h = 64, new_w = int(64/4) = 16
    img[..., 0] = 255
    img[..., 2] = 64
    blob, scale = det.preprocess(img)
    assert blob.shape == (1, 3, DET, DET) and blob.dtype == np.float32
    assert scale == pytest.approx(0.5)
    # RGB order kept, (x - 127.5) / 128
    np.testing.assert_allclose(blob[0, :, :, :16].reshape(3, -1).mean(1), [(255 - 127.5) / 128, -127.5 / 128,
                                                                          (64 - 127.5) / 128], atol=1e-6)
    np.testing.assert_allclose(blob[0, :, :, 16:], -127.5 / 128)  # black padding on the right


def test_anchor_centres_layout(tmp_path: Path) -> None:
    make_scrfd_onnx(tmp_path / "tiny.onnx")
    det = SCRFD(tmp_path / "tiny.onnx", det_size=(DET, DET))
    c = det.anchor_centres(16)  # 4x4 grid, 2 anchors
    assert c.shape == (32, 2)
    np.testing.assert_array_equal(c[0], c[1])
    np.testing.assert_array_equal(c[2], [16, 0])  # second cell of the first row
    np.testing.assert_array_equal(c[8], [0, 16])  # first cell of the second row
    np.testing.assert_array_equal(c[31], [48, 48])


def test_nms_hand_computed() -> None:
    boxes = np.array([[0, 0, 9, 9], [1, 0, 10, 9], [5, 5, 14, 14], [100, 100, 101, 101]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    # IoU(0,1) = 90/110 = 0.82; IoU(0,2) = 25/175 = 0.14; box 3 isolated
    np.testing.assert_array_equal(nms(boxes, scores, 0.4), [0, 2, 3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.9), [0, 1, 2, 3])
    # "min": overlap(0,2) = 25/100 = 0.25 > 0.2 -> dropped
    np.testing.assert_array_equal(nms(boxes, scores, 0.2, mode="min"), [0, 3])
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).size == 0


def _greedy_nms(boxes, scores, threshold, mode):
    """Oracle: the textbook greedy loop, one pair at a time in plain Python."""
    def overlap(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
        area_a, area_b = (a[2] - a[0] + 1) * (a[3] - a[1] + 1), (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
        return w * h / (min(area_a, area_b) if mode == "min" else area_a + area_b - w * h)
    order = sorted(range(len(scores)), key=lambda k: -scores[k])  # stable: ties in input order
    keep = []
    for k in order:
        if all(overlap(boxes[k], boxes[j]) <= threshold for j in keep):
            keep.append(k)
    return keep


@pytest.mark.parametrize("matrix_max", [nms_module.NMS_MATRIX_MAX, 0])  # both code paths
def test_nms_matches_a_plain_greedy_loop(monkeypatch, matrix_max) -> None:
    monkeypatch.setattr(nms_module, "NMS_MATRIX_MAX", matrix_max)
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(0, 40))
        xy, wh = rng.uniform(0, 60, (n, 2)), rng.uniform(1, 30, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        scores = rng.integers(0, 6, n).astype(float)  # many ties
        for mode in ("union", "min"):
            for threshold in (0.3, 0.7):
                got = nms(boxes, scores, threshold, mode)
                assert got.dtype == np.int64
                assert got.tolist() == _greedy_nms(boxes.tolist(), scores.tolist(), threshold, mode), (trial, mode)


@pytest.mark.parametrize("shape", [(3000, 2009), (2011, 5003), (1569, 1200), (300, 200)])
def test_shrink_area_size_mapping_and_pixels(shape) -> None:
    """Longer side = max_side; a bright block maps back to where it was; pixels agree with one
    OpenCV area resampling (exactly below 8x the target size)."""
    h, w = shape
    rng = np.random.default_rng(1)
    texture = rng.integers(0, 200, (h // 40 + 2, w // 40 + 2, 3), dtype=np.uint8)  # darker than the block
    smooth = cv2.resize(texture, (w, h), interpolation=cv2.INTER_CUBIC)
    x0, y0, x1, y1 = int(0.61 * w), int(0.23 * h), int(0.61 * w) + w // 8, int(0.23 * h) + h // 8
    smooth[y0:y1, x0:x1] = 255
    small, sxy = shrink_area(smooth, 320)
    assert max(small.shape[:2]) == min(320, max(h, w))
    nh, nw = small.shape[:2]
    direct = cv2.resize(smooth, (nw, nh), interpolation=cv2.INTER_AREA)
    diff = np.abs(small.astype(np.float64) - direct)
    if max(h, w) < 8 * 320:
        assert diff.max() == 0
    else:
        assert diff.mean() < 1.5  # grey levels, out of 255: the same picture
    # the block's edges, found in the small image, map back onto the original within one small pixel
    ys, xs = np.nonzero(small.min(axis=2) >= 250)
    edges = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64) / np.tile(sxy, 2)
    np.testing.assert_allclose(edges, [x0, y0, x1, y1], atol=1.5 / sxy.min())


def test_pick_centre_face() -> None:
    kps = np.zeros((5, 2), np.float32)
    faces = [Face(np.array([0, 0, 20, 20], np.float32), kps, 0.99),
             Face(np.array([90, 40, 110, 60], np.float32), kps, 0.6),  # centre (100, 50)
             Face(np.array([150, 80, 190, 100], np.float32), kps, 0.9)]
    assert pick_centre_face(faces, (100, 200, 3)) is faces[1]  # image centre (x=100, y=50)
    assert pick_centre_face([], (100, 200, 3)) is None


def test_create_detector(tmp_path: Path) -> None:
    with pytest.raises(MICAError, match=str(tmp_path / "none" / SCRFD_FILE)):
        create_detector("scrfd", antelopev2_dir=tmp_path / "none")
    with pytest.raises(MICAError, match="unknown detector"):
        create_detector("yolo", antelopev2_dir=tmp_path)
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="INFO")
    try:
        det = create_detector("auto", antelopev2_dir=tmp_path / "none")
    finally:
        logger.remove(sink)
    assert isinstance(det, MTCNN)
    assert len(messages) == 1 and "antelopev2" in messages[0] and "install.sh --download" in messages[0]
    (tmp_path / "ante").mkdir()
    make_scrfd_onnx(tmp_path / "ante" / SCRFD_FILE)
    assert isinstance(create_detector("auto", antelopev2_dir=tmp_path / "ante", det_size=(DET, DET)), SCRFD)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / SCRFD_FILE).write_bytes(b"not onnx")
    with pytest.raises(MICAError, match="cannot be loaded"):
        create_detector("scrfd", antelopev2_dir=tmp_path / "bad")


# ------------------------------------------------------------------------------------------------
# MTCNN with the real weights on real photos
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mtcnn() -> MTCNN:
    return MTCNN()


def _plausible(face: Face) -> None:
    le, re, nose, lm, rm = face.kps
    x1, y1, x2, y2 = face.box
    assert le[0] < re[0] and lm[0] < rm[0], face.kps
    assert max(le[1], re[1]) < nose[1] < min(lm[1], rm[1]), face.kps
    assert np.all(face.kps[:, 0] > x1) and np.all(face.kps[:, 0] < x2), (face.kps, face.box)
    assert np.all(face.kps[:, 1] > y1) and np.all(face.kps[:, 1] < y2), (face.kps, face.box)
    # eyes are a sensible fraction of the box width apart
    assert 0.2 < (re[0] - le[0]) / (x2 - x1) < 0.7


@pytest.mark.parametrize("photos, max_err", [("face_photos_dir", 5.0),  # the portrait's head is turned a little
                                             pytest.param("faces_dir", 4.0, marks=pytest.mark.shared_data)])
def test_mtcnn_finds_faces_with_plausible_keypoints(photos: str, max_err: float, mtcnn: MTCNN, request) -> None:
    """On the scikit-image portrait's variants and, with ../shared, on real photos of other people."""
    paths = list_images(request.getfixturevalue(photos))
    assert paths
    for path in paths:
        img = read_image(path)
        faces = mtcnn.detect(img)
        assert faces, f"no face found in {path.name}"
        assert [f.score for f in faces] == sorted((f.score for f in faces), reverse=True)
        face = pick_centre_face(faces, img.shape)
        assert face.score > 0.95, path.name
        _plausible(face)
        # the 5 points fit the ArcFace template by a similarity within a few pixels (112 crop;
        # the eyes are 35 px apart there); a turned head is the main residual
        m = estimate_norm(face.kps, 112)
        mapped = face.kps @ m[:, :2].T + m[:, 2]
        err = np.linalg.norm(mapped - ARCFACE_TEMPLATE, axis=1).mean()
        assert err < max_err, (path.name, err)


def test_mtcnn_mirror_and_scale_consistency(face_photos_dir: Path, mtcnn: MTCNN) -> None:
    img = read_image(sorted(list_images(face_photos_dir))[0])
    f = pick_centre_face(mtcnn.detect(img), img.shape)
    eye_dist = np.linalg.norm(f.kps[1] - f.kps[0])
    # mirrored photo: the image-left eye of the mirror is the mirrored image-right eye
    w = img.shape[1]
    g = pick_centre_face(mtcnn.detect(np.ascontiguousarray(img[:, ::-1])), img.shape)
    mirrored = np.stack([w - 1 - g.kps[:, 0], g.kps[:, 1]], 1)[[1, 0, 2, 4, 3]]
    assert np.abs(mirrored - f.kps).max() < 0.1 * eye_dist, (mirrored, f.kps)
    # same photo padded into a larger canvas: keypoints shift by the offset
    canvas = np.zeros((img.shape[0] + 60, img.shape[1] + 100, 3), np.uint8)
    canvas[60:, 100:] = img
    h = max(mtcnn.detect(canvas), key=lambda x: x.score)
    assert np.abs(h.kps - (f.kps + [100, 60])).max() < 0.1 * eye_dist


def test_mtcnn_blank_image_has_no_face(mtcnn: MTCNN) -> None:
    assert mtcnn.detect(np.full((200, 300, 3), 128, np.uint8)) == []
    with pytest.raises(ValueError):
        mtcnn.detect(np.zeros((50, 50), np.uint8))


def test_mtcnn_bad_weights(tmp_path: Path) -> None:
    for n in ("pnet", "rnet", "onet"):
        (tmp_path / f"{n}.pt").write_bytes(b"garbage")
    with pytest.raises(MICAError, match="pnet.pt"):
        MTCNN(weights_dir=tmp_path)


def test_mtcnn_shrunk_search_maps_back_to_the_photo(face_photos_dir: Path) -> None:
    """A photo larger than ``max_side`` is searched on a shrunk copy: the face found in a 3x
    enlarged photo lands at 3x the coordinates found at the original size (no shrinking)."""
    img = read_image(sorted(list_images(face_photos_dir))[0])
    det = MTCNN(max_side=0)  # search every photo at its own size
    f = pick_centre_face(det.detect(img), img.shape)
    big = cv2.resize(img, (img.shape[1] * 3, img.shape[0] * 3), interpolation=cv2.INTER_CUBIC)
    shrunk = MTCNN(max_side=max(img.shape[:2]))  # searches `big` at the original size
    g = pick_centre_face(shrunk.detect(big), big.shape)
    eye_dist = np.linalg.norm(f.kps[1] - f.kps[0])
    assert np.abs(g.kps / 3 - f.kps).max() < 0.1 * eye_dist, (g.kps / 3, f.kps)
    assert np.abs(g.box / 3 - f.box).max() < 0.15 * (f.box[2] - f.box[0])


# ------------------------------------------------------------------------------------------------
# MTCNN over a batch of photos (one network call per pyramid scale and stage for all of them)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h, w", [(31, 40), (32, 41), (57, 57), (64, 23)])
def test_pnet_on_a_canvas_equals_the_image_alone(h: int, w: int) -> None:
    """P-Net outputs of an image placed at the top-left of a larger canvas, within the image's own
    output size, equal the image alone (odd and even sizes: the ceil-mode pooling must not see the
    canvas). Without the mask the last row/column would differ."""
    torch.manual_seed(0)
    net = PNet().eval()
    img = torch.rand(1, 3, h, w) * 2 - 1
    canvas = torch.full((2, 3, 70, 70), 5.0)  # bright canvas: a leak would change the maxima
    canvas[0, :, :h, :w] = img[0]
    with torch.no_grad():
        reg1, prob1 = net(img)
        reg2, prob2 = net(canvas, [(h, w), (70, 70)])
    oh, ow = PNet.output_size(h, w)
    assert (oh, ow) == tuple(prob1.shape[2:])
    torch.testing.assert_close(prob2[0, :, :oh, :ow], prob1[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(reg2[0, :, :oh, :ow], reg1[0], rtol=0, atol=1e-6)


def test_mtcnn_batch_equals_one_photo_at_a_time(mtcnn: MTCNN) -> None:
    """detect_batch finds the same faces as detect() photo by photo (boxes and keypoints within
    1e-3 px, scores within 1e-5: only the batched convolutions' rounding differs)."""
    photos = portrait_variants()
    alone = [mtcnn.detect(p) for p in photos]
    batch = mtcnn.detect_batch(photos)
    assert [len(f) for f in alone] == [len(f) for f in batch]
    assert sum(len(f) for f in alone) >= 5 and alone[-1] == []
    for fa, fb in zip(alone, batch, strict=True):
        for a, b in zip(fa, fb, strict=True):
            np.testing.assert_allclose(b.kps, a.kps, rtol=0, atol=1e-3)
            np.testing.assert_allclose(b.box, a.box, rtol=0, atol=1e-3)
            assert abs(a.score - b.score) < 1e-5
    assert mtcnn.detect_batch([]) == []


# ------------------------------------------------------------------------------------------------
# MTCNN's min_face: the small-face pyramid levels skipped, the portrait's faces as before
# ------------------------------------------------------------------------------------------------
class _RecordingPNet:
    """Stands in for ``MTCNN.pnet``: records every input level, runs the real P-Net."""

    def __init__(self, pnet: PNet) -> None:
        self.pnet, self.inputs = pnet, []

    def __call__(self, x, sizes=None):
        self.inputs.append(x.clone())
        return self.pnet(x, sizes)


def test_min_face_skips_the_finest_levels_pixel_for_pixel() -> None:
    """On a 320 px photo with min_face 0.15 the pyramid loses its finest level only: MTCNN's scales
    are 0.6 x 0.709^k (windows 20 / 0.709^k px = 20, 28.2, 39.8, ...) and a level is searched when its
    window is at least 0.709^2 x 0.15 x 320 = 24.1 px; the levels searched are P-Net inputs identical
    to the full search's levels 1, 2, ..."""
    photo = cv2.resize(portrait_variants()[0], (320, 240), interpolation=cv2.INTER_AREA)
    levels = {}
    for min_face in (0.0, 0.15, 0.3):
        det = MTCNN(min_face=min_face)
        det.pnet = _RecordingPNet(det.pnet)
        det._cascade([photo.astype(np.float32)], full=False)
        levels[min_face] = det.pnet.inputs
    full = levels[0.0]
    windows = [20 / 0.709 ** k for k in range(len(full))]
    assert [x.shape[2:] for x in full][:2] == [(int(240 * 0.6 + 1), int(320 * 0.6 + 1)),
                                                (int(240 * 0.6 * 0.709 + 1), int(320 * 0.6 * 0.709 + 1))]
    for min_face, got in levels.items():
        first = next(k for k, w in enumerate(windows) if w >= 0.709 ** 2 * min_face * 320)
        assert first == {0.0: 0, 0.15: 1, 0.3: 3}[min_face]
        assert len(got) == len(full) - first
        for a, b in zip(got, full[first:], strict=True):
            assert torch.equal(a, b)


def _same_faces(new: list[Face], old: list[Face], image: np.ndarray, name: str) -> None:
    """The issue's rule for a change that alters what the cascade computes: the same faces (count
    and the centre face), keypoints and boxes within 0.5% of the face width, network inputs
    within 2/255."""
    from models.face_prep import align_face

    assert len(new) == len(old), (name, len(new), len(old))
    for a, b in zip(new, old, strict=True):
        width = float(b.box[2] - b.box[0])
        assert np.abs(a.kps - b.kps).max() <= 0.005 * width, (name, a.kps, b.kps)
        assert np.abs(a.box - b.box).max() <= 0.005 * width, (name, a.box, b.box)
    ca, cb = pick_centre_face(new, image.shape), pick_centre_face(old, image.shape)
    assert ca is not None and np.abs(ca.box - cb.box).max() <= 0.005 * float(cb.box[2] - cb.box[0]), name
    diff = np.abs(align_face(image, ca).input112 - align_face(image, cb).input112).max() * 127.5
    assert diff <= 2.0, (name, diff)


def _resized(image: np.ndarray, side: int) -> np.ndarray:
    f = side / max(image.shape[:2])
    return cv2.resize(image, (round(image.shape[1] * f), round(image.shape[0] * f)),
                      interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)


@pytest.mark.parametrize("photos", ["portraits", pytest.param("faces_dir", marks=[pytest.mark.shared_data,
                                                                                   pytest.mark.slow])])
def test_min_face_finds_the_portraits_faces_as_the_full_search(photos: str, mtcnn: MTCNN, request) -> None:
    """The config's min_face (0.15) against MTCNN's full search, one photo at a time and as a batch, on
    portraits whose faces are 16-42% of the longer side (the test photos; with ../shared the real
    photos at their size, 1024 px and 4000 px, and frames of the tracker's video): the same faces, keypoints within 0.5% of the face
    width, the same network inputs within 2/255. A face chosen differently fails."""
    from configs.config import get_cfg_defaults

    min_face = get_cfg_defaults().detector.mtcnn_min_face
    assert min_face == 0.15
    if photos == "portraits":
        images = {f"variant{i}": p for i, p in enumerate(portrait_variants()[:-1])}
    else:
        images = {}
        folder = request.getfixturevalue(photos)
        for path in list_images(folder):
            img = read_image(path)
            images.update({path.name: img, f"{path.name}@1024": _resized(img, 1024), f"{path.name}@4000": _resized(img, 4000)})
        video = cv2.VideoCapture(str(folder.parent / "tracker" / "justin.mp4"))  # 1080p frames, when shared
        for k in range(4):
            video.set(cv2.CAP_PROP_POS_FRAMES, 60 * k)
            ok, bgr = video.read()
            if ok:
                images[f"justin.mp4#{60 * k}"] = np.ascontiguousarray(bgr[..., ::-1])
    fast = MTCNN(min_face=min_face)
    old = {name: mtcnn.detect(img) for name, img in images.items()}
    for name, img in images.items():
        assert max(f.box[2] - f.box[0] for f in old[name]) >= min_face * max(img.shape[:2]), name
        _same_faces(fast.detect(img), old[name], img, name)
    for name, faces in zip(images, fast.detect_batch(list(images.values())), strict=True):
        _same_faces(faces, old[name], images[name], name + " (batch)")


def test_min_face_photo_without_a_large_face_gets_the_full_search(mtcnn: MTCNN) -> None:
    """A face of 9% of the longer side: the pyramid from min_face 0.6 (windows of 111 px and more) finds nothing, so the photo is
    searched again with every level and the result is the full search's, exactly (the same levels)."""
    face = portrait_variants()[0]
    canvas = np.full((900, 900, 3), 90, np.uint8)
    canvas[200:712, 150:662] = face
    old = mtcnn.detect(canvas)
    assert len(old) == 1 and (old[0].box[2] - old[0].box[0]) / 900 < 0.1
    det = MTCNN(min_face=0.6)
    small, _ = shrink_area(canvas, det.max_side)
    assert det._cascade([small.astype(np.float32)], full=False) == [[]]  # the first pass alone
    (new,) = det.detect(canvas)
    assert np.array_equal(new.kps, old[0].kps) and np.array_equal(new.box, old[0].box) and new.score == old[0].score


def test_min_face_small_faces_get_the_full_search(mtcnn: MTCNN) -> None:
    """A photo in which the reduced pyramid finds a face smaller than min_face (group photos: the
    portrait beside its mirror image, faces of 8.7% of the longer side; a small copy of the portrait
    pasted beside it, 5.4-9%) is searched again fully: the result is the full search's, exactly.
    (Before this rule the 8.7% faces kept their reduced-pyramid boxes, off by 1.7% of their width,
    and a 1080p video frame's 8% face by up to 9%.) ``detector_from_config(all_faces=True)``
    (demo.py --all-faces) searches fully whatever the config says."""
    from configs.config import get_cfg_defaults
    from models.detectors import detector_from_config
    from tests.photos import astronaut, two_faces

    a = astronaut()
    photos = [two_faces()]
    for side in (160, 240):
        photo = a.copy()
        photo[512 - side:, 512 - side:] = cv2.resize(a, (side, side), interpolation=cv2.INTER_AREA)
        photos.append(photo)
    fast = MTCNN(min_face=0.15)
    for photo in photos:
        old = mtcnn.detect(photo)
        assert len(old) >= 2 and min(f.box[2] - f.box[0] for f in old) < 0.1 * max(photo.shape[:2])
        new = fast.detect(photo)
        assert len(new) == len(old)
        for a_, b_ in zip(new, old, strict=True):
            assert np.array_equal(a_.kps, b_.kps) and np.array_equal(a_.box, b_.box) and a_.score == b_.score
    cfg = get_cfg_defaults()
    cfg.detector.name = "mtcnn"
    assert detector_from_config(cfg).min_face == cfg.detector.mtcnn_min_face > 0
    assert detector_from_config(cfg, all_faces=True).min_face == 0.0
    with pytest.raises(MICAError, match="min_face"):
        MTCNN(min_face=1.0)
