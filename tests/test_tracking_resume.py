"""Re-runs of track.py: options recorded and compared, rows of a killed run kept, damaged frames
redone, stale temporaries removed, inputs and assets checked before the work."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from micalib.tracking.outputs import read_frame
from tests.synthetic_tracking import argv_of_last_run, asset_opts, track_synthetic
from utils.errors import MICAError

ROOT = Path(__file__).resolve().parent.parent
N = 6


def _argv(out: Path) -> list:
    return argv_of_last_run(out, video=False)


def _rows(out: Path) -> list[dict]:
    with open(out / "tracking.csv", newline="") as f:
        return list(csv.DictReader(f))


def _set(argv: list, flag: str, value: str) -> list:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


def test_rerun_with_other_options_is_refused_and_overwrite_starts_again(tmp_path):
    import track

    *_, out = track_synthetic(tmp_path, real=False, n_frames=N, noise_px=0.3)
    argv = _argv(out)
    with pytest.raises(MICAError, match=r"--image-size: 512 before, 256 now.*--overwrite"):
        track.main(_set(argv, "--image-size", "256"))
    with pytest.raises(MICAError, match=r"tracker.\* config: tracker\.bbox_scale \S+ before, 2\.0 now\)"):
        track.main(argv + ["tracker.bbox_scale", "2.0"])
    record = json.loads((out / ".track_run.json").read_text())  # as an older track.py wrote it: the hash only
    (out / ".track_run.json").write_text(json.dumps({k: v for k, v in record.items() if k != "tracker_values"}))
    with pytest.raises(MICAError, match=r"tracker.\* config: a key differs; the record, written by an older track.py"):
        track.main(argv + ["tracker.bbox_scale", "2.0"])
    (out / ".track_run.json").write_text(json.dumps(record))
    ident = np.load(tmp_path / "identity.npy")
    np.save(tmp_path / "identity.npy", ident + 0.1)
    with pytest.raises(MICAError, match=r"--identity \(file content\)"):
        track.main(argv)
    assert read_frame(out / "checkpoint" / "00000.frame")["img_size"].tolist() == [512, 512]  # nothing touched
    track.main(["--overwrite"] + _set(argv, "--image-size", "256"))
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [f"{k:05d}.frame" for k in range(N)]
    assert all(read_frame(out / "checkpoint" / f"{k:05d}.frame")["img_size"].tolist() == [256, 256] for k in range(N))
    np.testing.assert_allclose(read_frame(out / "checkpoint" / "00000.frame")["flame"]["shape"][0], ident + 0.1, atol=1e-6)
    assert len(_rows(out)) == N


def test_killed_run_keeps_its_csv_rows(tmp_path, monkeypatch):
    import track
    from micalib.tracking import writer

    *_, out = track_synthetic(tmp_path, real=False, n_frames=N, noise_px=0.3)
    clean = _rows(out)
    argv = _argv(out)
    orig, calls = writer.save_frame, []

    def dying(path, data, **kw):  # the "kill": the 4th frame's write fails, the run stops
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        orig(path, data, **kw)

    monkeypatch.setattr(writer, "save_frame", dying)
    with pytest.raises(KeyboardInterrupt):
        track.main(["--overwrite"] + argv)
    monkeypatch.setattr(writer, "save_frame", orig)
    assert not (out / "tracking.csv").exists()
    n_done = len(list((out / "checkpoint").glob("*.frame")))
    assert 1 <= n_done < N
    track.main(argv)
    rows = _rows(out)
    assert [r["frame"] for r in rows] == [f"{k:05d}" for k in range(N)]
    # the same rows as the clean run (RMS of each fit included): the fits are deterministic
    assert rows == clean
    assert not (out / ".tracking_rows.jsonl").exists()


def test_rows_of_finished_frames_are_rebuilt_without_the_journal(tmp_path):
    import track

    *_, out = track_synthetic(tmp_path, real=False, n_frames=N, noise_px=0.3)
    clean = _rows(out)
    (out / "tracking.csv").unlink()
    os.remove(out / "checkpoint" / "00002.frame")
    track.main(_argv(out))
    rows = _rows(out)
    assert [r["frame"] for r in rows] == [f"{k:05d}" for k in range(N)]
    for r, c in zip(rows, clean, strict=True):
        for key in ("input_frame", "time_s", "face_found", "landmarks_used", "interpolated"):
            assert r[key] == c[key]
    assert rows[2] == clean[2]  # the redone frame has its full row
    assert rows[0]["rms_mediapipe_px"] == ""  # a rebuilt row has no fit residual


def test_damaged_frames_are_tracked_again(tmp_path):
    from loguru import logger

    import track

    *_, out = track_synthetic(tmp_path, real=False, n_frames=N, noise_px=0.3)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoint").iterdir()}
    os.remove(out / "mesh" / "00001.ply")
    (out / "input" / "00002.png").write_bytes(b"")
    data = (out / "checkpoint" / "00003.frame").read_bytes()
    (out / "checkpoint" / "00003.frame").write_bytes(data[: len(data) // 2])
    msgs = []
    sink = logger.add(lambda m: msgs.append(str(m)), level="WARNING")
    try:
        track.main(_argv(out))
    finally:
        logger.remove(sink)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "checkpoint").iterdir()}
    redone = {k for k in after if after[k] != before[k]}
    assert redone == {"00001.frame", "00002.frame", "00003.frame"}
    assert (out / "mesh" / "00001.ply").stat().st_size > 0 and (out / "input" / "00002.png").stat().st_size > 0
    read_frame(out / "checkpoint" / "00003.frame")
    assert sum("3 frame(s) with an unreadable checkpoint" in m and "00003.frame" in m for m in msgs) == 1


def _no_face_folder(tmp: Path) -> list:
    frames = tmp / "clip"
    frames.mkdir()
    for k in range(3):
        cv2.imwrite(str(frames / f"{k}.png"), np.zeros((64, 64, 3), np.uint8))
    np.savez(tmp / "lmk.npz", mediapipe=np.full((3, 478, 2), np.nan, np.float32))
    return ["-i", str(frames), "-o", str(tmp / "out"), "--landmarks", str(tmp / "lmk.npz"), "--no-video"]


def test_stale_temp_of_a_killed_run_is_removed(tmp_path):
    import track

    argv = _no_face_folder(tmp_path) + asset_opts(tmp_path / "assets")
    run_dir = tmp_path / "out" / "clip"
    run_dir.mkdir(parents=True)
    # a writer that dies inside utils.io.atomic_path leaves its temporary file
    code = ("import os, sys; from utils.io import atomic_path\n"
            "with atomic_path(sys.argv[1], fsync=False) as tmp:\n"
            "    open(tmp, 'wb').write(b'x'); os._exit(0)\n")
    subprocess.run([sys.executable, "-c", code, str(run_dir / "video.mp4")], cwd=ROOT, check=True)
    assert [p.name for p in run_dir.iterdir() if ".tmp" in p.name]
    with pytest.raises(MICAError, match="no face"):
        track.main(argv)
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]


def test_unusable_output_folder_is_refused_before_loading(tmp_path, monkeypatch):
    import track

    argv = _no_face_folder(tmp_path)
    (tmp_path / "out").write_text("a file, not a folder")
    monkeypatch.setattr(track, "load_cfg", lambda *a, **k: pytest.fail("the config was loaded first"))
    with pytest.raises(MICAError, match="output folder"):
        track.main(argv)


def test_missing_asset_is_named_before_detection(tmp_path, monkeypatch):
    import track
    from micalib.tracking import landmarks

    frames = tmp_path / "clip"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.zeros((64, 64, 3), np.uint8))
    opts = asset_opts(tmp_path / "assets")
    opts[opts.index("tracker.mediapipe_embedding_path") + 1] = str(tmp_path / "gone.npz")
    monkeypatch.setattr(landmarks, "MediaPipeLandmarker", lambda *a, **k: pytest.fail("detection ran first"))
    with pytest.raises(MICAError, match=r"gone\.npz not found \(config key tracker\.mediapipe_embedding_path\)"):
        track.main(["-i", str(frames), "-o", str(tmp_path / "out"), "--no-video",
                    "--identity", str(tmp_path / "none.npy")] + opts)


@pytest.mark.parametrize("values, match", [
    (np.full(300, np.nan, np.float32), "non-finite"),
    (np.zeros(5, np.float32), r"shape \(5,\)"),
    (np.zeros(1200, np.float32), r"shape \(1200,\)"),
])
def test_bad_identity_is_refused(tmp_path, values, match):
    from micalib.tracking.options import TrackOptions
    from micalib.tracking.runner import TrackRunner

    frames = tmp_path / "clip"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.zeros((64, 64, 3), np.uint8))
    np.save(tmp_path / "id.npy", values)
    r = TrackRunner(TrackOptions(), frames, tmp_path / "out", flame=None, identity_path=tmp_path / "id.npy")
    with pytest.raises(MICAError, match=match) as e:
        r._identity()
    assert str(tmp_path / "id.npy") in str(e.value)


def test_identity_of_shape_1_300_is_accepted(tmp_path):
    from micalib.tracking.options import TrackOptions
    from micalib.tracking.runner import TrackRunner

    frames = tmp_path / "clip"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.zeros((64, 64, 3), np.uint8))
    code = np.arange(300, dtype=np.float32).reshape(1, 300) / 300
    np.save(tmp_path / "id.npy", code)
    (tmp_path / "out" / "clip").mkdir(parents=True)
    r = TrackRunner(TrackOptions(), frames, tmp_path / "out", flame=None, identity_path=tmp_path / "id.npy")
    np.testing.assert_array_equal(r._identity(), code[0])


def test_fps_with_a_frame_folder_is_logged(tmp_path):
    from loguru import logger

    import track

    argv = _no_face_folder(tmp_path) + asset_opts(tmp_path / "assets")
    msgs = []
    sink = logger.add(lambda m: msgs.append(str(m)), level="INFO")
    try:
        with pytest.raises(MICAError, match="no face"):
            track.main(["--fps", "10"] + argv)
    finally:
        logger.remove(sink)
    assert sum("--fps 10 is ignored for a folder of frames" in m for m in msgs) == 1


def test_cli_error_is_one_line_in_demo_format(tmp_path):
    r = subprocess.run([sys.executable, "track.py", "-i", str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [f"ERROR    input {tmp_path / 'missing.mp4'} does not exist (pass a video file or a folder of frames)"]


def test_unreadable_frame_of_a_folder_is_interpolated_and_flagged(tmp_path):
    import track

    *_, out = track_synthetic(tmp_path, real=False, n_frames=N, noise_px=0.3, blank_frames=(2,))
    clean = _rows(out)
    (tmp_path / "clip" / "0002.png").write_bytes(b"\x89PNG broken")
    track.main(["--overwrite"] + _argv(out))
    rows = _rows(out)
    assert rows[2]["face_found"] == "0" and rows[2]["interpolated"] == "1"
    assert [r["frame"] for r in rows] == [r["frame"] for r in clean]
    assert not cv2.imread(str(out / "input" / "00002.png")).any()  # a black frame
    assert cv2.imread(str(out / "input" / "00001.png")).any()


def test_outputs_of_the_previous_format_are_refused_and_k_reads_back_through_the_conversion(tmp_path):
    """Outputs written before K moved to the renderers' convention (a run record without the format
    version, as track.py wrote it then) are refused; a resumed run reads K back through
    ``outputs.k_convert`` and writes the same K as the first run."""
    import json

    import track
    from micalib.tracking.resume import RUN_RECORD

    *_, out = track_synthetic(tmp_path, real=False, n_frames=N, noise_px=0.3)
    argv = _argv(out)
    k_first = read_frame(out / "checkpoint" / "00000.frame")["opencv"]["K"]
    for k in (2, 4):  # frames to redo: the run takes K from frame 0's file
        (out / "checkpoint" / f"{k:05d}.frame").unlink()
    track.main(argv)
    for k in range(N):
        assert np.array_equal(read_frame(out / "checkpoint" / f"{k:05d}.frame")["opencv"]["K"], k_first)
    record = json.loads((out / RUN_RECORD).read_text())
    del record["format"]
    (out / RUN_RECORD).write_text(json.dumps(record))
    with pytest.raises(MICAError, match=r"file format version .*None before, 2 now.*--overwrite"):
        track.main(argv)
