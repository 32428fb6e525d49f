"""track.py under hostile input (issue 21; cases of ../shared/docs/HOSTILE_CASES.md): finished
frames holding NaN or cut short, absurd landmark rows, out-of-range options and config keys,
broken identity / landmark files (one line naming the file and the fix)."""
from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from micalib.tracking.outputs import frame_problem, read_frame
from tests.synthetic_tracking import argv_of_last_run, track_synthetic
from utils.errors import MICAError

N = 6


def _mtimes(folder: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def _messages(level: str = "WARNING"):
    from loguru import logger

    msgs: list[str] = []
    return msgs, logger.add(lambda m: msgs.append(str(m)), level=level)


def test_frame_with_nan_or_wrong_shape_is_tracked_again_and_does_not_poison_the_rest(tmp_path):
    """T61: a readable .frame whose exp is NaN (and camera t inf) counted as finished and became the
    warm start of every later frame."""
    from loguru import logger

    import track

    *_, out = track_synthetic(tmp_path, real=False, n_frames=N, noise_px=0.3)
    clean = [read_frame(out / "checkpoint" / f"{k:05d}.frame") for k in range(N)]
    bad = read_frame(out / "checkpoint" / "00002.frame")
    bad["flame"]["exp"][:] = np.nan
    bad["camera"]["t"][:] = np.inf
    torch.save(bad, out / "checkpoint" / "00002.frame")
    short = read_frame(out / "checkpoint" / "00001.frame")
    short["flame"]["jaw"] = short["flame"]["jaw"][:, :3]
    torch.save(short, out / "checkpoint" / "00001.frame")
    for k in (1, 2):  # as a .frame of the recorded size would be (sizes alone do not catch it)
        _record_size(out, f"checkpoint/{k:05d}.frame")
    for k in (3, 4, 5):
        (out / "checkpoint" / f"{k:05d}.frame").unlink()
    msgs, sink = _messages()
    try:
        track.main(argv_of_last_run(out, video=False))
    finally:
        logger.remove(sink)
    for k in range(1, N):
        got = read_frame(out / "checkpoint" / f"{k:05d}.frame")
        assert frame_problem(got) is None
        np.testing.assert_array_equal(got["flame"]["exp"], clean[k]["flame"]["exp"])  # exact resume
    assert sum("00002.frame: flame.exp holds NaN" in m and "00001.frame: flame.jaw has shape (1, 3)" in m
               for m in msgs) == 1


def _record_size(out: Path, rel: str) -> None:
    import json

    path = out / ".solver" / f"{Path(rel).stem}.json"
    doc = json.loads(path.read_text())
    doc["sizes"][rel] = (out / rel).stat().st_size
    path.write_text(json.dumps(doc))


def test_frame_problem_names_what_is_wrong():
    from micalib.tracking.outputs import frame_dict

    good = frame_dict(np.zeros(100), np.zeros(9), np.zeros(2), np.zeros(300), np.eye(3), np.array([0, 0, 1.0]),
                      np.eye(3), (512, 512), 0, 0)
    assert frame_problem(good) is None
    del good["opencv"]["K"]
    assert frame_problem(good) == "opencv.K is missing"


def test_cut_mesh_and_png_of_a_finished_frame_are_redone(tmp_path):
    """T68: mesh/00005.ply and input/00006.png truncated to 100 bytes were kept as finished."""
    import track

    *_, out = track_synthetic(tmp_path, real=False, n_frames=8, noise_px=0.3)
    ply, png = out / "mesh" / "00005.ply", out / "input" / "00006.png"
    full_ply, full_png = ply.read_bytes(), png.read_bytes()
    ply.write_bytes(full_ply[:100])
    png.write_bytes(full_png[:100])
    before = _mtimes(out / "checkpoint")
    track.main(argv_of_last_run(out, video=False))
    after = _mtimes(out / "checkpoint")
    assert {k for k in after if after[k] != before[k]} == {"00005.frame", "00006.frame"}
    assert ply.read_bytes() == full_ply and png.read_bytes() == full_png


def test_absurd_landmark_rows_are_missing_with_one_warning(tmp_path):
    """T43/T44: one row of 1e30 degraded the rest; a face 5000 px outside counted as found."""
    from loguru import logger

    from micalib.tracking.landmarks import drop_absurd_rows

    rng = np.random.default_rng(0)
    mp = (200 + 50 * rng.random((7, 478, 2))).astype(np.float32)
    mp[1, 3] = 1e30                     # one absurd point
    mp[2] -= 5000                       # the whole face far outside (more than one image size)
    mp[3, 0] = np.inf                   # non-finite
    mp[4, :10] = -30                    # a few points just outside: a face at the border, kept
    mp[5, 0] = 3000                     # within 10x the image size and the box overlaps: kept
    msgs, sink = _messages()
    try:
        rows = drop_absurd_rows({"mediapipe": mp}, (640, 480), "landmarks file x.npz")
    finally:
        logger.remove(sink)
    assert rows == [1, 2, 3]
    assert np.isnan(mp[[1, 2, 3]]).all() and np.isfinite(mp[[0, 4, 5, 6]]).all()
    assert len(msgs) == 1 and "x.npz" in msgs[0] and "input frame(s) 1, 2, 3" in msgs[0]


def test_one_absurd_row_does_not_degrade_the_other_frames(tmp_path):
    import track

    *_, out = track_synthetic(tmp_path, real=False, n_frames=N, noise_px=0.3)
    with open(out / "tracking.csv", newline="") as f:
        clean = list(csv.DictReader(f))
    lmk = dict(np.load(tmp_path / "lmk.npz"))
    lmk["mediapipe"][2] = 1e30
    np.savez(tmp_path / "lmk.npz", **lmk)
    track.main(["--overwrite"] + argv_of_last_run(out, video=False))
    with open(out / "tracking.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[2]["face_found"] == "0" and rows[2]["interpolated"] == "1"
    for k in (0, 1, 3, 4, 5):
        assert float(rows[k]["rms_mediapipe_px"]) < 2 * float(clean[k]["rms_mediapipe_px"]) + 0.5


@pytest.mark.parametrize("flag, value, match", [
    ("--fps", "1e9", r"--fps must be in \(0.0, 1000.0\], not 1000000000.0"),
    ("--fps", "nan", "--fps must be a finite number"),
    ("--image-size", "100000", "--image-size must be in 64..4096, not 100000"),
    ("--image-size", "16", "--image-size must be in 64..4096"),
])
def test_out_of_range_options_are_one_line(tmp_path, flag, value, match):
    import track

    with pytest.raises(ValueError, match=match):
        track.main(["-i", str(tmp_path), "-o", str(tmp_path / "out"), flag, value])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("key, value, match", [
    ("tracker.bbox_scale", "0.0", r"tracker.bbox_scale must be in \(0.0, 20.0\], not 0.0"),
    ("tracker.bbox_scale", "-2.0", "tracker.bbox_scale must be in"),
    ("tracker.fit.fov_deg", "-1.0", "tracker.fit.fov_deg must be in"),
    ("tracker.fit.iters", "0", "tracker.fit.iters must be in 1..1000, not 0"),
    ("tracker.fit.key_iters", "-1", "tracker.fit.key_iters must be in 1..1000"),
    ("tracker.png_compression", "42", "tracker.png_compression must be in 0..9, not 42"),
    ("tracker.fit.smooth_t", "0.0", "tracker.fit.smooth_t must be in"),
])
def test_out_of_range_tracker_config_is_one_line(tmp_path, key, value, match):
    from configs.config import load_cfg
    from micalib.tracking.runner import TrackRunner

    cfg = load_cfg("configs/tracker.yml", [key, value])
    with pytest.raises(ValueError, match=match):
        TrackRunner.from_config(cfg, tmp_path, tmp_path / "out", source=object())


def test_landmarks_header_claiming_1e8_rows_is_refused_unread(tmp_path):
    """T39: the header of a member claims (1e8, 478, 2): refused from the header (356 GiB before)."""
    from micalib.tracking.landmarks import load_landmarks_npz

    path = tmp_path / "lmk.npz"
    np.savez(path, mediapipe=np.zeros((3, 478, 2), np.float32))
    with zipfile.ZipFile(path) as z:
        data = z.read("mediapipe.npy")
    header_end = data.index(b"\n") + 1
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mediapipe.npy", _npy_header((100_000_000, 478, 2)) + data[header_end:])
    with pytest.raises(MICAError, match=r"lmk.npz: 'mediapipe' has 100000000 rows but the input has 3 frames"):
        load_landmarks_npz(path, 3)


def _npy_header(shape) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_truncated_cached_landmarks_says_delete_it(tmp_path):
    """T66: a truncated cached landmarks.npz said 'write it with np.savez'."""
    from micalib.tracking.landmarks import load_landmarks_npz, save_landmarks_npz

    path = tmp_path / "landmarks.npz"
    save_landmarks_npz(path, mediapipe=np.zeros((3, 478, 2), np.float32))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(MICAError, match=rf"cached landmarks file {path} .*delete it and run again") as e:
        load_landmarks_npz(path, 3, cached=True)
    assert "np.savez" not in str(e.value)


def test_landmarks_times_1e30_is_one_line_naming_the_file(tmp_path):
    """T42: all landmarks x1e30 ended in 'Overflow when unpacking long long'."""
    import track

    *_, out = track_synthetic(tmp_path, real=False, n_frames=N, noise_px=0.3)
    lmk = dict(np.load(tmp_path / "lmk.npz"))
    np.savez(tmp_path / "lmk.npz", mediapipe=lmk["mediapipe"] * np.float32(1e30))
    msgs, sink = _messages()
    from loguru import logger

    try:
        with pytest.raises(MICAError, match="no face in any frame"):
            track.main(["--overwrite"] + argv_of_last_run(out, video=False) + ["tracker.crop", "True"])
    finally:
        logger.remove(sink)
    assert any("lmk.npz" in m and f"{N} landmark row(s) ignored" in m for m in msgs)


@pytest.mark.shared_data
@pytest.mark.slow
def test_same_results_without_room_for_the_crop_cache(tmp_path, monkeypatch):
    """T76: on a disk without room for the crop cache the box came from another code path (all
    frames differed). The cache's failure is injected; box, crops and frames must be the same."""
    import cv2

    from micalib.tracking.frames import open_frames
    from micalib.tracking.landmarks import mediapipe_available
    from micalib.tracking.runner import TrackRunner
    from tests.synthetic_flame import shared_flame_public
    from tests.synthetic_tracking import shared_tracker_dir, write_tracker_assets

    shared = shared_tracker_dir()
    if shared is None or not (shared / "justin.mp4").is_file() or shared_flame_public() is None:
        pytest.skip("../shared/data/tracker/justin.mp4 or ../shared/data/flame_public is absent")
    if not mediapipe_available():
        pytest.skip("mediapipe is not installed (install.sh installs it)")
    clip = tmp_path / "clip"
    clip.mkdir()
    for k, _i, rgb in open_frames(shared / "justin.mp4", 25.0):
        cv2.imwrite(str(clip / f"{k:03d}.png"), rgb[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 0])
        if k == 7:
            break
    assets = write_tracker_assets(tmp_path / "assets", seed=0, real=True)
    np.save(tmp_path / "zero.npy", np.zeros(300, np.float32))
    argv = ["-i", str(clip), "--identity", str(tmp_path / "zero.npy"), "--no-video",
            "model.flame_model_path", str(assets["flame_model_path"]),
            "model.flame_lmk_embedding_path", str(assets["flame_lmk_embedding_path"]),
            "tracker.mediapipe_embedding_path", str(assets["mediapipe_embedding_path"]),
            "tracker.l_eyelid_path", str(assets["l_eyelid_path"]), "tracker.r_eyelid_path", str(assets["r_eyelid_path"])]
    import track

    track.main(["-o", str(tmp_path / "roomy")] + argv)
    monkeypatch.setattr(TrackRunner, "_open_crop_cache", lambda self: None)  # a full disk
    track.main(["-o", str(tmp_path / "full")] + argv)
    a, b = tmp_path / "roomy" / "clip", tmp_path / "full" / "clip"
    assert torch.load(a / "bbox.pt").tolist() == torch.load(b / "bbox.pt").tolist()
    assert (a / "landmarks.npz").read_bytes() == (b / "landmarks.npz").read_bytes()
    for k in range(8):
        assert (a / "input" / f"{k:05d}.png").read_bytes() == (b / "input" / f"{k:05d}.png").read_bytes()
        fa, fb = read_frame(a / "checkpoint" / f"{k:05d}.frame"), read_frame(b / "checkpoint" / f"{k:05d}.frame")
        for block in ("flame", "opencv", "camera"):
            for key in fa[block]:
                np.testing.assert_array_equal(fa[block][key], fb[block][key], err_msg=f"frame {k} {block}.{key}")


def test_non_utf8_video_name_and_output_folder(tmp_path):
    """T18/T19: a video whose name is not UTF-8, and an -o that is not, crashed inside OpenCV
    (exit 139). A subprocess, so a crash fails this test rather than ending pytest."""
    import os
    import subprocess
    import sys

    import cv2

    from micalib.tracking.overlay import VideoWriter

    track_synthetic(tmp_path, real=False, n_frames=4, noise_px=0.3)
    argv = argv_of_last_run(tmp_path / "out" / "clip", video=True)
    video = os.path.join(tmp_path, os.fsdecode(b"vid\xff\xe9.mp4"))
    with VideoWriter(tmp_path / "plain.mp4", 25, (512, 512)) as w:
        for f in sorted((tmp_path / "clip").iterdir()):
            w.write(cv2.imread(str(f))[..., ::-1].copy())
    os.rename(tmp_path / "plain.mp4", video)
    out = os.path.join(tmp_path, os.fsdecode(b"out\xff"))
    argv[argv.index("-i") + 1] = video
    argv[argv.index("-o") + 1] = out
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "track.py")] + [os.fsencode(a) for a in argv], cwd=root,
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = os.path.join(out, os.fsdecode(b"vid\xff\xe9"))
    assert len(os.listdir(os.path.join(result, "checkpoint"))) == 4
    os.symlink(os.fsencode(os.path.join(result, "video.mp4")), tmp_path / "link.mp4")
    cap = cv2.VideoCapture(str(tmp_path / "link.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 4
