"""The demo under faults and odd inputs (issue 14): name collisions, kills and resumes, output inside
the input, non-UTF-8 names, NaN predictions, interruptions, two runs on one output folder.

Fast: the stand-in detector and network of tests/test_demo_runner.py, no ../shared. Each test first
reproduces the defect (it fails on the code before the fix), then checks the rule."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path, PurePath

import cv2
import numpy as np
import pytest

import demo
from micalib.inference import records as records
from micalib.inference.demo_runner import DemoRunner
from micalib.inference.output_lock import LOCK_FILE, output_lock
from micalib.inference.outputs import OUTPUT_FILES, output_names
from models.detectors import Face
from tests.test_demo_runner import TETRA, SlowDetector, SlowNetwork
from utils.alignment import ARCFACE_TEMPLATE
from utils.errors import MICAError, run_main

ROOT = Path(__file__).resolve().parent.parent


def _photo(path: Path, seed: int, size: int = 160) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png" if path.suffix.lower() != ".jpg" else ".jpg", img)
    path.write_bytes(buf.tobytes())
    return path


@pytest.fixture()
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    for i in range(6):
        _photo(folder / f"img{i}.png", i)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def _runner(out: Path, net=None, det=None, **kwargs) -> DemoRunner:
    kwargs.setdefault("render", False)
    return DemoRunner(net or SlowNetwork(0), det or SlowDetector(0), TETRA, out / "meshes", out / "arcface", **kwargs)


def _summary(meshes: Path) -> dict[str, dict]:
    text = (meshes / "summary.csv").read_bytes().decode("utf-8")  # strict: must be valid UTF-8
    return {r["input"]: r for r in csv.DictReader(text.splitlines())}


def _code(meshes: Path, name: str) -> np.ndarray:
    return np.load(meshes / name / "identity.npy")


class _Args:
    """demo.py's command line with a stand-in runner (no checkpoint, no FLAME files)."""

    def __init__(self, monkeypatch, make_runner):
        monkeypatch.setattr(demo, "build_runner", lambda args, cfg: make_runner(args))
        monkeypatch.setattr(demo, "setup", lambda args: demo.load_cfg(None, []))  # defaults: no files read


def _demo_main(monkeypatch, inp: Path, out: Path, net=None, det=None, **kwargs) -> int:
    """``run_main(demo.main)`` as ``python demo.py`` runs it; returns the exit code."""
    _Args(monkeypatch, lambda args: DemoRunner(net or SlowNetwork(0), det or SlowDetector(0), TETRA,
                                               Path(args.output), Path(args.arcface), render=False, **kwargs))
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: demo.main(["-i", str(inp), "-o", str(out / "meshes"), "-a", str(out / "arcface")]))
    return exit_info.value.code


# ---------------------------------------------------------------------- 1. name collisions
def test_output_names_follow_the_rule():
    rels = ["face.jpg", "face.JPG", "face.png", "Other.jpg", "other.png", "sub/face.jpg", "fused.jpg",
            "pair.jpg", "pair_1.jpg", "solo_2.jpg", "x.y.png"]
    got = output_names([PurePath(r) for r in rels])
    assert {str(k): v for k, v in got.items()} == {  # written out by hand from the README's rule
        "face.JPG": "face__jpg", "face.jpg": "face__jpg_2", "face.png": "face__png",  # sorted: 'J' < 'j'
        "Other.jpg": "Other__jpg", "other.png": "other__png",
        "sub/face.jpg": "sub/face",  # another folder: no clash
        "fused.jpg": "fused__jpg",  # --fuse writes fused/
        "pair.jpg": "pair", "pair_1.jpg": "pair_1__jpg",  # --all-faces writes pair_0, pair_1, ...
        "solo_2.jpg": "solo_2",  # no input named solo: nothing to clash with
        "x.y.png": "x.y",
    }
    assert len({v.casefold() for v in got.values()}) == len(rels)
    # a renamed input's --all-faces outputs must not land in another input's folder either:
    # x.jpg -> x__jpg writes x__jpg_0, so the input x__jpg_0.jpg takes its extension
    got = output_names([PurePath(r) for r in ("x.jpg", "x.png", "x__jpg_0.jpg")])
    assert {str(k): v for k, v in got.items()} == {"x.jpg": "x__jpg", "x.png": "x__png",
                                                   "x__jpg_0.jpg": "x__jpg_0__jpg"}


def test_same_stem_inputs_keep_their_own_outputs(tmp_path, monkeypatch):
    inp = tmp_path / "in"
    _photo(inp / "face.jpg", 1)
    _photo(inp / "face.JPG", 2)
    _photo(inp / "face.png", 3)
    _photo(inp / "sub" / "face.jpg", 4)
    out = tmp_path / "o"
    assert _demo_main(monkeypatch, inp, out) == 0
    meshes = out / "meshes"
    rows = _summary(meshes)
    assert {k: (r["status"], r["name"], r["outputs"]) for k, r in rows.items()} == {
        "face.JPG": ("ok", "face__jpg", "face__jpg"), "face.jpg": ("ok", "face__jpg_2", "face__jpg_2"),
        "face.png": ("ok", "face__png", "face__png"), "sub/face.jpg": ("ok", "sub/face", "sub/face")}
    # independent oracle: each photo alone (a single-file run has nothing to collide with)
    for rel, name in (("face.JPG", "face__jpg"), ("face.jpg", "face__jpg_2"), ("face.png", "face__png")):
        alone = _runner(tmp_path / f"alone_{name}")
        alone.run(inp / rel)
        np.testing.assert_array_equal(_code(meshes, name), _code(tmp_path / f"alone_{name}" / "meshes", "face"))
        assert (out / "arcface" / f"{name}.npy").is_file()
    assert not (meshes / "face").exists()
    # a re-run finds all three done (and nothing else)
    assert _demo_main(monkeypatch, inp, out) == 0
    assert {r["status"] for r in _summary(meshes).values()} == {"done"}


# ---------------------------------------------------------------------- 2. --all-faces resume
class ThreeFaces(SlowDetector):
    """Three faces side by side: the ArcFace template scaled into each third of the photo."""

    def detect(self, image):
        third = image.shape[1] / 3
        faces = []
        for k in range(3):
            kps = ARCFACE_TEMPLATE.astype(np.float32) * (third / 112.0) + np.float32([k * third, image.shape[0] / 3])
            box = np.float32([k * third, image.shape[0] / 3, (k + 1) * third, image.shape[0] * 2 / 3])
            faces.append(Face(box, kps, 0.9 - 0.1 * k))
        return faces


def test_all_faces_interrupted_after_the_first_face_is_redone_completely(tmp_path, monkeypatch):
    inp = tmp_path / "in"
    _photo(inp / "group.png", 0, size=336)
    import micalib.inference.demo_runner as dr

    real = dr.write_reconstruction
    written = []

    def dies_after_the_first(dst, *a, **k):
        if written:
            raise KeyboardInterrupt  # the process is stopped after group_0 is complete
        real(dst, *a, **k)
        written.append(Path(dst).name)

    monkeypatch.setattr(dr, "write_reconstruction", dies_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        _runner(tmp_path / "o", det=ThreeFaces(0), all_faces=True, batch_size=1).run(inp)
    meshes = tmp_path / "o" / "meshes"
    assert written == ["group_0"] and not (meshes / "group_1").exists()
    row = _summary(meshes)["group.png"]
    assert row["status"] == "pending" and row["outputs"] == ""  # group_0 alone does not count
    monkeypatch.setattr(dr, "write_reconstruction", real)
    results = _runner(tmp_path / "o", det=ThreeFaces(0), all_faces=True, batch_size=1).run(inp)
    assert results[0].status == "ok" and results[0].outputs == ["group_0", "group_1", "group_2"]  # not "done"
    for k in range(3):
        assert all((meshes / f"group_{k}" / f).is_file() for f in OUTPUT_FILES)
    rows = _summary(meshes)
    assert rows["group.png"]["faces"] == "3" and rows["group.png"]["outputs"] == "group_0;group_1;group_2"


@pytest.mark.slow
def test_kill_9_after_the_first_face_then_resume(tmp_path):
    """A real SIGKILL while group_1 is being predicted; the re-run completes group_1 and group_2."""
    inp = tmp_path / "in"
    _photo(inp / "group.png", 0, size=336)
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from tests.test_robustness_demo import _runner, ThreeFaces
        from tests.test_demo_runner import SlowNetwork

        class Stalls(SlowNetwork):
            def predict_identity(self, batch):
                if self.batches:
                    time.sleep(60)  # killed here, after group_0 is written
                return super().predict_identity(batch)

        _runner(Path({str(tmp_path / 'o')!r}), net=Stalls(0), det=ThreeFaces(0), all_faces=True,
                batch_size=1).run(Path({str(inp)!r}))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    meshes = tmp_path / "o" / "meshes"
    deadline = time.time() + 60
    while not (meshes / "group_0" / "kpt68.npy").is_file() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.kill()
    proc.wait()
    assert (meshes / "group_0" / "kpt68.npy").is_file() and not (meshes / "group_1").exists()
    assert not records.record_path(meshes, "group").exists()
    # the dead run's lock is taken over; the input is redone, all three faces
    results = _runner(tmp_path / "o", det=ThreeFaces(0), all_faces=True, batch_size=1).run(inp)
    assert results[0].status == "ok" and len(results[0].outputs) == 3
    assert all((meshes / f"group_{k}" / "mesh.obj").is_file() for k in range(3))


# ---------------------------------------------------------------------- 5. output inside the input
def test_outputs_inside_the_input_folder_are_not_inputs(tmp_path, photos):
    runner = DemoRunner(SlowNetwork(0), SlowDetector(0), TETRA, photos / "out", photos / "arcface", render=True)
    first = runner.run(photos)
    assert (photos / "arcface" / "img0.jpg").is_file() and (photos / "out" / "img0" / "render.png").is_file()
    (photos / "sub" / ".mica").mkdir(parents=True)
    _photo(photos / "sub" / ".mica" / "state.png", 9)
    second = DemoRunner(SlowNetwork(0), SlowDetector(0), TETRA, photos / "out", photos / "arcface",
                        render=True).run(photos)
    assert [r.input for r in second] == [r.input for r in first] == sorted(p.name for p in photos.iterdir()
                                                                         if p.is_file())
    assert {r.status for r in second if r.input != "broken.jpg"} == {"done"}


def test_input_inside_the_output_folder_is_still_read(tmp_path):
    out = tmp_path / "o"
    _photo(out / "meshes" / "photos" / "a.png", 1)
    results = _runner(out).run(out / "meshes" / "photos")
    assert [(r.input, r.status) for r in results] == [("a.png", "ok")]


def test_input_whose_output_folder_is_the_input_folder_fails_untouched(tmp_path):
    """-i inside -o where an input's OUTPUT/NAME is (or, with --all-faces, OUTPUT/NAME_0 contains)
    the input folder: that input fails in one line, nothing is written among the photos; the
    other inputs are done (as track.py refuses OUT/NAME overlapping its input)."""
    meshes = tmp_path / "o" / "meshes"
    inp = meshes / "img"
    _photo(inp / "img.png", 1)
    _photo(inp / "other.png", 2)
    (inp / "mesh.obj").write_text("the user's own mesh")
    before = {p.name: p.read_bytes() for p in inp.iterdir()}
    results = {r.input: r for r in _runner(tmp_path / "o").run(inp)}
    assert results["img.png"].status == "failed" and "is the input folder" in results["img.png"].message
    assert "\n" not in results["img.png"].message
    assert results["other.png"].status == "ok"
    assert {p.name: p.read_bytes() for p in inp.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in inp.iterdir() if p.is_dir()) == []
    # with --all-faces the input's folders are NAME_0, NAME_1, ...: one of them holding the input
    deep = meshes / "b_0" / "x"
    _photo(deep / "b.png", 3)
    results = {r.input: r for r in _runner(tmp_path / "o", all_faces=True).run(deep)}
    assert results["b.png"].status == "failed" and "contains the input folder" in results["b.png"].message
    assert sorted(p.relative_to(deep.parent).as_posix() for p in deep.parent.rglob("*")) == ["x", "x/b.png"]


# ---------------------------------------------------------------------- 6. non-UTF-8 names
def test_non_utf8_file_name_keeps_the_summary_valid_and_the_name_lossless(tmp_path, photos):
    raw = b"caf\xe9.png"
    try:
        path = photos / os.fsdecode(raw)
        _photo(path, 7)
    except (OSError, UnicodeError):
        pytest.skip("this file system does not take non-UTF-8 names")
    results = _runner(tmp_path / "o").run(photos)
    meshes = tmp_path / "o" / "meshes"
    rows = _summary(meshes)
    row = rows["caf\\xe9.png"]
    assert row["status"] == "ok" and row["input_hex"] == raw.hex() and row["outputs"] == "caf\\xe9"
    assert bytes.fromhex(row["input_hex"]) == raw
    assert rows["img0.png"]["input_hex"] == ""
    assert b"caf\xe9" in os.listdir(os.fsencode(meshes))  # the output folder has the very same bytes
    assert (meshes / os.fsdecode(b"caf\xe9") / "mesh.obj").is_file()
    json.loads((meshes / "summary.json").read_bytes().decode("utf-8"))
    assert [r.status for r in results if r.input == os.fsdecode(raw)] == ["ok"]
    again = {r.input: r.status for r in _runner(tmp_path / "o").run(photos)}
    assert again[os.fsdecode(raw)] == "done"  # the record read back names the same input


# ---------------------------------------------------------------------- 7. non-finite predictions
class NaNForSecond(SlowNetwork):
    """Row 1 of the first batch is NaN (a broken checkpoint can do this for some inputs)."""

    def predict_identity(self, batch):
        codes = super().predict_identity(batch)
        if len(self.batches) == 1:
            codes[1, 5] = np.nan
        return codes


def test_a_nan_prediction_fails_only_its_input(tmp_path, photos, monkeypatch):
    lines = []
    from loguru import logger

    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    try:
        code = _demo_main(monkeypatch, photos, tmp_path / "o", net=NaNForSecond(0), batch_size=4)
    finally:
        logger.remove(sink)
    meshes = tmp_path / "o" / "meshes"
    rows = _summary(meshes)
    assert code == 1
    # the first batch is img0..img3 (broken.jpg fails before the network): its row 1 is img1
    assert rows["img1.png"]["status"] == "failed" and "non-finite" in rows["img1.png"]["message"]
    assert not (meshes / "img1").exists()
    ok = [f"img{i}.png" for i in (0, 2, 3, 4, 5)]
    assert [k for k, r in rows.items() if r["status"] == "ok"] == ok
    for k in ok:
        assert np.isfinite(_code(meshes, Path(k).stem)).all()
    nan_lines = [line for line in lines if "non-finite" in line and not line.startswith("failed:")]  # not the recap
    assert len(nan_lines) == 1 and "img1.png" in nan_lines[0] and "\n" not in nan_lines[0]
    # a failed input is retried on the next run
    assert _demo_main(monkeypatch, photos, tmp_path / "o", batch_size=4) == 1  # broken.jpg still fails
    assert _summary(meshes)["img1.png"]["status"] == "ok"


# ---------------------------------------------------------------------- 11. no-face message
def test_no_face_with_mtcnn_names_the_search_size_key(tmp_path):
    from models.detectors import MTCNN

    inp = tmp_path / "in"
    inp.mkdir()
    cv2.imwrite(str(inp / "grey.png"), np.full((400, 400, 3), 90, np.uint8))
    results = _runner(tmp_path / "o", det=MTCNN(max_side=320)).run(inp)
    assert results[0].status == "failed"
    assert "no face found" in results[0].message and "detector.mtcnn_max_side" in results[0].message
    assert "320" in results[0].message
    other = _runner(tmp_path / "o2", det=type("NoFaces", (), {"detect": lambda self, img: []})()).run(inp)
    assert "mtcnn_max_side" not in other[0].message and "no face found" in other[0].message


# ---------------------------------------------------------------------- 14. summary completeness
class StopsAtThird(SlowNetwork):
    def predict_identity(self, batch):
        if len(self.batches) == 2:
            raise KeyboardInterrupt
        return super().predict_identity(batch)


@pytest.mark.parametrize("workers", [1, 3])
def test_interrupt_leaves_a_summary_of_every_input_and_exit_130(tmp_path, photos, monkeypatch, workers):
    out = tmp_path / "o"
    code = _demo_main(monkeypatch, photos, out, net=StopsAtThird(0), batch_size=2, workers=workers)
    assert code == 130
    meshes = out / "meshes"
    rows = _summary(meshes)
    assert sorted(rows) == sorted(p.name for p in photos.iterdir())  # every input has a row
    status = {k: r["status"] for k, r in rows.items()}
    assert status == {"broken.jpg": "failed", "img0.png": "ok", "img1.png": "ok", "img2.png": "ok",
                      "img3.png": "ok", "img4.png": "pending", "img5.png": "pending"}
    for k in ("img4.png", "img5.png"):
        assert rows[k]["outputs"] == "" and not records.record_path(meshes, Path(k).stem).exists()
    first = {k: r for k, r in rows.items() if r["status"] == "ok"}
    assert not (meshes / LOCK_FILE).exists()  # released on the way out
    # resume: the pending ones are done now, and the "done" rows are as complete as the "ok" rows were
    assert _demo_main(monkeypatch, photos, out, batch_size=2, workers=workers) == 1  # broken.jpg
    rows = _summary(meshes)
    assert {k: r["status"] for k, r in rows.items()} == {**status, "img0.png": "done", "img1.png": "done",
                                                         "img2.png": "done", "img3.png": "done",
                                                         "img4.png": "ok", "img5.png": "ok"}
    for k, r in first.items():
        assert (rows[k]["outputs"], rows[k]["faces"], rows[k]["score"]) == (r["outputs"], r["faces"], r["score"])
        assert r["faces"] == "1" and float(r["score"]) == pytest.approx(0.99)


@pytest.mark.slow
def test_sigterm_writes_the_summary_and_exits_130(tmp_path, photos):
    script = tmp_path / "run.py"
    out = tmp_path / "o"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        import demo
        from micalib.inference.demo_runner import DemoRunner
        from tests.test_demo_runner import SlowNetwork, SlowDetector, TETRA
        from utils.errors import run_main

        class Stalls(SlowNetwork):
            def predict_identity(self, batch):
                if self.batches:
                    Path({str(tmp_path / 'stalled')!r}).touch()
                    time.sleep(60)
                return super().predict_identity(batch)

        demo.setup = lambda args: demo.load_cfg(None, [])
        demo.build_runner = lambda args, cfg: DemoRunner(Stalls(0), SlowDetector(0), TETRA, Path(args.output),
                                                         Path(args.arcface), render=False, batch_size=2)
        run_main(lambda: demo.main(["-i", {str(photos)!r}, "-o", {str(out / 'meshes')!r},
                                    "-a", {str(out / 'arcface')!r}]))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while not (tmp_path / "stalled").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    rows = _summary(out / "meshes")
    assert sorted(rows) == sorted(p.name for p in photos.iterdir())
    assert [k for k, r in rows.items() if r["status"] == "ok"] == ["img0.png", "img1.png"]  # the first batch
    assert [k for k, r in rows.items() if r["status"] == "pending"] == [f"img{i}.png" for i in range(2, 6)]


# ---------------------------------------------------------------------- records
def test_done_means_a_record_and_every_listed_file(tmp_path, photos):
    _runner(tmp_path / "o").run(photos)
    meshes = tmp_path / "o" / "meshes"
    record = records.read_record(meshes, "img1")
    assert record.input == "img1.png" and record.outputs == ["img1"] and record.status == "ok"
    assert set(record.files) == set(OUTPUT_FILES)
    raw = json.loads(records.record_path(meshes, "img1").read_text())
    assert raw["faces"] == 1 and raw["score"] == pytest.approx(0.99) and raw["checkpoint"] == ""
    failed = records.read_record(meshes, "broken")
    assert failed.status == "failed" and "broken.jpg" in failed.message
    assert records.is_done(meshes, record, "img1.png", [])
    assert not records.is_done(meshes, record, "img1.jpg", [])  # another input of that name
    assert not records.is_done(meshes, record, "img1.png", ["render.png"])  # this run renders, that one did not
    (meshes / "img1" / "kpt7.npy").unlink()
    assert not records.is_done(meshes, record, "img1.png", [])
    (meshes / "img2" / "mesh.ply").write_bytes(b"")  # what a power failure can leave
    records.record_path(meshes, "img3").write_bytes(b"")
    (meshes / "img4" / "mesh.ply").unlink()
    records.remove_record(meshes, "img4")  # outputs of a run killed half-way through img4
    results = {r.input: r.status for r in _runner(tmp_path / "o").run(photos)}
    assert results == {"broken.jpg": "failed", "img0.png": "done", "img1.png": "ok", "img2.png": "ok",
                       "img3.png": "ok", "img4.png": "ok", "img5.png": "done"}


def test_checkpoint_hash_prefix(tmp_path):
    import hashlib

    f = tmp_path / "mica.tar"
    f.write_bytes(b"weights" * 1000)
    assert records.checkpoint_id(f) == hashlib.sha256(b"weights" * 1000).hexdigest()[:16]
    assert records.checkpoint_id(None) == "" and records.checkpoint_id(tmp_path / "missing") == ""


# ---------------------------------------------------------------------- one run per output folder
_HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from micalib.inference.output_lock import output_lock
with output_lock({out!r}):
    print("locked", flush=True)
    time.sleep(60)
"""


def _hold_lock(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD.format(root=str(ROOT), out=str(out))],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_is_refused_and_a_dead_owners_lock_taken_over(tmp_path, photos, monkeypatch):
    out = tmp_path / "o"
    holder = _hold_lock(out / "meshes")
    try:
        lock = json.loads((out / "meshes" / LOCK_FILE).read_text())
        assert lock["pid"] == holder.pid and lock["host"]
        with pytest.raises(MICAError) as e:
            demo_args = ["-i", str(photos), "-o", str(out / "meshes"), "-a", str(out / "arcface")]
            built = []
            _Args(monkeypatch, lambda args: built.append(1))
            demo.main(demo_args)
        assert f"pid {holder.pid}" in str(e.value) and "\n" not in str(e.value)
        assert built == []  # refused before the network was loaded
        with pytest.raises(MICAError):
            _runner(out).run(photos)
        # a shard of a sharded run does not take the lock and writes only its records
        shard = _runner(out, lock=False, summary=False)
        shard.run(photos)
        assert not (out / "meshes" / "summary.csv").exists()
        assert records.read_record(out / "meshes", "img0").status == "ok"
    finally:
        holder.kill()  # kill -9: the lock file stays behind, with a dead PID in it
        holder.wait()
    assert json.loads((out / "meshes" / LOCK_FILE).read_text())["pid"] == holder.pid
    results = _runner(out).run(photos)  # taken over
    assert {r.status for r in results} == {"done", "failed"}
    assert not (out / "meshes" / LOCK_FILE).exists()
    # the shard's records merge into the same summary a normal run writes
    merged = records.rebuild_summary(out / "meshes", [(r.input, r.name) for r in results])
    assert [(m.input, m.outputs, m.faces, m.score) for m in merged] == [
        (r.input, r.outputs, r.faces, r.score) for r in results]
    assert [m.status for m in merged] == ["failed"] + ["ok"] * 6


def test_without_flock_the_pid_and_host_decide(tmp_path, monkeypatch):
    import socket

    import micalib.inference.output_lock as ol

    monkeypatch.setattr(ol, "fcntl", None)  # as on Windows
    lock = tmp_path / LOCK_FILE
    lock.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    lock.write_text(json.dumps({"host": host, "pid": dead.pid}))
    with output_lock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    for owner in ({"host": host, "pid": os.getppid()}, {"host": host + "-elsewhere", "pid": dead.pid}):
        lock.write_text(json.dumps(owner))
        with pytest.raises(MICAError, match=f"pid {owner['pid']} on {owner['host']}"):
            with output_lock(tmp_path):
                pass
        assert json.loads(lock.read_text()) == owner  # left alone


def test_lock_on_an_output_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "out").write_text("a file, not a folder")
    with pytest.raises(MICAError, match="out") as e:
        with output_lock(tmp_path / "out"):
            pass
    assert "\n" not in str(e.value)


def test_the_lock_nests_in_one_process(tmp_path):
    with output_lock(tmp_path):
        with output_lock(tmp_path):
            assert (tmp_path / LOCK_FILE).exists()
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


def test_exit_code_is_1_only_when_an_input_failed(tmp_path, photos, monkeypatch):
    assert _demo_main(monkeypatch, photos, tmp_path / "a") == 1
    (photos / "broken.jpg").unlink()
    assert _demo_main(monkeypatch, photos, tmp_path / "b") == 0


# ---------------------------------------------------------------------- review of the merged pipeline
@pytest.mark.parametrize("which", ["arcface", "output"])
def test_output_or_crop_folder_equal_to_the_input_is_refused(tmp_path, photos, which):
    """``-a X -i X`` overwrote the user's photos with crops; ``-o X -i X`` re-read its renders on
    every run. Both are refused in one line before anything is written."""
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    out, arc = (photos, tmp_path / "arc") if which == "output" else (tmp_path / "o", photos)
    with pytest.raises(MICAError, match="input folder"):
        DemoRunner(SlowNetwork(0), SlowDetector(0), TETRA, out, arc, render=False).run(photos)
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


def test_an_earlier_runs_output_and_crop_folders_are_not_inputs(tmp_path, photos):
    """Folders another run wrote (its -o holds .mica/, its -a is marked too) stay out of the inputs
    of a later run with other -o/-a."""
    first = DemoRunner(SlowNetwork(0), SlowDetector(0), TETRA, photos / "out", photos / "arcface",
                       render=True).run(photos)
    later = _runner(tmp_path / "o").run(photos)
    assert [r.input for r in later] == [r.input for r in first]


def test_switching_all_faces_redoes_the_input(tmp_path):
    """A record made without --all-faces does not make an --all-faces run done, and back."""
    inp = tmp_path / "in"
    _photo(inp / "group.png", 0, size=336)
    meshes = tmp_path / "o" / "meshes"
    one = _runner(tmp_path / "o", det=ThreeFaces(0)).run(inp)
    assert one[0].status == "ok" and one[0].outputs == ["group"]
    every = _runner(tmp_path / "o", det=ThreeFaces(0), all_faces=True).run(inp)
    assert every[0].status == "ok" and every[0].outputs == ["group_0", "group_1", "group_2"]
    assert all((meshes / f"group_{k}" / "identity.npy").is_file() for k in range(3))
    (meshes / "group").rename(tmp_path / "moved")  # the single-face outputs are gone
    back = _runner(tmp_path / "o", det=ThreeFaces(0)).run(inp)
    assert back[0].status == "ok" and (meshes / "group" / "identity.npy").is_file()
    again = _runner(tmp_path / "o", det=ThreeFaces(0)).run(inp)
    assert again[0].status == "done"


def test_missing_crops_make_the_input_not_done(tmp_path, photos):
    """The aligned crop and network input are outputs too: deleted, or another -a, means redo."""
    _runner(tmp_path / "o").run(photos)
    arc = tmp_path / "o" / "arcface"
    (arc / "img1.jpg").unlink()
    second = {r.input: r.status for r in _runner(tmp_path / "o").run(photos)}
    assert second["img1.png"] == "ok" and second["img2.png"] == "done"
    assert (arc / "img1.jpg").is_file()
    other = DemoRunner(SlowNetwork(0), SlowDetector(0), TETRA, tmp_path / "o" / "meshes", tmp_path / "arc2",
                       render=False).run(photos)
    assert {r.status for r in other if r.input != "broken.jpg"} == {"ok"}
    assert (tmp_path / "arc2" / "img0.npy").is_file()


def test_pending_rows_after_an_interrupt_carry_no_faces_or_score(tmp_path, photos, monkeypatch):
    import micalib.inference.demo_runner as dr

    real = dr.write_reconstruction
    calls = []

    def stop_second(dst, *a, **k):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(dst, *a, **k)

    monkeypatch.setattr(dr, "write_reconstruction", stop_second)
    with pytest.raises(KeyboardInterrupt):
        _runner(tmp_path / "o", batch_size=4).run(photos)
    rows = _summary(tmp_path / "o" / "meshes")
    pending = [r for r in rows.values() if r["status"] == "pending"]
    assert pending and all(r["faces"] in ("", "0") and r["score"] == "" for r in pending)


def test_interrupt_while_the_model_loads_still_writes_a_summary(tmp_path, photos, monkeypatch):
    """Ctrl-C before the inputs are listed (the model loads for seconds) still leaves a summary of
    every input, all pending, and exit code 130."""
    def loading(args, cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "build_runner", loading)
    monkeypatch.setattr(demo, "setup", lambda args: demo.load_cfg(None, []))
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: demo.main(["-i", str(photos), "-o", str(out / "meshes"), "-a", str(out / "arcface")]))
    assert exit_info.value.code == 130
    rows = _summary(out / "meshes")
    assert set(rows) == {p.name for p in photos.iterdir()} and {r["status"] for r in rows.values()} == {"pending"}


def test_fuse_resumes_and_rebuilds_the_fused_mesh_from_the_done_inputs(tmp_path):
    """--fuse used to redo every input on every run: a re-run now finds them done, and the fused
    mesh (deleted, or never written because the first run stopped) is rebuilt from their saved
    identities, the same as a run that made every member itself."""
    inp = tmp_path / "in"
    for i in range(3):
        _photo(inp / "person" / f"p{i}.png", i)
    first = _runner(tmp_path / "o", fuse=True).run(inp)
    fused = tmp_path / "o" / "meshes" / "person" / "fused"
    assert {r.status for r in first} == {"ok"} and (fused / "identity.npy").is_file()
    reference = np.load(fused / "identity.npy")
    (fused / "identity.npy").unlink()
    again = _runner(tmp_path / "o", fuse=True).run(inp)
    assert {r.status for r in again} == {"done"}
    np.testing.assert_array_equal(np.load(fused / "identity.npy"), reference)
    spread = json.loads((fused / "spread.json").read_text())
    assert spread["images"] == ["person/p0", "person/p1", "person/p2"]


# ---------------------------------------------------------------------- issue 21: damaged outputs, records
DAMAGE = {  # output folder or crop -> how it is damaged after a complete run
    "img0/mesh.ply": lambda b: b[:100],  # cut to 100 bytes
    "img1/identity.npy": lambda b: b[:-40],  # truncated
    "img2/mesh.obj": lambda b: np.random.default_rng(0).bytes(len(b) // 2),  # random bytes
    "-a/img3.jpg": lambda b: b[: len(b) // 3],  # a truncated crop
    "img4/kpt68.npy": lambda b: b + b"x",  # one byte more
}


def _damage(tmp_path: Path) -> None:
    for key, how in DAMAGE.items():
        path = tmp_path / "o" / ("arcface" if key.startswith("-a/") else "meshes") / key.removeprefix("-a/")
        path.write_bytes(how(path.read_bytes()))


def test_damaged_outputs_of_done_inputs_are_redone(tmp_path, photos):
    """Issue 21, D13: only empty files were caught; every damaged output now redoes its input,
    and merge_summaries counts it pending (S7)."""
    from micalib.inference import merge_summaries

    first = _runner(tmp_path / "o").run(photos)
    assert {r.input: r.status for r in first if r.input != "broken.jpg"} == {f"img{i}.png": "ok" for i in range(6)}
    intact = {p: p.read_bytes() for p in (tmp_path / "o" / "meshes" / "img5").iterdir()}
    _damage(tmp_path)
    rows = {r.input: r.status for r in merge_summaries.merge(tmp_path / "o" / "meshes", photos, tmp_path / "o" / "arcface")}
    assert [k for k, v in sorted(rows.items()) if v == "pending"] == [f"img{i}.png" for i in range(5)]
    again = {r.input: r.status for r in _runner(tmp_path / "o").run(photos)}
    assert {k: again[k] for k in rows if k != "broken.jpg"} == {**{f"img{i}.png": "ok" for i in range(5)}, "img5.png": "done"}
    assert {p: p.read_bytes() for p in (tmp_path / "o" / "meshes" / "img5").iterdir()} == intact
    from utils.mesh import read_mesh

    assert read_mesh(tmp_path / "o" / "meshes" / "img0" / "mesh.ply")[0].shape == (4, 3)  # whole again
    assert read_mesh(tmp_path / "o" / "meshes" / "img2" / "mesh.obj")[0].shape == (4, 3)
    assert np.load(tmp_path / "o" / "meshes" / "img1" / "identity.npy").shape == (300,)
    assert np.load(tmp_path / "o" / "meshes" / "img4" / "kpt68.npy").shape == (1, 68, 3)
    assert cv2.imread(str(tmp_path / "o" / "arcface" / "img3.jpg")).shape == (224, 224, 3)
    assert {r.status for r in _runner(tmp_path / "o").run(photos) if r.input != "broken.jpg"} == {"done"}


def _edit_record(meshes: Path, name: str, **changes) -> None:
    path = meshes / ".mica" / "done" / f"{name}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_merge_summaries_refuses_records_that_lie(tmp_path, photos):
    """Issue 21: a record with ``"outputs": 123`` (S4: a TypeError traceback) or a file list leading
    out of -o (S6: /etc/passwd counted as an output) is not trusted: its input is pending."""
    from micalib.inference import merge_summaries

    _runner(tmp_path / "o").run(photos)
    meshes = tmp_path / "o" / "meshes"
    _edit_record(meshes, "img0", outputs=123)
    _edit_record(meshes, "img1", files=["../../../../../../../../etc/passwd"], sizes={})
    _edit_record(meshes, "img2", outputs=["../in"], files=["img0.png"], sizes={})
    rows = {r.input: r for r in merge_summaries.merge(meshes, photos)}
    assert rows["img0.png"].status == "pending" and "unreadable" in rows["img0.png"].message
    assert rows["img1.png"].status == "pending" and rows["img2.png"].status == "pending"
    assert [rows[f"img{i}.png"].status for i in range(3, 6)] == ["ok"] * 3
    assert merge_summaries.main([str(meshes), "-i", str(photos)]) == 3  # pending: run again


def test_merge_summaries_with_a_wrong_input_folder_warns_with_the_count(tmp_path, photos):
    from loguru import logger

    from micalib.inference import merge_summaries

    _runner(tmp_path / "o").run(photos)
    other = tmp_path / "two"
    _photo(other / "img0.png", 0)
    _photo(other / "new.png", 9)
    lines = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    try:
        rows = merge_summaries.merge(tmp_path / "o" / "meshes", other)
    finally:
        logger.remove(sink)
    assert [r.status for r in rows] == ["ok", "pending"]
    assert any("6 of the 7 completion records" in ln and "-i" in ln for ln in lines), lines


class HugeHeads(SlowNetwork):
    """Finite but absurd: every mesh 1000 times too large (a checkpoint with weights x1e30 does this)."""

    def decode(self, identity):
        out = super().decode(identity)
        return {k: v * 1000 for k, v in out.items()}


def test_an_absurd_but_finite_mesh_fails_its_input(tmp_path, photos):
    results = _runner(tmp_path / "o", net=HugeHeads(0)).run(photos)
    failed = [r for r in results if r.input != "broken.jpg"]
    assert {r.status for r in failed} == {"failed"}
    assert all("mm across" in r.message and "not a head" in r.message for r in failed)
    assert not any((tmp_path / "o" / "meshes").glob("img*/mesh.ply"))
