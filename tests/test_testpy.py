"""test.py end to end: NoW/Stirling export in the official layout, then local NoW-protocol scoring.

The export runs on face photos (scikit-image's portrait, tests/photos.py) with the bundled MTCNN detector, random
network weights in the mica.tar format and a synthetic FLAME in the real file format. The scans
are then made from the exported meshes (known similarity + known noise), so the score must equal
the noise that was added.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from configs.config import PROJECT_ROOT
from testing.now_eval import read_official_outputs
from tests.synthetic_now import (
    ellipsoid_head,
    kept_mask,
    make_scan,
    write_image_list,
    write_now_folder,
    write_prediction,
)
from utils.errors import USER_ERRORS

ARCH = "iresnet18"  # the checkpoint format is the same for every depth; 18 keeps CPU tests fast
CHALLENGES = ("multiview_neutral", "multiview_expressions", "multiview_occlusions", "selfie")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "test.py"), *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def _one_line_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# ---------------------------------------------------------------------------------------------
# Fast: command-line errors and scoring through the CLI
# ---------------------------------------------------------------------------------------------
def _load_test_py():
    """test.py as a module (its name would clash with the standard library's ``test`` package)."""
    spec = importlib.util.spec_from_file_location("mica_test_py", PROJECT_ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TEST_PY = _load_test_py()


def _refused(argv: list[str], *needles: str) -> None:
    """test.py's main (in process) refuses ``argv`` with a one-line user error naming ``needles``."""
    with pytest.raises(USER_ERRORS) as e:
        TEST_PY.main(argv)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg


def test_missing_benchmark_folders_give_one_line(tmp_path):
    _refused(["--benchmark", "now"], "test.now_root", "--now-root")
    _refused(["--benchmark", "now", "--now-root", str(tmp_path / "nope")], "nope", "does not exist")
    (tmp_path / "now").mkdir()
    _refused(["--benchmark", "now", "--now-root", str(tmp_path / "now")], "NoW_Dataset")
    for sub in ("NoW_Dataset/final_release_version/iphone_pictures", "NoW_Dataset/final_release_version/detected_face"):
        (tmp_path / "now" / sub).mkdir(parents=True)
    _refused(["--benchmark", "now", "--now-root", str(tmp_path / "now")], "imagepathsvalidation.txt")
    _refused(["--benchmark", "stirling", "--stirling-root", str(tmp_path)], "Real_images__Subset_2D_FG2018")
    _refused(["--evaluate", "--benchmark", "stirling", "--stirling-root", str(tmp_path)], "--scans")
    _refused(["--evaluate", "--now-root", str(tmp_path), "--fit-points", "-5"], "--fit-points", "-5")
    _refused(["--evaluate", "--now-root", str(tmp_path), "--max-nfev", "0"], "--max-nfev")
    _refused(["--batch-size", "0"], "--batch-size")


def test_bad_arguments_are_refused_before_torch_is_imported():
    """The command line prints one line and exits 1 without loading torch (a fast answer)."""
    code = ("import sys, runpy; sys.argv = ['test.py', '--evaluate', '--fit-points', '-1']\n"
            "try:\n    runpy.run_path('test.py', run_name='__main__')\n"
            "except SystemExit as e:\n    print('torch' in sys.modules)\n    raise\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["False"], (res.stdout, res.stderr)
    _one_line_error(res, "--fit-points")


@pytest.mark.slow
def test_evaluate_cli_compares_methods(tmp_path):
    rng = np.random.default_rng(0)
    v, f, lm = ellipsoid_head(3)
    scan = make_scan(v, f, lm, noise_mm=0.25, rng=rng, landmark_noise_mm=1.0)
    root = write_now_folder(tmp_path / "now", {"S1": scan})
    lines = [f"S1/{c}/IMG_1.jpg" for c in CHALLENGES]
    write_image_list(root, lines)
    for ln in lines:
        write_prediction(tmp_path / "good", ln, v, f, lm)
        write_prediction(tmp_path / "bad", ln, v * np.array([1.0, 1.15, 1.0]), f, lm * np.array([1.0, 1.15, 1.0]))
    res = _run(["--evaluate", "--now-root", str(root), "--predicted", f"good={tmp_path / 'good'}",
                "--predicted", f"bad={tmp_path / 'bad'}", "--results", str(tmp_path / "res"), "output_dir", str(tmp_path)])
    assert res.returncode == 0, res.stderr
    summary = {r["method"]: r for r in json.loads((tmp_path / "res" / "results.json").read_text())}
    truth = np.abs(scan.offsets[kept_mask(scan.vertices, scan.landmarks)]) * scan.scale
    assert summary["good"]["overall"]["mean"] == pytest.approx(truth.mean(), rel=0.05)
    assert summary["bad"]["overall"]["mean"] > 2 * summary["good"]["overall"]["mean"]
    assert set(summary["good"]["groups"]) == set(CHALLENGES)
    table = (tmp_path / "res" / "results.md").read_text()
    assert "| good |" in table and "| bad |" in table and "MICA (published)" in table
    for name in ("good", "bad"):
        assert (tmp_path / "res" / f"{name}_computed_distances.npy").is_file()
        assert (tmp_path / "res" / f"{name}_computed_distances.npy.meanmedian").is_file()
    assert (tmp_path / "res" / "cumulative_errors.png").is_file()


@pytest.mark.slow
def test_evaluate_exit_codes_missing_vs_unreadable(tmp_path):
    rng = np.random.default_rng(1)
    v, f, lm = ellipsoid_head(3)
    root = write_now_folder(tmp_path / "now", {"S1": make_scan(v, f, lm, noise_mm=0.2, rng=rng)})
    lines = [f"S1/{c}/IMG_1.jpg" for c in CHALLENGES]
    write_image_list(root, lines)
    for ln in lines[:3]:  # the selfie prediction is missing
        write_prediction(tmp_path / "pred", ln, v, f, lm)
    args = ["--evaluate", "--now-root", str(root), "--predicted", f"m={tmp_path / 'pred'}", "--results", str(tmp_path / "res")]
    res = _run(args)
    assert res.returncode == 0, res.stderr  # a missing prediction is num_missing_files, not an error
    assert read_official_outputs(tmp_path / "res" / "m_computed_distances.npy")["num_missing_files"] == 1
    # An unreadable prediction: the others are still scored, the exit code is 1.
    (tmp_path / "pred" / "S1" / "multiview_neutral" / "IMG_1.npy").write_bytes(b"\x93NUMPY garbage")
    res = _run(args)
    assert res.returncode == 1
    assert "multiview_neutral/IMG_1.npy" in res.stderr and "Traceback" not in res.stderr
    summary = json.loads((tmp_path / "res" / "results.json").read_text())[0]
    assert summary["overall"]["n_images"] == 2 and summary["missing"] == [lines[3]]
    assert list(summary["failed"]) == [lines[0]]


# ---------------------------------------------------------------------------------------------
# Slow: export with the real pipeline, then scoring
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mica_tar(tmp_path_factory):
    from tests.synthetic_weights import write_random_mica_tar

    tar = tmp_path_factory.mktemp("weights") / "mica.tar"
    write_random_mica_tar(tar, arch=ARCH, seed=0)
    return tar


def _model_opts(flame_dir: Path, tar: Path) -> list[str]:
    return [
        "model.arch", ARCH, "pretrained_model_path", str(tar),
        "model.flame_model_path", str(flame_dir / "generic_model.pkl"),
        "model.flame_lmk_embedding_path", str(flame_dir / "landmark_embedding.npy"),
        "model.topology_path", str(flame_dir / "head_template.obj"),
        "model.flame_masks_path", str(flame_dir / "FLAME_masks.pkl"),
        "detector.antelopev2_dir", "/nonexistent/antelopev2", "device", "cpu",
    ]


def _face_boxes(photos: list[Path]) -> dict[Path, np.ndarray]:
    """Face boxes of the full photos (NoW ships detector boxes too), from the bundled MTCNN."""
    from models.detectors import create_detector, pick_centre_face
    from utils.image_io import read_image

    det = create_detector("mtcnn", threshold=0.5)
    boxes = {}
    for p in photos:
        img = read_image(p)
        face = pick_centre_face(det.detect(img), img.shape)
        assert face is not None, p
        boxes[p] = np.asarray(face.box, dtype=np.float64)
    return boxes


@pytest.mark.slow
def test_now_export_then_evaluate(tmp_path, face_photos_dir, synthetic_flame_dir, mica_tar):
    photos = sorted(p for p in face_photos_dir.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:4]
    boxes = _face_boxes(photos)
    root = tmp_path / "now"
    val, test = [], []
    for i, p in enumerate(photos):
        line = f"SUBJ{i}/{CHALLENGES[i % 4]}/IMG_{i}.jpg"
        data = cv2.imencode(".jpg", cv2.imread(str(p)))[1].tobytes()
        (val if i < len(photos) - 1 else test).append((line, data, tuple(boxes[p])))
    # An image in which no face can be found: reported as failed, scored as missing.
    blank = cv2.imencode(".jpg", np.full((400, 400, 3), 120, np.uint8))[1].tobytes()
    val.append(("SUBJ0/selfie/IMG_blank.jpg", blank, (100.0, 100.0, 300.0, 300.0)))
    # A line leading out of the NoW folder, to a photo and a box beside which the user keeps files
    # (issue 21, N7: they were overwritten): that item fails, nothing is written there.
    escape = ("../../../../precious/victim.jpg",) + val[0][1:]
    write_now_folder(root, {}, val + [escape], "validation")
    val_lines = (root / "imagepathsvalidation.txt").read_text()
    victim = {p: p.read_bytes() for p in (tmp_path / "precious").iterdir()}
    assert sorted(p.name for p in victim) == ["victim.jpg", "victim.npy"]
    write_now_folder(root, {}, test, "test")
    out = tmp_path / "bench"
    args = ["--benchmark", "now", "--now-root", str(root), "-o", str(out), "--batch-size", "2", "--mesh-format", "obj",
            *_model_opts(synthetic_flame_dir, mica_tar)]
    res = _run(args)
    # The blank image yields no output: it is failed (exit code 1) and names no other image.
    assert res.returncode == 1, res.stderr
    assert "export_report.json" in res.stderr and "Traceback" not in res.stderr
    pred = out / "predicted_meshes"
    report = json.loads((out / "export_report.json").read_text())
    assert report["written"] == len(photos)
    assert sorted(report["failed"]) == sorted(["SUBJ0/selfie/IMG_blank.jpg", escape[0]])
    assert "outside" in report["failed"][escape[0]]
    assert {p: p.read_bytes() for p in (tmp_path / "precious").iterdir()} == victim  # nothing written there
    (root / "imagepathsvalidation.txt").write_text(val_lines.replace(escape[0] + "\n", ""))
    assert "no face" in report["failed"]["SUBJ0/selfie/IMG_blank.jpg"] and report["skipped"] == {}
    for line, _, _ in val[:-1] + test:
        stem = pred / Path(line).with_suffix("")
        obj, npy = stem.with_suffix(".obj"), stem.with_suffix(".npy")
        assert obj.is_file() and npy.is_file(), line
        v_lines = [ln.split() for ln in obj.read_text().splitlines() if ln.startswith("v ")]
        assert all(len(x) == 4 for x in v_lines)  # "v x y z": no vertex colours
        lmk = np.load(npy)
        assert lmk.shape == (7, 3)
    assert not (pred / "SUBJ0/selfie/IMG_blank.obj").exists()

    # Resumable: a second run writes nothing and leaves the files untouched.
    mtimes = {p: p.stat().st_mtime_ns for p in pred.rglob("*") if p.is_file()}
    res = _run(args)
    assert res.returncode == 1, res.stderr  # the blank image still fails
    rerun = json.loads((out / "export_report.json").read_text())
    assert rerun["done"] == len(photos) and rerun["written"] == 0
    assert {p: p.stat().st_mtime_ns for p in pred.rglob("*") if p.is_file()} == mtimes

    # Scans of the exported meshes: known similarity + known noise along the normals.
    from testing.now_eval import load_mesh

    rng = np.random.default_rng(7)
    scans, truths = {}, []
    for line, _, _ in val[:-1]:
        stem = pred / Path(line).with_suffix("")
        v, f = load_mesh(stem.with_suffix(".obj"))
        lm = np.load(stem.with_suffix(".npy"))
        scan = make_scan(v, f, lm, noise_mm=0.3, rng=rng, landmark_noise_mm=1.0)
        scans[line.split("/")[0]] = scan
        truths.append(np.abs(scan.offsets[kept_mask(scan.vertices, scan.landmarks)]) * scan.scale)
    write_now_folder(root, scans)
    res = _run(["--evaluate", "--benchmark", "now", "--now-root", str(root), "-o", str(out), "--fit-points", "4000",
                "output_dir", str(tmp_path)])
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "results" / "results.json").read_text())[0]
    truth = np.concatenate(truths)
    assert summary["overall"]["n_images"] == len(val) - 1
    assert summary["missing"] == ["SUBJ0/selfie/IMG_blank.jpg"]
    assert summary["overall"]["mean"] == pytest.approx(truth.mean(), rel=0.05)
    assert summary["overall"]["median"] == pytest.approx(np.median(truth), rel=0.07)
    off = read_official_outputs(out / "results" / "mica_computed_distances.npy")
    assert off["num_missing_files"] == 1 and len(off["computed_distances"]) == len(val) - 1
    # Metrical protocol on the same meshes: the scans carry a random scale, so the error grows
    # unless that scale is ~1.
    res = _run(["--evaluate", "--metrical", "--now-root", str(root), "-o", str(out), "--fit-points", "4000"])
    assert res.returncode == 0, res.stderr
    assert (out / "results_metrical" / "results.json").is_file()


@pytest.mark.slow
def test_stirling_export_layout(tmp_path, face_photos_dir, synthetic_flame_dir, mica_tar):
    photos = sorted(p for p in face_photos_dir.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    folder = tmp_path / "stirling" / "images" / "Real_images__Subset_2D_FG2018"
    names = {"HQ": ["f1001_01a_x.jpg", "F1002_01A_y.jpg"], "LQ": ["F1001_01A_lq.jpg"]}
    k = 0
    for q, files in names.items():
        (folder / q).mkdir(parents=True)
        for name in files:
            cv2.imwrite(str(folder / q / name), cv2.imread(str(photos[k % len(photos)])))
            k += 1
    blank = np.full((300, 300, 3), 120, np.uint8)
    # After F1001's last one-face photo (sorted: "f..." after "F..."): dropped by the protocol.
    cv2.imwrite(str(folder / "HQ" / "f1001_01a_y_blank.jpg"), blank)
    args = ["--benchmark", "stirling", "--stirling-root", str(tmp_path / "stirling"), "-o", str(tmp_path / "out"),
            *_model_opts(synthetic_flame_dir, mica_tar)]
    res = _run(args)
    assert res.returncode == 0, res.stderr  # a skipped photo is no failure
    pred = tmp_path / "out" / "predicted_meshes"
    report = json.loads((tmp_path / "out" / "export_report.json").read_text())
    for rel in ("HQ/F1001/F1001_01A", "HQ/F1002/F1002_01A", "LQ/F1001/F1001_01A"):
        assert (pred / f"{rel}.ply").is_file() and np.load(pred / f"{rel}.npy").shape == (7, 3), (rel, report)
    assert report["written"] == 3 and report["failed"] == {}
    assert list(report["skipped"]) == ["HQ/F1001/F1001_01A:f1001_01a_y_blank.jpg"]
    # A subject none of whose photos has one face gives no output: failed, exit code 1.
    cv2.imwrite(str(folder / "HQ" / "F1003_01A_blank.jpg"), blank)
    res = _run(args)
    assert res.returncode == 1, res.stderr
    report = json.loads((tmp_path / "out" / "export_report.json").read_text())
    assert report["done"] == 3 and report["written"] == 0 and list(report["failed"]) == ["HQ/F1003/F1003_01A"]
    assert not (pred / "HQ/F1003").exists()


# ---------------------------------------------------------------------------------------------
# Image-list lines that leave their root, or hold a NUL byte (issue 21: N5, N6, N7)
# ---------------------------------------------------------------------------------------------
BAD_LINES = ("../../../../precious/victim.jpg", "/etc/passwd", "S1/selfie/IMG_\x00.jpg", "S1/../../x/y.jpg")


def test_export_items_from_bad_list_lines_fail_alone_and_write_nothing_outside(tmp_path):
    from testing.now_export import ExportWriter, now_export_items
    from tests.test_demo_runner import TETRA
    from tests.test_sharding import TinyNetwork

    root = write_now_folder(tmp_path / "now", {}, [("S1/selfie/IMG_1.jpg", b"jpeg", (1.0, 2.0, 3.0, 4.0))])
    write_image_list(root, ["S1/selfie/IMG_1.jpg", *BAD_LINES])
    victim = tmp_path / "precious" / "victim.npy"
    victim.parent.mkdir()
    victim.write_bytes(b"the user's file")
    out = tmp_path / "out"
    items = {it.key: it for it in now_export_items(root, out, detector=None, splits=("validation",))}
    assert items["S1/selfie/IMG_1.jpg"].error is None
    assert items["S1/selfie/IMG_1.jpg"].stem == out / "predicted_meshes" / "S1" / "selfie" / "IMG_1"
    for line in BAD_LINES:
        assert items[line].error and ("outside" in items[line].error or "NUL" in items[line].error), line
        assert "\n" not in items[line].error
    report = ExportWriter(TinyNetwork(), TETRA, ".ply", render=False).run([items[ln] for ln in BAD_LINES])
    assert sorted(report.failed) == sorted(BAD_LINES) and report.written == 0
    assert victim.read_bytes() == b"the user's file" and sorted(victim.parent.iterdir()) == [victim]
    assert not out.exists() or not any(out.rglob("*.ply"))


def test_evaluate_scores_the_good_lines_and_fails_each_bad_one(tmp_path):
    rng = np.random.default_rng(2)
    v, f, lm = ellipsoid_head(3)
    root = write_now_folder(tmp_path / "now", {"S1": make_scan(v, f, lm, noise_mm=0.2, rng=rng)})
    good = "S1/selfie/IMG_1.jpg"
    write_prediction(tmp_path / "pred", good, v, f, lm)
    write_image_list(root, [good, *BAD_LINES])
    res = _run(["--evaluate", "--now-root", str(root), "--predicted", f"m={tmp_path / 'pred'}",
                "--results", str(tmp_path / "res")])
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    summary = json.loads((tmp_path / "res" / "results.json").read_text())[0]
    assert summary["overall"]["n_images"] == 1  # the good line is scored
    assert sorted(summary["failed"]) == sorted(BAD_LINES)
    not_scored = [ln for ln in res.stderr.splitlines() if "not scored" in ln]
    assert len(not_scored) == len(BAD_LINES)
