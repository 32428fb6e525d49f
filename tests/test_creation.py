"""Tests of datasets/creation: readers reproduce the shipped naming, the pipeline aligns and writes
the right files, resumes, reports bad photos; real faces with the MTCNN detector."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from datasets.creation.pipeline import FAILURES_FILE, convert_fit, create_dataset
from datasets.creation.readers import READERS, get_reader
from datasets.image_lists import load_image_list
from datasets.mica_dataset import MICADataset
from models.detectors import Face
from tests.logs import warnings_during
from utils.alignment import ARCFACE_TEMPLATE
from utils.errors import MICAError

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "datasets" / "image_paths"

# Raw layout used per dataset in the naming test: where a photo named like the list goes.
RAW_LAYOUT = {
    "LYHM": lambda a, n: f"{a}/{n}.png",
    "FRGC": lambda a, n: f"Spring2003/{n}.jpg",  # flat session folder
    "STIRLING": lambda a, n: f"{n.lower()}.jpg",  # flat, lower-case names
    "FACEWAREHOUSE": lambda a, n: f"{a}/TrainingPose/{n}.png",
    "BP4D": lambda a, n: f"{a}/T1/{n}.jpg",
    "BU3DFE": lambda a, n: f"all/{n}.bmp",
    "FLORENCE": lambda a, n: f"{a}/{n}.jpg",
    "D3DFACS": lambda a, n: f"{a}/seq01/{n}.jpg",
}


def test_reader_names():
    assert get_reader("BP4D+").name == "BP4D" and get_reader("bu-3dfe").name == "BU3DFE"
    assert get_reader("FaceWarehouse").name == "FACEWAREHOUSE" and get_reader("Stirling").name == "STIRLING"
    with pytest.raises(MICAError, match="unknown dataset 'CelebA'"):
        get_reader("CelebA")
    assert set(READERS) == {p.stem for p in SHIPPED.glob("*.npy")}


@pytest.mark.parametrize("name", sorted(RAW_LAYOUT))
def test_readers_reproduce_shipped_naming(tmp_path, name):
    """Raw files named as the originals -> the reader yields exactly the shipped list's entries."""
    shipped = load_image_list(SHIPPED / f"{name}.npy")
    reader = get_reader(name)
    raw, fits = tmp_path / "raw", tmp_path / "fits"
    expected = {}
    for actor in list(shipped)[:3]:
        images, npz = shipped[actor]
        images = images[:15]
        for rel in images:
            path = raw / RAW_LAYOUT[name](actor, Path(rel).stem)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        (fits / npz).parent.mkdir(parents=True, exist_ok=True)
        (fits / npz).write_bytes(b"x")
        expected[actor] = (sorted(images), npz)
    # decoys: a fit that must lose, and files that are not photos of the dataset
    decoy_fits = {"FACEWAREHOUSE": "pose_3.npz", "BU3DFE": "{a}_HA01WH_RAW.npz", "STIRLING": "{a}_NH.npz"}
    for actor, (_, npz) in expected.items():
        if name in decoy_fits and not npz.endswith("_NH.npz"):
            (fits / actor / decoy_fits[name].format(a=actor)).write_bytes(b"x")
    (raw / "readme.txt").write_bytes(b"x")
    if name == "FACEWAREHOUSE":
        (raw / list(expected)[0] / "TrainingPose" / "texture.png").write_bytes(b"x")
    by_actor, ignored = reader.images(raw)
    assert set(by_actor) == set(expected)
    for actor, items in by_actor.items():
        got = sorted(f"{actor}/{it.name}{reader.crop_suffix}" for it in items)
        assert got == expected[actor][0]
        assert f"{actor}/{reader.find_fit(fits, actor).name}" == expected[actor][1]
    assert len(ignored) == (1 if name == "FACEWAREHOUSE" else 0)


def test_reader_disambiguates_repeated_stems(tmp_path):
    for task in ("T1", "T2"):
        (tmp_path / "F001" / task).mkdir(parents=True)
        (tmp_path / "F001" / task / "0001.jpg").write_bytes(b"x")
    (tmp_path / "F001" / "T2" / "0002.jpg").write_bytes(b"x")
    by_actor, _ = get_reader("BP4D").images(tmp_path)
    assert [i.name for i in by_actor["F001"]] == ["T1_0001", "T2_0001", "0002"]


def test_convert_fit(tmp_path):
    rng = np.random.default_rng(0)
    shape, exp, pose6 = rng.normal(size=300), rng.normal(size=100), rng.normal(size=6)
    np.savez(tmp_path / "a.npz", shape=shape, expression=exp, pose=pose6)
    out = convert_fit(tmp_path / "a.npz")
    assert out["betas"].dtype == np.float32 and out["betas"].shape == (400,) and out["pose"].shape == (15,)
    np.testing.assert_allclose(out["betas"], np.concatenate([shape, exp]).astype(np.float32))
    np.testing.assert_allclose(out["pose"][[0, 1, 2, 6, 7, 8]], pose6.astype(np.float32))
    assert not out["pose"][[3, 4, 5, 9, 10, 11, 12, 13, 14]].any()
    np.savez(tmp_path / "b.npz", betas=shape)  # 300 betas, no pose: zero-padded
    out = convert_fit(tmp_path / "b.npz")
    np.testing.assert_allclose(out["betas"][:300], shape.astype(np.float32))
    assert not out["betas"][300:].any() and not out["pose"].any()
    np.savez(tmp_path / "c.npz", betas=np.zeros(500))
    with pytest.raises(MICAError, match="c.npz has 500"):
        convert_fit(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", verts=np.zeros(3))
    with pytest.raises(MICAError, match="no 'betas'"):
        convert_fit(tmp_path / "d.npz")
    (tmp_path / "e.npz").write_bytes(b"garbage")
    with pytest.raises(MICAError, match="e.npz cannot be read"):
        convert_fit(tmp_path / "e.npz")


# ------------------------------------------------------------------------------------------------
# pipeline with a fake detector on painted keypoints
# ------------------------------------------------------------------------------------------------
DOT_COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], dtype=np.uint8)


def _painted_photo(angle_deg: float, scale: float, centre: tuple) -> tuple:
    """A grey photo with 5 coloured discs at a rotated/scaled ArcFace template; returns (rgb, kps)."""
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    kps = (ARCFACE_TEMPLATE - 56.0) @ rot.T * scale + np.asarray(centre)
    img = np.full((360, 480, 3), 128, np.uint8)
    for (x, y), c in zip(kps, DOT_COLOURS, strict=True):
        cv2.circle(img, (int(round(x)), int(round(y))), int(4 * scale), tuple(int(v) for v in c), -1)
    return img, kps.astype(np.float32)


class FakeDetector:
    """Returns the painted keypoints (plus an off-centre decoy face); no face on black photos."""

    def __init__(self, kps_by_mean: dict):
        self.kps_by_mean = kps_by_mean

    def detect(self, rgb):
        if rgb.max() == 0:
            return []
        kps = self.kps_by_mean[round(float(rgb.mean()), 3)]
        x0, y0 = kps.min(0) - 20
        x1, y1 = kps.max(0) + 20
        decoy_kps = kps * 0.3 + 2.0
        return [Face(np.array([1, 1, 40, 40], np.float32), decoy_kps, 0.99),
                Face(np.array([x0, y0, x1, y1], np.float32), kps, 0.9)]


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[..., ::-1])


def test_pipeline_aligns_writes_resumes_and_reports(tmp_path):
    raw, fits, out = tmp_path / "raw", tmp_path / "fits", tmp_path / "out"
    kps_by_mean = {}
    params = [(0, 1.5, (240, 180)), (20, 2.0, (250, 170)), (-15, 1.2, (230, 190))]
    for i, (angle, scale, centre) in enumerate(params):
        rgb, kps = _painted_photo(angle, scale, centre)
        _write_rgb(raw / "00001" / f"{i + 1}C.png", rgb)
        kps_by_mean[round(float(rgb.mean()), 3)] = kps
    _write_rgb(raw / "00001" / "9C.png", np.zeros((100, 100, 3), np.uint8))  # no face
    (raw / "00002").mkdir()
    (raw / "00002" / "1C.png").write_bytes(b"not a png")  # unreadable
    rgb, kps = _painted_photo(5, 1.4, (240, 180))
    _write_rgb(raw / "00002" / "2C.png", rgb)
    kps_by_mean[round(float(rgb.mean()), 3)] = kps
    _write_rgb(raw / "00003" / "1C.png", rgb)  # actor without a fit
    betas = np.arange(400, dtype=np.float32) / 400
    for actor, scan in (("00001", "130925161618"), ("00002", "130925160744")):
        (fits / actor).mkdir(parents=True)
        np.savez(fits / actor / f"{scan}.npz", betas=betas, pose=np.arange(15, dtype=np.float32))

    reader = get_reader("LYHM")
    detector = FakeDetector(kps_by_mean)
    s = create_dataset(reader, raw, fits, out, detector, progress=False)
    assert (s.actors, s.written, s.existing, s.actors_without_fit) == (2, 4, 0, ["00003"])
    assert sorted(Path(p).name for p, _ in s.failed) == ["1C.png", "9C.png"]
    report = (out / "LYHM" / FAILURES_FILE).read_text()
    assert "9C.png: " in report and "no face" in report and "00002/1C.png" in report

    lst = load_image_list(out / "image_paths" / "LYHM.npy")
    assert lst == {"00001": (["00001/1C.png", "00001/2C.png", "00001/3C.png"], "00001/130925161618.npz"),
                   "00002": (["00002/2C.png"], "00002/130925160744.npz")}
    fit = np.load(out / "LYHM" / "FLAME_parameters" / "00001" / "130925161618.npz")
    assert fit["betas"].shape == (400,) and fit["pose"].shape == (15,)
    np.testing.assert_array_equal(fit["betas"], betas)

    # Oracle: the painted discs must land on the ArcFace template (x2 in the 224 crop).
    for rel in lst["00001"][0] + lst["00002"][0]:
        crop_path = out / "LYHM" / "arcface_input" / rel
        x = np.load(crop_path.with_suffix(".npy"))
        assert x.shape == (3, 112, 112) and x.dtype == np.float32 and -1 <= x.min() and x.max() <= 1
        crop = cv2.imread(str(crop_path))[..., ::-1]
        assert crop.shape == (224, 224, 3)
        for (tx, ty), colour in zip(ARCFACE_TEMPLATE, DOT_COLOURS, strict=True):
            expect = (colour.astype(np.float32) - 127.5) / 127.5
            np.testing.assert_allclose(x[:, int(round(ty)), int(round(tx))], expect, atol=0.05)
            np.testing.assert_allclose(crop[int(round(2 * ty)), int(round(2 * tx))], colour, atol=8)

    # Resume: nothing redone; a deleted .npy is redone alone.
    s2 = create_dataset(reader, raw, fits, out, detector, progress=False)
    assert (s2.written, s2.existing) == (0, 4)
    (out / "LYHM" / "arcface_input" / "00001" / "2C.npy").unlink()
    s3 = create_dataset(reader, raw, fits, out, detector, progress=False)
    assert (s3.written, s3.existing) == (1, 3)

    # The output is a working MICA dataset.
    ds = MICADataset(out / "LYHM", "LYHM", out / "image_paths" / "LYHM.npy", K=1)
    item = ds[0]
    np.testing.assert_array_equal(item["identity"].numpy(), betas[:300])
    np.testing.assert_array_equal(item["arcface"][0].numpy(), np.load(Path(item["image_paths"][0]).with_suffix(".npy")))


def test_pipeline_errors(tmp_path):
    reader = get_reader("LYHM")
    with pytest.raises(MICAError, match="raw folder .*nope does not exist"):
        create_dataset(reader, tmp_path / "nope", tmp_path, tmp_path / "out", FakeDetector({}), progress=False)
    with pytest.raises(MICAError, match="fits folder .*nofits does not exist"):
        create_dataset(reader, tmp_path, tmp_path / "nofits", tmp_path / "out", FakeDetector({}), progress=False)
    with pytest.raises(MICAError, match="no LYHM photos found"):
        create_dataset(reader, tmp_path, tmp_path, tmp_path / "out", FakeDetector({}), progress=False)


# ------------------------------------------------------------------------------------------------
# real faces with the MTCNN detector
# ------------------------------------------------------------------------------------------------
def _mtcnn():
    from models.detectors import create_detector

    return create_detector("mtcnn", threshold=0.5)  # bundled weights: a failure here is a real failure


@pytest.mark.slow
def test_pipeline_real_faces_mtcnn(face_photos_dir, tmp_path):
    raw, fits, out = tmp_path / "raw", tmp_path / "fits", tmp_path / "out"
    photos = sorted(p for p in face_photos_dir.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:3]
    for i, p in enumerate(photos):
        (raw / f"subject_{i + 1:02d}").mkdir(parents=True)
        shutil.copy(p, raw / f"subject_{i + 1:02d}" / f"frame_{i:04d}{p.suffix}")
        (fits / f"subject_{i + 1:02d}").mkdir(parents=True)
        np.savez(fits / f"subject_{i + 1:02d}" / "110920150452.npz", shape=np.ones(300), pose=np.zeros(6))
    detector = _mtcnn()
    s = create_dataset(get_reader("Florence"), raw, fits, out, detector, progress=False)
    assert (s.actors, s.written, s.failed) == (3, 3, [])
    lst = load_image_list(out / "image_paths" / "FLORENCE.npy")
    assert len(lst) == 3
    for actor, (images, npz) in lst.items():
        assert npz == f"{actor}/110920150452.npz" and len(images) == 1 and images[0].endswith(".jpg")
        crop_path = out / "FLORENCE" / "arcface_input" / images[0]
        crop = cv2.imread(str(crop_path))[..., ::-1].copy()
        x = np.load(crop_path.with_suffix(".npy"))
        assert crop.shape == (224, 224, 3) and x.shape == (3, 112, 112) and x.dtype == np.float32
        # The 112 input is the 224 crop at half resolution (same alignment, RGB order).
        half = cv2.resize(crop, (112, 112), interpolation=cv2.INTER_AREA).astype(np.float32)
        assert np.abs((x.transpose(1, 2, 0) * 127.5 + 127.5) - half).mean() < 12.0
        # Independent check of the alignment: re-detecting on the aligned crop finds the keypoints
        # on the ArcFace template (x2).
        faces = detector.detect(np.ascontiguousarray(crop))
        assert faces, f"no face re-detected in {crop_path}"
        best = min(faces, key=lambda f: np.abs(f.kps - 2 * ARCFACE_TEMPLATE).mean())
        assert np.abs(best.kps - 2 * ARCFACE_TEMPLATE).max() < 12.0


@pytest.mark.slow
def test_generate_cli(face_photos_dir, tmp_path):
    _mtcnn()
    photo = sorted(face_photos_dir.glob("*.jpg"))[0]
    (tmp_path / "raw" / "Adrian").mkdir(parents=True)
    shutil.copy(photo, tmp_path / "raw" / "Adrian" / "texture_1C_001.jpg")
    (tmp_path / "fits" / "Adrian").mkdir(parents=True)
    np.savez(tmp_path / "fits" / "Adrian" / "Adrian.npz", betas=np.zeros(400), pose=np.zeros(15))
    cmd = [sys.executable, "-m", "datasets.creation.generate", "--dataset", "d3dfacs", "--raw", str(tmp_path / "raw"),
           "--fits", str(tmp_path / "fits"), "--out", str(tmp_path / "out"), "--detector", "mtcnn"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert load_image_list(tmp_path / "out" / "image_paths" / "D3DFACS.npy") == \
        {"Adrian": (["Adrian/texture_1C_001.jpg"], "Adrian/Adrian.npz")}
    bad = subprocess.run(cmd[:4] + ["BFM"] + cmd[5:], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown dataset 'BFM'" in bad.stderr and "Traceback" not in bad.stderr


# ------------------------------------------------------------------------------------------------
# the original's face filter: detector threshold, centre face, then the dataset's minimum score
# ------------------------------------------------------------------------------------------------
def test_min_score_defaults_are_the_originals():
    # datasets/creation/instances/ of the original MICA: FLORENCE 0.85, STIRLING 0.75, the others none
    expected = {"FLORENCE": 0.85, "STIRLING": 0.75}
    for name in READERS:
        assert get_reader(name).min_score == expected.get(name), name


class ThresholdDetector:
    """Emulates a detector with its own score threshold (SCRFD's ``det_thresh``): returns the given
    faces whose score reaches the threshold."""

    def __init__(self, faces, threshold: float = 0.5):
        self.faces, self.threshold = faces, threshold

    def detect(self, rgb):
        return [f for f in self.faces if f.score >= self.threshold]


def _two_face_photo(tmp_path: Path, centre_score: float, side_score: float):
    """FLORENCE layout, one photo with a face at the centre and one off-centre (painted dots)."""
    from utils.alignment import norm_crop, to_network_input

    rgb, centre_kps = _painted_photo(0, 1.2, (240, 180))
    side_rgb, side_kps = _painted_photo(10, 0.6, (400, 90))
    rgb = np.where(side_rgb != 128, side_rgb, rgb).astype(np.uint8)
    raw, fits = tmp_path / "raw", tmp_path / "fits"
    _write_rgb(raw / "subject_01" / "frame_0001.png", rgb)
    (fits / "subject_01").mkdir(parents=True, exist_ok=True)
    np.savez(fits / "subject_01" / "110920150452.npz", betas=np.zeros(400), pose=np.zeros(15))

    def box(k):
        return np.concatenate([k.min(0) - 20, k.max(0) + 20]).astype(np.float32)

    faces = [Face(box(side_kps), side_kps, side_score), Face(box(centre_kps), centre_kps, centre_score)]
    expected = {name: to_network_input(norm_crop(rgb, k, size=112)) for name, k in
                (("centre", centre_kps), ("side", side_kps))}
    return raw, fits, faces, expected


@pytest.mark.parametrize("centre_score, side_score, min_score, kept", [
    (0.80, 0.95, None, None),      # FLORENCE 0.85: the centre face is picked first, then dropped
    (0.90, 0.95, None, "centre"),  # centre face above the minimum: kept although the other scores higher
    (0.45, 0.90, None, "side"),    # below the detector threshold: gone before the centre face is picked
    (0.45, 0.80, None, None),      # ... and the remaining face is below FLORENCE's minimum
    (0.80, 0.95, 0.0, "centre"),   # --min-score 0: no minimum
])
def test_filter_order_threshold_centre_then_min_score(tmp_path, centre_score, side_score, min_score, kept):
    raw, fits, faces, expected = _two_face_photo(tmp_path, centre_score, side_score)
    out = tmp_path / "out"
    s = create_dataset(get_reader("FLORENCE"), raw, fits, out, ThresholdDetector(faces, 0.5), progress=False,
                       min_score=min_score)
    npy = out / "FLORENCE" / "arcface_input" / "subject_01" / "frame_0001.npy"
    if kept is None:
        assert s.written == 0 and npy.exists() is False
        assert len(s.failed) == 1 and "below the minimum 0.85" in s.failed[0][1]
    else:
        assert s.written == 1 and s.failed == []
        np.testing.assert_array_equal(np.load(npy), expected[kept])


def _fake_mtcnn(faces):
    from models.detectors import MTCNN

    class FakeMTCNN(MTCNN):  # an MTCNN as far as the pipeline can tell, without its weights
        def __init__(self):
            pass

        def detect(self, rgb):
            return list(faces)

    return FakeMTCNN()


def _stirling_photos(tmp_path: Path, n: int = 3):
    rgb, kps = _painted_photo(0, 1.2, (240, 180))
    raw, fits = tmp_path / "raw", tmp_path / "fits"
    for i in range(1, n + 1):
        _write_rgb(raw / f"F1001_00{i}.jpg", rgb)
    (fits / "F1001").mkdir(parents=True)
    np.savez(fits / "F1001" / "F1001_N.npz", betas=np.zeros(400), pose=np.zeros(15))
    box = np.concatenate([kps.min(0) - 20, kps.max(0) + 20]).astype(np.float32)
    return raw, fits, lambda score: Face(box, kps, score)


def test_stirling_minimum_and_mtcnn_warning_once_per_run(tmp_path):
    raw, fits, face = _stirling_photos(tmp_path)
    runs = {}
    reader = get_reader("Stirling")
    lines = warnings_during(lambda: runs.update(
        low=create_dataset(reader, raw, fits, tmp_path / "a", _fake_mtcnn([face(0.74)]), progress=False),
        high=create_dataset(reader, raw, fits, tmp_path / "b", _fake_mtcnn([face(0.76)]), progress=False)))
    assert runs["low"].written == 0 and len(runs["low"].failed) == 3
    assert all("below the minimum 0.75" in why for _, why in runs["low"].failed)
    assert runs["high"].written == 3
    scrfd = [m for m in lines if "SCRFD score" in m]
    assert len(scrfd) == 2 and "MTCNN" in scrfd[0] and "\n" not in scrfd[0].rstrip("\n")  # once per run


def test_no_mtcnn_warning_without_a_minimum(tmp_path):
    raw, fits, face = _stirling_photos(tmp_path, n=1)
    runs = {}
    lines = warnings_during(lambda: runs.update(
        off=create_dataset(get_reader("Stirling"), raw, fits, tmp_path / "a", _fake_mtcnn([face(0.3)]),
                           progress=False, min_score=0),
        scrfd_like=create_dataset(get_reader("Stirling"), raw, fits, tmp_path / "b",
                                  ThresholdDetector([face(0.9)]), progress=False)))
    assert runs["off"].written == 1 and runs["scrfd_like"].written == 1
    assert not any("SCRFD score" in m for m in lines)
