"""demo.py end to end: face photos (scikit-image's portrait, tests/photos.py), the bundled MTCNN detector, random network weights in the
mica.tar format and a synthetic FLAME model in the real file format."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import trimesh

from configs.config import PROJECT_ROOT
from utils.errors import USER_ERRORS

ARCH = "iresnet18"  # the checkpoint format is the same for every depth; 18 keeps CPU tests fast


@pytest.fixture(scope="module")
def mica_files(tmp_path_factory, synthetic_flame_dir):
    from tests.synthetic_weights import write_random_mica_tar

    folder = tmp_path_factory.mktemp("weights")
    tar = folder / "mica.tar"
    write_random_mica_tar(tar, arch=ARCH, seed=0)
    return tar


def _opts(flame_dir: Path, tar: Path) -> list[str]:
    return [
        "model.arch", ARCH,
        "pretrained_model_path", str(tar),
        "model.flame_model_path", str(flame_dir / "generic_model.pkl"),
        "model.flame_lmk_embedding_path", str(flame_dir / "landmark_embedding.npy"),
        "model.topology_path", str(flame_dir / "head_template.obj"),
        "model.flame_masks_path", str(flame_dir / "FLAME_masks.pkl"),
        "detector.antelopev2_dir", "/nonexistent/antelopev2",
    ]


def _run(args: list[str], cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "demo.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _bad_inputs(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image")
    good = cv2.imencode(".jpg", np.full((300, 300, 3), 128, np.uint8))[1].tobytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(folder / "noface.png"), np.full((320, 320, 3), 90, np.uint8))
    return {"empty.jpg", "text.jpg", "truncated.jpg", "tiny.png", "noface.png"}


def _landmarks_from_mesh(vertices: np.ndarray, flame_dir: Path) -> np.ndarray:
    """Independent oracle: the 68 'full' landmarks by barycentric interpolation on the mesh."""
    from models.flame_io import load_landmark_embedding

    emb = load_landmark_embedding(flame_dir / "landmark_embedding.npy")
    faces = trimesh.load(flame_dir / "head_template.obj", process=False).faces
    idx = np.asarray(emb.full_lmk_faces_idx).reshape(-1)
    bary = np.asarray(emb.full_lmk_bary_coords).reshape(-1, 3)
    tri = vertices[faces[idx]]  # (68, 3, 3)
    return (tri * bary[:, :, None]).sum(1)


@pytest.mark.slow
@pytest.mark.parametrize("photos, flame", [
    ("face_photos_dir", "synthetic_flame_dir"),
    # real photos of several people on the real FLAME topology, landmark embedding and masks
    pytest.param("faces_dir", "real_flame_dir", marks=pytest.mark.shared_data)])
def test_demo_end_to_end(tmp_path, photos, flame, mica_files, request):
    face_photos_dir, synthetic_flame_dir = request.getfixturevalue(photos), request.getfixturevalue(flame)
    inp = tmp_path / "input"
    shutil.copytree(face_photos_dir, inp)
    bad = _bad_inputs(inp / "bad")
    out, arc = tmp_path / "out", tmp_path / "arcface"
    res = _run(["-i", str(inp), "-o", str(out), "-a", str(arc), "--batch-size", "3", "--device", "cpu",
                *_opts(synthetic_flame_dir, mica_files)])
    assert res.returncode == 1, res.stderr  # the bad inputs failed
    assert "Traceback" not in res.stderr

    rows = {r["input"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert json.loads((out / "summary.json").read_text())
    photos = sorted(p.name for p in face_photos_dir.iterdir())
    for name in photos:
        assert rows[name]["status"] == "ok", rows[name]
        stem = Path(name).stem
        d = out / stem
        identity = np.load(d / "identity.npy")
        kpt7, kpt68 = np.load(d / "kpt7.npy"), np.load(d / "kpt68.npy")
        assert identity.shape == (300,) and np.isfinite(identity).all()
        assert kpt7.shape == (7, 3) and kpt68.shape == (1, 68, 3)
        mesh = trimesh.load(d / "mesh.ply", process=False)
        obj = trimesh.load(d / "mesh.obj", process=False)
        np.testing.assert_allclose(mesh.vertices, obj.vertices, atol=1e-3)
        # millimetres: a head is 100-400 mm across (FLAME in metres would be 0.1-0.4)
        extent = mesh.vertices.max(0) - mesh.vertices.min(0)
        assert 100 < extent.max() < 400, extent
        # landmarks agree with the written mesh (independent barycentric computation)
        lmk = _landmarks_from_mesh(np.asarray(mesh.vertices), synthetic_flame_dir)
        np.testing.assert_allclose(kpt68[0], lmk, atol=1e-2)
        np.testing.assert_allclose(kpt7, lmk[17:][[19, 22, 25, 28, 16, 31, 37]], atol=1e-2)
        render = cv2.imread(str(d / "render.png"))
        assert render is not None and render.shape[0] >= 112 and render.std() > 5
        x = np.load(arc / f"{stem}.npy")
        assert x.shape == (3, 112, 112) and x.dtype == np.float32 and -1.0 <= x.min() and x.max() <= 1.0
        crop = cv2.imread(str(arc / f"{stem}.jpg"))
        assert crop.shape == (224, 224, 3)
    for name in bad:
        row = rows[f"bad/{name}"]
        assert row["status"] == "failed" and row["message"], row
        assert name in row["message"] or "no face" in row["message"]
        assert not (out / "bad" / Path(name).stem).exists()
    assert not list(out.rglob("*.tmp*")) and not list(arc.rglob("*.tmp*"))

    # re-running skips finished images; their rows are as complete as the first run's
    checkpoint = hashlib.sha256(mica_files.read_bytes()).hexdigest()[:16]
    assert {rows[name]["checkpoint"] for name in photos} == {checkpoint}
    again = _run(["-i", str(face_photos_dir), "-o", str(out), "-a", str(arc), "--device", "cpu", "--no-render",
                  *_opts(synthetic_flame_dir, mica_files)])
    assert again.returncode == 0, again.stderr
    rerun = list(csv.DictReader(open(out / "summary.csv")))
    assert {r["status"] for r in rerun} == {"done"}
    for r in rerun:
        first = rows[r["input"]]
        assert (r["outputs"], r["faces"], r["score"], r["checkpoint"]) == (
            first["outputs"], first["faces"], first["score"], checkpoint)
        assert int(r["faces"]) == 1 and 0 < float(r["score"]) <= 1


@pytest.mark.slow
def test_aligned_inputs_and_identical_results(tmp_path, face_photos_dir, synthetic_flame_dir, mica_files):
    """--aligned on the 224 crops written by a first run gives (nearly) the same identity."""
    photo = sorted(face_photos_dir.iterdir())[0]
    out1, arc = tmp_path / "o1", tmp_path / "arc"
    assert _run(["-i", str(photo), "-o", str(out1), "-a", str(arc), "--no-render",
                 *_opts(synthetic_flame_dir, mica_files)]).returncode == 0
    aligned_dir = tmp_path / "aligned"
    aligned_dir.mkdir()
    shutil.copy(arc / f"{photo.stem}.jpg", aligned_dir / f"{photo.stem}.jpg")
    out2 = tmp_path / "o2"
    res = _run(["-i", str(aligned_dir), "-o", str(out2), "-a", str(tmp_path / "arc2"), "--aligned", "--no-render",
                *_opts(synthetic_flame_dir, mica_files)])
    assert res.returncode == 0, res.stderr
    a, b = np.load(out1 / photo.stem / "identity.npy"), np.load(out2 / photo.stem / "identity.npy")
    cos = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert cos > 0.95  # the 224 crop was JPEG-compressed and resampled; still the same face


def _refused(argv: list[str], *needles: str) -> None:
    """demo.py's main (in process) refuses ``argv`` with a one-line user error naming ``needles``."""
    import demo

    with pytest.raises(USER_ERRORS) as e:
        demo.main(argv)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_bad_options_are_refused(tmp_path):
    _refused(["-i", str(tmp_path), "-o", str(tmp_path / "o"), "--all-faces", "--fuse"], "--fuse", "--all-faces")
    _refused(["-i", str(tmp_path), "-o", str(tmp_path / "o"), "--workers", "0"], "--workers")
    _refused(["-i", str(tmp_path / "nope"), "-o", str(tmp_path / "o")], "nope", "-i")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_all_faces_and_fuse(tmp_path, face_photos_dir, synthetic_flame_dir, mica_files):
    photos = sorted(p for p in face_photos_dir.iterdir())[:2]
    imgs = [cv2.resize(cv2.imread(str(p)), (320, 400)) for p in photos]
    pair = np.concatenate(imgs, axis=1)
    inp = tmp_path / "in"
    (inp / "person").mkdir(parents=True)
    cv2.imwrite(str(inp / "pair.jpg"), pair)
    shutil.copy(photos[0], inp / "person" / f"a{photos[0].suffix}")
    shutil.copy(photos[0], inp / "person" / f"b{photos[0].suffix}")
    out = tmp_path / "out"
    res = _run(["-i", str(inp / "pair.jpg"), "-o", str(out), "-a", str(tmp_path / "arc"), "--all-faces", "--no-render",
                *_opts(synthetic_flame_dir, mica_files)])
    assert res.returncode == 0, res.stderr
    assert (out / "pair_0" / "mesh.ply").is_file() and (out / "pair_1" / "mesh.ply").is_file()
    ida, idb = np.load(out / "pair_0" / "identity.npy"), np.load(out / "pair_1" / "identity.npy")
    assert not np.allclose(ida, idb)  # two different people
    res = _run(["-i", str(inp / "person"), "-o", str(out), "-a", str(tmp_path / "arc"), "--fuse", "--no-render", "--glb",
                *_opts(synthetic_flame_dir, mica_files)])
    assert res.returncode == 0, res.stderr
    # --glb: mesh.glb in metres beside every mesh.ply (fused too), read by the spec evaluator; the page
    from tests.gltf_spec import Glb

    for name in ("a", "fused", "pair_0"):
        glb = Glb((out / name / "mesh.glb").read_bytes())
        np.testing.assert_allclose(glb.skinned(0, None), trimesh.load(out / name / "mesh.ply", process=False).vertices / 1000,
                                   atol=1e-7)
    assert f"viewer page: {out / 'index.html'}" in res.stdout and (out / "index.html").is_file()
    spread = json.loads((out / "fused" / "spread.json").read_text())
    assert len(spread["images"]) == 2
    # the same photo twice: the fused identity equals each image's identity
    fused = np.load(out / "fused" / "identity.npy")
    np.testing.assert_allclose(fused, np.load(out / "a" / "identity.npy"), atol=1e-5)
    assert max(spread["max_vertex_deviation_mm"]) < 1e-3


def test_missing_flame_file_is_one_line(tmp_path, face_photos_dir, synthetic_flame_dir, mica_files):
    opts = _opts(synthetic_flame_dir, mica_files)
    opts[opts.index("model.flame_model_path") + 1] = str(tmp_path / "missing" / "generic_model.pkl")
    _refused(["-i", str(face_photos_dir), "-o", str(tmp_path / "o"), *opts], "generic_model.pkl")


def test_missing_checkpoint_is_one_line(tmp_path, face_photos_dir, synthetic_flame_dir, mica_files):
    _refused(["-m", str(tmp_path / "nope.tar"), "-i", str(face_photos_dir), "-o", str(tmp_path / "o"),
              *_opts(synthetic_flame_dir, mica_files)], "nope.tar")
