"""A track.py run killed during the per-frame fit (``os._exit`` from a writer thread, as kill -9:
the other writer and overlay threads stop wherever they are) and run again gives exactly what an
uninterrupted run gives: every .frame value, mesh, crop PNG, tracking.csv row and video frame.

Only content that the computation fixes is compared: no timing columns (tracking.csv has none;
its ``time_s`` is the frame's time in the video, k / fps), decoded video frames rather than the
container's bytes. Both runs are separate processes on the same machine (same CPU kernels)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from micalib.tracking.crop import load_bbox_pt
from micalib.tracking.outputs import read_frame
from micalib.tracking.solver_state import EXIT_AFTER_ENV
from tests.synthetic_tracking import argv_of_last_run, track_synthetic

ROOT = Path(__file__).resolve().parent.parent
N = 16
BLANK = (4, 5, 11)  # frames without a face: held, then interpolated


def _run(argv: list, exit_after: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(EXIT_AFTER_ENV, None)
    if exit_after is not None:
        env[EXIT_AFTER_ENV] = str(exit_after)
    return subprocess.run([sys.executable, str(ROOT / "track.py")] + argv, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _leaves(d, prefix=""):
    for key, value in sorted(d.items()):
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", np.asarray(value)


def _video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def _differences(a: Path, b: Path, n: int = N) -> list[str]:
    """What differs between two output folders (empty: identical content)."""
    diff = []
    for k in range(n):
        fa, fb = read_frame(a / "checkpoint" / f"{k:05d}.frame"), read_frame(b / "checkpoint" / f"{k:05d}.frame")
        for (name, va), (_, vb) in zip(_leaves(fa), _leaves(fb), strict=True):
            if va.shape != vb.shape or not np.array_equal(va, vb):
                diff.append(f"frame {k} {name}")
        for sub, ext in (("mesh", "ply"), ("input", "png")):
            if (a / sub / f"{k:05d}.{ext}").read_bytes() != (b / sub / f"{k:05d}.{ext}").read_bytes():
                diff.append(f"{sub}/{k:05d}.{ext}")
    with open(a / "tracking.csv", newline="") as fa, open(b / "tracking.csv", newline="") as fb:
        ra, rb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    diff += [f"csv row {r1.get('frame')}" for r1, r2 in zip(ra, rb, strict=False) if r1 != r2] + (["csv length"] if len(ra) != len(rb) else [])
    va, vb = _video(a / "video.mp4"), _video(b / "video.mp4")
    diff += ["video length"] if len(va) != len(vb) else [f"video frame {j}" for j, (x, y) in enumerate(zip(va, vb, strict=False))
                                                          if not np.array_equal(x, y)]
    for name in ("canonical.obj", "identity.npy", "landmarks.npz", "crop.json"):
        if (a / name).is_file() and (a / name).read_bytes() != (b / name).read_bytes():
            diff.append(name)
    if (a / "bbox.pt").is_file() and load_bbox_pt(a / "bbox.pt") != load_bbox_pt(b / "bbox.pt"):  # torch.save's bytes vary
        diff.append("bbox.pt")
    return diff


@pytest.mark.slow
def test_killed_runs_continue_bit_identically(tmp_path):
    *_, clean = track_synthetic(tmp_path, real=False, n_frames=N, noise_px=0.5, video=True, blank_frames=BLANK)
    argv = argv_of_last_run(clean)
    other = tmp_path / "killed"
    argv = argv[: argv.index("-o") + 1] + [str(other)] + argv[argv.index("-o") + 2:]
    out = other / "clip"
    proc = _run(argv)  # an uninterrupted run in a process of its own, as the killed ones
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _differences(clean, out) == []
    for exit_after in (1, 6, 12):
        proc = _run(["--overwrite"] + argv, exit_after=exit_after)
        assert proc.returncode == 137, proc.stderr[-2000:]
        written = len(list((out / ".solver").glob("[0-9][0-9][0-9][0-9][0-9].json")))
        assert exit_after <= written < N
        assert not (out / "tracking.csv").exists() and not (out / "video.mp4").exists()
        proc = _run(argv)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"({written} finished before)" in proc.stderr
        assert _differences(clean, out) == [], f"killed after {written} frames"


@pytest.mark.slow
def test_sigterm_is_ctrl_c_and_the_run_continues_exactly(tmp_path):
    """T71: SIGTERM ended track.py with 143, no message. Now as Ctrl-C: the files of the tracked
    frames are finished, exit 130 with one line; the re-run continues bit-identically."""
    import signal
    import time

    n = 60
    *_, clean = track_synthetic(tmp_path, real=False, n_frames=n, noise_px=0.5, video=False)
    argv = argv_of_last_run(clean, video=False)
    argv = argv[: argv.index("-o") + 1] + [str(tmp_path / "termed")] + argv[argv.index("-o") + 2:]
    out = tmp_path / "termed" / "clip"
    (out).mkdir(parents=True)
    (out / ".crops.raw").write_bytes(b"\0" * 1000)  # a crop cache: removed however the run ends
    proc = subprocess.Popen([sys.executable, str(ROOT / "track.py")] + argv, cwd=ROOT, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list((out / ".solver").glob("[0-9]*.json"))) < 3 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert [line for line in err.splitlines() if line.startswith("ERROR")] == ["ERROR    interrupted"]
    assert "Traceback" not in err
    assert not (out / ".crops.raw").exists()
    written = sorted(p.name for p in (out / "checkpoint").glob("[0-9][0-9][0-9][0-9][0-9].frame"))
    assert 3 <= len(written) < n
    for name in written:  # every written frame is complete: its record is there and matches
        assert (out / ".solver" / name.replace(".frame", ".json")).is_file()
    proc = _run(argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"({len(written)} finished before)" in proc.stderr
    for k in range(n):
        a, b = read_frame(clean / "checkpoint" / f"{k:05d}.frame"), read_frame(out / "checkpoint" / f"{k:05d}.frame")
        for (name, va), (_, vb) in zip(_leaves(a), _leaves(b), strict=True):
            assert np.array_equal(va, vb), f"frame {k} {name}"


@pytest.mark.shared_data
@pytest.mark.slow
def test_default_options_killed_and_resumed_bit_identically(tmp_path):
    """T70 with the default options: landmarks detected by MediaPipe (the crop cache on), the
    identity computed by MICA from the frames (random weights: the numbers differ from the real
    model's, the code path is the same), the overlay video on; killed at several points."""
    from micalib.tracking.landmarks import mediapipe_available
    from tests.synthetic_flame import shared_flame_public
    from tests.synthetic_tracking import shared_tracker_dir, write_tracker_assets
    from tests.synthetic_weights import write_random_mica_tar

    shared = shared_tracker_dir()
    if shared is None or not (shared / "justin.mp4").is_file() or shared_flame_public() is None:
        pytest.skip("../shared/data/tracker/justin.mp4 or ../shared/data/flame_public is absent")
    if not mediapipe_available():
        pytest.skip("mediapipe is not installed (install.sh installs it)")
    n = 10
    clip = tmp_path / "clip"
    clip.mkdir()
    cap = cv2.VideoCapture(str(shared / "justin.mp4"))
    for k in range(n):
        ok, img = cap.read()
        assert ok
        cv2.imwrite(str(clip / f"{k:03d}.png"), img[::2, ::2], [cv2.IMWRITE_PNG_COMPRESSION, 0])
    cap.release()
    assets = write_tracker_assets(tmp_path / "assets", seed=0, real=True)
    tar = write_random_mica_tar(tmp_path / "mica.tar", arch="iresnet18", seed=0)
    common = ["-i", str(clip), "model.arch", "iresnet18", "pretrained_model_path", str(tar), "detector.name", "mtcnn",
              "detector.antelopev2_dir", "/nonexistent/antelopev2",
              "model.flame_model_path", str(assets["flame_model_path"]),
              "model.flame_lmk_embedding_path", str(assets["flame_lmk_embedding_path"]),
              "model.topology_path", str(assets["flame_model_path"].parent / "head_template.obj"),
              "model.flame_masks_path", str(assets["flame_masks_path"]),
              "tracker.mediapipe_embedding_path", str(assets["mediapipe_embedding_path"]),
              "tracker.l_eyelid_path", str(assets["l_eyelid_path"]), "tracker.r_eyelid_path", str(assets["r_eyelid_path"])]
    proc = _run(["-o", str(tmp_path / "clean")] + common)
    assert proc.returncode == 0, proc.stderr[-2000:]
    clean, out = tmp_path / "clean" / "clip", tmp_path / "killed" / "clip"
    for exit_after in (2, 7):
        proc = _run(["--overwrite", "-o", str(tmp_path / "killed")] + common, exit_after=exit_after)
        assert proc.returncode == 137, proc.stderr[-2000:]
        proc = _run(["-o", str(tmp_path / "killed")] + common)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "finished before" in proc.stderr and "(0 finished before)" not in proc.stderr
        assert _differences(clean, out, n) == [], f"killed after {exit_after} frames"


@pytest.mark.slow
def test_photometric_run_killed_continues_bit_identically_on_the_cpu(tmp_path):
    """--photometric carries the albedo and lighting from frame to frame: kept for the last fitted
    frames (solver_state.py), a resumed run continues from them (CPU; on CUDA the rasteriser's
    atomic adds already make two uninterrupted runs differ)."""
    n = 8
    *_, first = track_synthetic(tmp_path, real=False, n_frames=n, noise_px=0.5)
    argv = ["--photometric"] + argv_of_last_run(first, video=False) + ["tracker.photometric_iters", "3"]
    outs = {}
    for name in ("clean", "killed"):
        argv[argv.index("-o") + 1] = str(tmp_path / name)
        outs[name] = tmp_path / name / "clip"
        proc = _run(argv)
        assert proc.returncode == 0, proc.stderr[-2000:]
    for exit_after in (3, 5):
        proc = _run(["--overwrite"] + argv, exit_after=exit_after)
        assert proc.returncode == 137, proc.stderr[-2000:]
        assert list((outs["killed"] / ".solver").glob("*.appearance.npy"))
        proc = _run(argv)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "was not kept" not in proc.stderr
        for k in range(n):
            a = read_frame(outs["clean"] / "checkpoint" / f"{k:05d}.frame")
            b = read_frame(outs["killed"] / "checkpoint" / f"{k:05d}.frame")
            for (key, va), (_, vb) in zip(_leaves(a), _leaves(b), strict=True):
                assert np.array_equal(va, vb), f"killed after {exit_after} frames: frame {k} {key}"
