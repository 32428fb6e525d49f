"""track.py's live mode as a user runs it (a subprocess): ``--live clip.mp4 --landmarks rows.npz``
(a synthetic clip with the synthetic truth's landmark rows), stopped by Ctrl-C or SIGTERM while it
tracks (exit 130, the files of every tracked frame finished), and ended by its source (exit 0,
nothing written without -o). Waits are on files and exit codes, with generous limits; no
assertion on wall-clock values."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.live_synthetic import Synthetic

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("live_cli")
    syn = Synthetic(tmp)

    def write(name: str, n: int) -> Path:
        path = tmp / f"{name}.mp4"
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (512, 512))
        grey = np.full((512, 512, 3), 90, np.uint8)
        for _ in range(n):
            w.write(grey)
        w.release()
        return path

    rows = syn.rows(repeat=13)  # 1560 rows: a minute at 25 frames/s
    np.savez(tmp / "rows.npz", mediapipe=rows["mediapipe"])
    a = syn.assets
    opts = ["model.flame_model_path", str(a["flame_model_path"]),
            "model.flame_lmk_embedding_path", str(a["flame_lmk_embedding_path"]),
            "tracker.mediapipe_embedding_path", str(a["mediapipe_embedding_path"]),
            "tracker.l_eyelid_path", str(a["l_eyelid_path"]), "tracker.r_eyelid_path", str(a["r_eyelid_path"]),
            "tracker.iris_vertices", str(list(syn.iris)), "tracker.crop", "False"]
    return {"tmp": tmp, "long": write("long", 1500), "short": write("short", 40), "rows": tmp / "rows.npz",
            "identity": syn.identity_path, "opts": opts}


def _argv(clip, video: Path, extra=()):
    return [sys.executable, str(ROOT / "track.py"), "--live", str(video), "--landmarks", str(clip["rows"]),
            "--identity", str(clip["identity"]), "--port", "0", "--warmup", "0.5", "--cfg", str(ROOT / "configs" / "tracker.yml"), *extra, *clip["opts"]]


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_finishes_the_files_and_exits_130(clip, tmp_path, sig):
    from micalib.tracking.outputs import read_frame

    out = tmp_path / "out"
    log = open(tmp_path / "stderr.txt", "w+")
    proc = subprocess.Popen(_argv(clip, clip["long"], ["-o", str(out)]), cwd=ROOT, stderr=log, stdout=log)
    ckpt = out / "long" / "checkpoint"
    try:
        deadline = time.monotonic() + 300  # generous: a loaded machine imports torch slowly
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.is_dir() and len(list(ckpt.glob("*.frame"))) >= 5:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "track.py ended before it was interrupted"
        proc.send_signal(sig)
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    text = log.read()
    assert rc == 130, text[-2000:]
    assert "Traceback" not in text and "interrupted" in text
    rows = _rows(out / "long" / "tracking.csv")
    frames = sorted(ckpt.glob("*.frame"))
    assert len(rows) == len(frames) >= 5
    assert [r["frame"] for r in rows] == [f.stem for f in frames] == [f"{k:05d}" for k in range(len(frames))]
    assert len(list((out / "long" / "mesh").glob("*.ply"))) == len(frames)
    assert len(list((out / "long" / "input").glob("*.png"))) == len(frames)
    for f in frames:
        read_frame(f)  # complete and readable
    assert not list((out / "long").rglob("*.tmp*"))  # no half-written file


@pytest.mark.slow
def test_file_played_to_its_end_exits_0_and_writes_nothing_without_o(clip, tmp_path):
    proc = subprocess.run(_argv(clip, clip["short"]), cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "live (source ended)" in proc.stderr and "frames tracked" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no default output folder in live mode
    # with -o: the per-frame files, then the clip's .glb and viewer page as offline
    proc = subprocess.run(_argv(clip, clip["short"], ["-o", str(tmp_path / "out")]), cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out" / "short"
    n = len(_rows(out / "tracking.csv"))
    assert n > 0 and len(list((out / "checkpoint").glob("*.frame"))) == n
    assert (out / "short.glb").read_bytes()[:4] == b"glTF"


@pytest.mark.slow
def test_bad_live_options_are_one_line(clip, tmp_path):
    proc = subprocess.run(_argv(clip, tmp_path / "missing.mp4"), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1
    assert "missing.mp4 not found" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(_argv(clip, clip["short"], ["--host", "0.0.0.0"]), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 1 and "--allow-remote" in proc.stderr and "Traceback" not in proc.stderr
