"""track.py --begin-frame N end to end: output frame 00000 is the input's output frame N.

The oracle: the same synthetic clip cut at frame N (its first N frames and landmark rows left
out: what a user had to do before the option) tracks to the same ``.frame`` numbers (bit for bit:
the same computations on the same landmark values); the
csv, crop.json and the frame ids number the outputs from 0 with the input frame they show; the
option is part of the resume check (a re-run with another N is refused naming it, the same N
resumes, a run record written before the option existed means N = 0)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.synthetic_tracking import argv_of_last_run, track_synthetic
from utils.errors import MICAError

N_IN, BEGIN = 9, 3


def _argv(out, begin: int | None) -> list[str]:
    argv = argv_of_last_run(out, video=False)
    if begin is not None:
        at = argv.index("--image-size")
        argv[at:at] = ["--begin-frame", str(begin)]
    return argv


def _rows(out) -> list[dict]:
    with open(out / "tracking.csv", newline="") as f:
        return list(csv.DictReader(f))


def _mtimes(out) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "checkpoint").iterdir())}


def test_begin_frame_equals_tracking_the_clip_cut_there_and_resumes(tmp_path):
    import track

    (tmp_path / "whole").mkdir()
    (tmp_path / "cut").mkdir()
    seq, fr, *_, out = track_synthetic(tmp_path / "whole", real=False, n_frames=N_IN, noise_px=0.3,
                                       extra_args=["--begin-frame", str(BEGIN)])
    _, cut_fr, *_, cut_out = track_synthetic(tmp_path / "cut", real=False, n_frames=N_IN - BEGIN, noise_px=0.3,
                                             first_frame=BEGIN, seq=seq)  # the same landmark rows
    n = N_IN - BEGIN
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == [f"{k:05d}.frame" for k in range(n)]
    assert sorted(p.name for p in (out / "input").iterdir()) == [f"{k:05d}.png" for k in range(n)]
    assert len(fr) == len(cut_fr) == n
    for k in range(n):  # the same numbers as tracking the cut clip
        assert fr[k]["frame_id"] == cut_fr[k]["frame_id"] == f"{k:05d}"
        for block in ("flame", "camera", "opencv"):
            for key, val in cut_fr[k][block].items():
                np.testing.assert_array_equal(fr[k][block][key], val, err_msg=f"frame {k} {block}.{key}")
        # and the truth of input frame BEGIN + k: sideways within 0.5 mm (6 frames leave the depth to
        # the focal prior), the nearest of all frames' (the head moves ~1.7 mm sideways per frame)
        t = fr[k]["opencv"]["t"][0].astype(np.float64)
        assert np.abs(t[:2] - seq["t"][BEGIN + k][:2]).max() < 5e-4
        assert int(np.argmin(np.abs(seq["t"][:, 0] - t[0]))) == BEGIN + k
    rows, cut_rows = _rows(out), _rows(cut_out)
    assert [r["frame"] for r in rows] == [f"{k:05d}" for k in range(n)]
    assert [int(r["input_frame"]) for r in rows] == list(range(BEGIN, N_IN))
    assert [int(r["input_frame"]) for r in cut_rows] == list(range(n))
    assert [r["time_s"] for r in rows] == [r["time_s"] for r in cut_rows]  # the outputs' own clock
    crop = json.loads((out / "crop.json").read_text())
    assert [f["input_frame"] for f in crop["frames"]] == list(range(BEGIN, N_IN))
    assert json.loads((out / ".track_run.json").read_text())["begin_frame"] == BEGIN

    # resume: the same N reuses every frame; another N (0 included) is refused naming the option
    before = _mtimes(out)
    track.main(_argv(out, BEGIN))
    assert _mtimes(out) == before
    for other, shown in ((2, "2"), (None, "0")):
        with pytest.raises(MICAError, match=f"--begin-frame: {BEGIN} before, {shown} now") as e:
            track.main(_argv(out, other))
        assert "--overwrite" in str(e.value)
    assert _mtimes(out) == before

    # a record written before the option existed (no begin_frame) is a run from frame 0
    rec = json.loads((cut_out / ".track_run.json").read_text())
    assert rec.pop("begin_frame") == 0
    (cut_out / ".track_run.json").write_text(json.dumps(rec))
    before = _mtimes(cut_out)
    track.main(_argv(cut_out, None))
    assert _mtimes(cut_out) == before
    with pytest.raises(MICAError, match="--begin-frame: 0 before, 1 now"):
        track.main(_argv(cut_out, 1))


def test_begin_frame_past_the_clip_or_in_live_mode_is_one_line(tmp_path):
    import track
    from utils.errors import UserError

    clip = tmp_path / "clip"
    clip.mkdir()
    import cv2

    for k in range(3):
        cv2.imwrite(str(clip / f"{k}.png"), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(MICAError, match="--begin-frame 3 skips every output frame") as e:
        track.main(["-i", str(clip), "-o", str(tmp_path / "out"), "--begin-frame", "3"])
    assert "\n" not in str(e.value) and not (tmp_path / "out" / "clip").exists()
    with pytest.raises(UserError, match="--begin-frame is not available in live mode"):
        track.main(["--live", str(clip / "0.png"), "--begin-frame", "2"])
