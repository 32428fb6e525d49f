"""track.py keeps its hands off the user's files (micalib/tracking/layout.py): OUT/NAME overlapping the
input is refused before anything is written, --overwrite removes only the tracker's own file names,
one run per OUT/NAME (a second refused in one line, a dead owner's lock taken over), and a run
refused at its input check leaves no run record that would refuse the corrected command."""
from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from micalib.tracking.layout import TrackLayout
from tests.synthetic_tracking import argv_of_last_run, track_synthetic
from utils.errors import MICAError
from utils.io import folder_relation

ROOT = Path(__file__).resolve().parent.parent
N = 5


def _tree(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with the SHA-1 of its bytes (an independent snapshot)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _set(argv: list, flag: str, value: str) -> list:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One finished synthetic run (its command line reused by the tests)."""
    tmp = tmp_path_factory.mktemp("tracked")
    *_, out = track_synthetic(tmp, real=False, n_frames=N, noise_px=0.3)
    return out, argv_of_last_run(out, video=False)


def test_folder_relation():
    assert folder_relation("/a/b", "/a/b/") == "same"
    assert folder_relation("/a/b", "/a/b/c/d") == "inside"
    assert folder_relation("/a/b/c", "/a") == "contains"
    assert folder_relation("/a/b", "/a/bc") is None and folder_relation("/a/b", "/a/c") is None


@pytest.mark.parametrize("case", ["same", "inside", "contains"])
def test_output_overlapping_the_input_folder_is_refused_untouched(tmp_path, tracked, case):
    import track

    _out, argv = tracked
    frames = Path(argv[argv.index("-i") + 1])
    # the user's folder of frames, with files of the tracker's names (T77)
    user = {"same": tmp_path / "clip", "inside": tmp_path / "clip", "contains": tmp_path / "clip" / "x" / "clip"}[case]
    user.mkdir(parents=True)
    for p in sorted(frames.iterdir()):
        (user / p.name).write_bytes(p.read_bytes())
    for name, data in (("tracking.csv", b"mine"), ("crop.json", b"{}"), ("input/00000.png", b"png"),
                       ("mesh/my_scan.ply", b"ply"), ("checkpoint/notes.txt", b"notes")):
        (user / name).parent.mkdir(exist_ok=True)
        (user / name).write_bytes(data)
    o = {"same": tmp_path, "inside": user, "contains": tmp_path}[case]
    before = _tree(tmp_path)
    with pytest.raises(MICAError, match=r"-o .*pass an -o outside the input folder") as e:
        track.main(["--overwrite"] + _set(_set(argv, "-i", str(user)), "-o", str(o)))
    assert "\n" not in str(e.value)
    assert {"same": " is the input folder", "inside": " lies inside the input folder",
            "contains": " contains the input folder"}[case] in str(e.value)
    assert _tree(tmp_path) == before  # not one file written, replaced or deleted


def test_input_video_inside_the_output_folder_is_refused(tmp_path):
    video = tmp_path / "clip" / "clip.mp4"
    video.parent.mkdir()
    video.write_bytes(b"not looked at")
    with pytest.raises(MICAError, match="holds the input video"):
        TrackLayout(tmp_path, "clip").check_input(video)
    with pytest.raises(MICAError, match="holds the input video"):
        TrackLayout(tmp_path / "clip", "x").check_input(tmp_path / "clip" / "x" / "deeper" / "v.mp4")
    TrackLayout(tmp_path, "clip2").check_input(video)  # apart: accepted
    TrackLayout(tmp_path / "clip", "clip").check_input(video)  # OUT/NAME below the video's folder: accepted


def test_overwrite_removes_only_the_trackers_files(tmp_path, tracked):
    import track

    out0, argv = tracked
    argv = _set(argv, "-o", str(tmp_path / "out"))
    track.main(argv)
    out = tmp_path / "out" / "clip"
    mine = {"mesh/my_scan.ply": b"ply", "input/raw_0001.png": b"png", "checkpoint/notes.txt": b"n",
            "checkpoint/123.frame": b"short name", "mynotes.txt": b"x", "myfolder/a.txt": b"a",
            "mesh/sub/00001.ply": b"a user folder inside mesh/"}
    for name, data in mine.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    track.main(["--overwrite"] + _set(argv, "--image-size", "256"))
    for name, data in mine.items():
        assert (out / name).read_bytes() == data, name
    assert sorted(p.name for p in (out / "checkpoint").glob("*.frame")) == [f"{k:05d}.frame" for k in range(N)] + ["123.frame"]
    from micalib.tracking.outputs import read_frame

    assert read_frame(out / "checkpoint" / "00000.frame")["img_size"].tolist() == [256, 256]
    # the clearing itself: own names gone, emptied folders removed, the user's kept
    layout = TrackLayout(tmp_path / "out", "clip")
    layout.clear()
    left = set(_tree(out))
    assert left == set(mine)
    assert not (out / "input").joinpath("00000.png").exists() and (out / "input").is_dir()  # raw_0001.png keeps it
    empty = TrackLayout(tmp_path / "e", "clip")
    empty.make_dirs()
    (empty.root / "tracking.csv").write_text("x")
    empty.clear()
    assert list(empty.root.iterdir()) == []


_HOLD = ("import sys, time\n"
         "from micalib.inference.output_lock import output_lock\n"
         "with output_lock(sys.argv[1], lock_file='.track_lock', what='track.py run'):\n"
         "    print('locked', flush=True)\n"
         "    time.sleep(120)\n")


def _holder(root: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(root)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_run_on_one_output_is_refused_and_a_dead_lock_taken_over(tmp_path, tracked):
    import track

    _out, argv = tracked
    argv = _set(argv, "-o", str(tmp_path / "out"))
    root = tmp_path / "out" / "clip"
    holder = _holder(root)
    try:
        with pytest.raises(MICAError, match=r"in use by another track.py run \(pid \d+") as e:
            track.main(argv)
        assert "\n" not in str(e.value) and ".track_lock" in str(e.value)
        assert not (root / "checkpoint").exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock file is left, and taken over
    assert (root / ".track_lock").is_file()
    track.main(argv)
    assert sorted(p.name for p in (root / "checkpoint").iterdir()) == [f"{k:05d}.frame" for k in range(N)]
    assert not (root / ".track_lock").exists()


def test_run_holds_the_lock_while_it_writes(tmp_path, tracked, monkeypatch):
    """While a run writes frames, another process is refused (checked from inside the run)."""
    import track
    from micalib.tracking import writer

    _out, argv = tracked
    argv = _set(argv, "-o", str(tmp_path / "out"))
    root = tmp_path / "out" / "clip"
    seen = []
    orig = writer.save_frame

    def probe(path, data, **kw):
        if not seen:
            r = subprocess.run([sys.executable, "-c", _HOLD, str(root)], cwd=ROOT, capture_output=True, text=True,
                               timeout=60)
            seen.append(r)
        orig(path, data, **kw)

    monkeypatch.setattr(writer, "save_frame", probe)
    track.main(argv)
    assert seen and seen[0].returncode != 0 and "in use by another track.py run" in seen[0].stderr


@pytest.mark.parametrize("bad", ["identity", "landmarks"])
def test_run_refused_at_its_input_check_does_not_block_the_fix(tmp_path, tracked, bad):
    """T54/T55: a missing --identity / a --landmarks file with too few rows is refused; the
    corrected command then runs (no record of the refused options) and gives the same frames."""
    import track
    from micalib.tracking.outputs import read_frame

    out0, argv = tracked
    argv = _set(argv, "-o", str(tmp_path / "out"))
    if bad == "identity":
        wrong = _set(argv, "--identity", str(tmp_path / "typo.npy"))
    else:
        lmk = np.load(argv[argv.index("--landmarks") + 1])
        np.savez(tmp_path / "short.npz", mediapipe=lmk["mediapipe"][:2])
        wrong = _set(argv, "--landmarks", str(tmp_path / "short.npz"))
    with pytest.raises(MICAError):
        track.main(wrong)
    root = tmp_path / "out" / "clip"
    assert not (root / ".track_run.json").exists()
    track.main(argv)
    assert (root / ".track_run.json").is_file()
    for k in range(N):
        a, b = read_frame(root / "checkpoint" / f"{k:05d}.frame"), read_frame(out0 / "checkpoint" / f"{k:05d}.frame")
        np.testing.assert_array_equal(a["flame"]["exp"], b["flame"]["exp"])


def test_caches_of_an_unrecorded_attempt_are_not_reused(tmp_path, tracked):
    """Without a run record the options that shaped landmarks.npz, bbox.pt, identity.npy are unknown: removed."""
    _out, argv = tracked
    layout = TrackLayout(tmp_path / "out", "clip")
    layout.root.mkdir(parents=True)
    for name in ("landmarks.npz", "bbox.pt", "identity.npy", "mynotes.txt"):
        (layout.root / name).write_bytes(b"x")
    layout.clear_unrecorded()
    assert sorted(p.name for p in layout.root.iterdir()) == ["mynotes.txt"]

