"""How test.py prepares benchmark photos (NoW box crops, Stirling full photos) and which photo of a
Stirling subject is used: scikit-image's portrait (tests/photos.py), the bundled MTCNN detector, and
independent references (scikit-image warps and similarity estimates)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from models.face_prep import NotExactlyOneFace, prepare_from_box, prepare_full
from testing.now_export import ExportWriter
from testing.stirling_export import STIRLING_IMAGES_DIR, stirling_export_items
from tests.photos import astronaut, portrait_photos, two_faces
from utils.alignment import ARCFACE_TEMPLATE, box_crop_matrix
from utils.errors import MICAError
from utils.image_io import read_image


@pytest.fixture(scope="module")
def mtcnn():
    from models.detectors import create_detector

    return create_detector("mtcnn", threshold=0.1)


class Recording:
    """Passes every call to the real detector and keeps the images it was shown."""

    def __init__(self, detector) -> None:
        self.detector, self.seen = detector, []

    def detect(self, image):
        self.seen.append(image.copy())
        return self.detector.detect(image)


def _sk_warp(img: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import AffineTransform, warp

    return warp(img, AffineTransform(matrix=np.vstack([m, [0, 0, 1]])).inverse, output_shape=(size, size), order=1,
                mode="constant", cval=0.0, clip=False, preserve_range=True)


def _sk_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    from skimage.transform import SimilarityTransform

    src, dst = np.asarray(src, float), np.asarray(dst, float)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        return SimilarityTransform.from_estimate(src, dst).params[:2]
    tf = SimilarityTransform()
    assert tf.estimate(src, dst)
    return tf.params[:2]


def test_now_crop_detector_and_network_input_as_mica(mtcnn):
    photo = portrait_photos()["large.jpg"]  # 820 x 820
    box = np.asarray(mtcnn.detect(photo)[0].box, dtype=np.float64)  # NoW ships detector boxes too
    spy = Recording(mtcnn)
    aligned = prepare_from_box(photo, box, spy)
    # MICA: scikit-image warp of photo / 255 (float), x 255 as float32.
    crop = (_sk_warp(photo / 255.0, box_crop_matrix(box), 224)).astype(np.float32) * np.float32(255)
    # The detector saw that crop truncated to uint8 (never rounded).
    (seen,) = spy.seen
    assert seen.dtype == np.uint8 and seen.shape == (224, 224, 3)
    diff = seen.astype(int) - np.floor(crop).astype(int)
    assert np.abs(diff).max() <= 1 and (diff != 0).mean() < 1e-3  # only values a rounding away from an integer
    assert (seen.astype(int) - np.rint(crop).astype(int) != 0).mean() > 0.2  # rounding would differ
    # The 112 network input is the ArcFace warp of the FLOAT crop: not quantised.
    m = _sk_similarity(aligned.face.kps, ARCFACE_TEMPLATE)
    ref = (_sk_warp(crop.astype(np.float64), m, 112) - 127.5) / 127.5
    got = aligned.input112.transpose(1, 2, 0)
    assert np.abs(got - ref).mean() < 0.2 / 127.5 and np.abs(got - ref).max() < 3 / 127.5  # OpenCV's 1/32 px grid
    pixels = got * 127.5 + 127.5
    assert (np.abs(pixels - np.rint(pixels)) > 1e-3).mean() > 0.5


def test_now_crop_needs_exactly_one_face(mtcnn):
    blank = np.full((400, 600, 3), 120, np.uint8)
    with pytest.raises(NotExactlyOneFace, match="IMG_1: no face detected"):
        prepare_from_box(blank, np.array([100.0, 100.0, 300.0, 300.0]), mtcnn, source="IMG_1")
    two = cv2.resize(two_faces(), None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    with pytest.raises(MICAError, match="2 faces detected"):
        prepare_from_box(two, np.array([0.0, 0.0, two.shape[1], two.shape[0]]), mtcnn)


def test_stirling_detects_and_aligns_on_the_full_photo(mtcnn):
    photo = cv2.resize(astronaut(), (900, 1200), interpolation=cv2.INTER_CUBIC)  # a large portrait photo
    spy = Recording(mtcnn)
    aligned = prepare_full(photo, spy)
    (seen,) = spy.seen
    np.testing.assert_array_equal(seen, photo)  # the detector got the full-resolution photo
    (face,) = mtcnn.detect(photo)
    np.testing.assert_allclose(aligned.face.kps, face.kps)
    # Reference: the similarity onto the ArcFace template estimated by scikit-image, applied to
    # the full photo.
    m = _sk_similarity(face.kps, ARCFACE_TEMPLATE)
    ref = (_sk_warp(photo.astype(np.float64), m, 112) - 127.5) / 127.5
    got = aligned.input112.transpose(1, 2, 0)
    assert np.abs(got - ref).mean() < 0.5 / 127.5
    # What the earlier code did (the photo squashed to 224x224 first) is far from it.
    small = cv2.resize(photo, (224, 224), interpolation=cv2.INTER_AREA)
    (f_small,) = mtcnn.detect(small)
    squashed = (_sk_warp(small.astype(np.float64), _sk_similarity(f_small.kps, ARCFACE_TEMPLATE), 112) - 127.5) / 127.5
    assert np.abs(squashed - ref).mean() > 10 * np.abs(got - ref).mean()
    with pytest.raises(NotExactlyOneFace):
        prepare_full(two_faces(), mtcnn)


def _stirling_folder(root: Path, files: dict[str, np.ndarray]) -> None:
    folder = root / STIRLING_IMAGES_DIR / "HQ"
    folder.mkdir(parents=True)
    for name, rgb in files.items():
        cv2.imwrite(str(folder / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_stirling_uses_the_last_one_face_photo(tmp_path, mtcnn):
    carell, lawrence = astronaut(), np.ascontiguousarray(astronaut()[:, ::-1])  # two one-face photos
    blank = np.full((300, 400, 3), 120, np.uint8)
    _stirling_folder(tmp_path / "st", {
        # Sorted path order: _1, _2 (one face each), _3 (two faces), f..._4 (none; lower case sorts
        # last, and its subject id is upper-cased). MICA writes _1 then _2 to the same ID9 files
        # (_3 and _4 are skipped), so _2's mesh is left.
        "F1001_01A_1.jpg": carell, "F1001_01A_2.jpg": lawrence, "F1001_01A_3.jpg": two_faces(),
        "f1001_01a_4.jpg": blank,
        "F1002_01A_x.jpg": blank,  # no photo with one face: the subject fails
    })
    folder = tmp_path / "st" / STIRLING_IMAGES_DIR / "HQ"
    order = [str(folder / n) for n in ("F1001_01A_1.jpg", "F1001_01A_2.jpg", "F1001_01A_3.jpg", "f1001_01a_4.jpg")]
    expected = order[1]
    items = stirling_export_items(tmp_path / "st", tmp_path / "out", mtcnn, ["HQ"])
    assert [i.key for i in items] == ["HQ/F1001/F1001_01A", "HQ/F1002/F1002_01A"]
    assert [str(p) for p in items[0].images] == order[::-1]
    from testing.now_export import ExportReport

    report = ExportReport()
    writer = ExportWriter(predictor=None, faces=np.zeros((1, 3)))
    aligned = writer._prepare(items[0], report)
    ref = prepare_full(read_image(expected), mtcnn)
    np.testing.assert_array_equal(aligned.input112, ref.input112)
    assert sorted(report.skipped) == ["HQ/F1001/F1001_01A:F1001_01A_3.jpg", "HQ/F1001/F1001_01A:f1001_01a_4.jpg"]
    assert "2 faces" in report.skipped["HQ/F1001/F1001_01A:F1001_01A_3.jpg"]
    assert all("face" in why for why in report.skipped.values()) and not report.failed
    assert writer._prepare(items[1], report) is None
    assert "no face detected" in report.failed["HQ/F1002/F1002_01A"]
    # A subject is done when its ID9 files exist.
    mesh, lmk = writer.paths(items[1].stem)
    mesh.parent.mkdir(parents=True)
    mesh.write_bytes(b"ply")
    lmk.write_bytes(b"npy")
    done = writer.run(items[1:])
    assert done.done == 1 and not done.failed and done.written == 0


def test_stirling_lists_the_jpg_photos_mica_lists(tmp_path):
    """MICA lists ``{HQ,LQ}/*.jpg`` (a case-sensitive glob): a ``.JPG`` or ``.png`` beside them is not
    one of the benchmark's photos and must not become a subject's "last" photo."""
    from testing.stirling_export import subject_groups

    for name in ("f1001_a01_anything.jpg", "f1001_a02_anything.JPG", "f1001_a03_anything.png",
                 "m2002_b01_other.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    groups = subject_groups(tmp_path)
    assert {k: [p.name for p in v] for k, v in groups.items()} == {
        "F1001_A01": ["f1001_a01_anything.jpg"], "M2002_B01": ["m2002_b01_other.jpg"]}
