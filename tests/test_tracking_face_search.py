"""A face from the first frame it is visible in (issue 22, Deliver 3): where MediaPipe finds no face
on the whole frame, ``FaceSearch`` searches windows of it, and the landmark pass takes its crop box
from that hit, keeping the frames before it in memory (one decode).

The MediaPipe tests build a small-face video from ../shared/data/tracker/justin.mp4 (skipped
without it); duda's opening frames (the original tracker's clip, never committed) are checked where
``MICA_TRACKER_CLIPS`` or /work/clips holds ``duda/video.mp4``.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from micalib.tracking.landmarks import FaceSearch, mediapipe_available
from tests.conftest import SHARED

JUSTIN = SHARED / "data" / "tracker" / "justin.mp4"


def test_windows_cover_the_frame_largest_first_and_the_search_is_bounded():
    s = FaceSearch(every=10)
    win = s.windows(1920, 1080)
    sides = [w[2] for w in win]
    assert sides == sorted(sides, reverse=True) and set(sides) == {1080, 540}
    assert sides.count(1080) == 3 and sides.count(540) == 7 * 3
    for side in (1080, 540):  # every pixel of the frame lies in a window of each size
        cover = np.zeros((1080, 1920), bool)
        for x, y, sd in win:
            assert 0 <= x and x + sd <= 1920 and 0 <= y and y + sd <= 1080
            if sd == side:
                cover[y:y + sd, x:x + sd] = True
        assert cover.all()
    # until the first face every frame; then the 1st, 11th, 21st... faceless frame
    assert s.wanted(None)
    assert [n for n in range(25) if s.wanted(n)] == [0, 10, 20]


def _small_face_video(path: Path, n_face: int = 10, n_blank: int = 3, scale: float = 0.5):
    """Grey 1920x1080 frames: ``n_blank`` without a face, then justin's first frames shrunk by
    ``scale`` (a face of ~170 px) at (900, 100). Returns the placed frames' reference landmarks:
    MediaPipe on the original frames, mapped by the same shrink and shift."""
    from micalib.tracking.landmarks import MediaPipeLandmarker

    cap = cv2.VideoCapture(str(JUSTIN))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (1920, 1080))
    grey = np.full((1080, 1920, 3), 90, np.uint8)
    for _ in range(n_blank):
        writer.write(grey)
    ref = []
    with MediaPipeLandmarker(video_mode=False) as det:
        for _ in range(n_face):
            ok, bgr = cap.read()
            assert ok
            pts = det.detect(np.ascontiguousarray(bgr[:, :, ::-1]))
            # cv2.resize by 0.5 (INTER_AREA): pixel centre x maps to (x + 0.5) * 0.5 - 0.5
            ref.append((pts + 0.5) * scale - 0.5 + np.array([900.0, 100.0]))
            small = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            frame = grey.copy()
            frame[100:100 + small.shape[0], 900:900 + small.shape[1]] = small
            writer.write(frame)
            # the whole frame alone does not show MediaPipe the face (what the search is for)
            if len(ref) == 1:
                assert not np.isfinite(det.detect(np.ascontiguousarray(frame[:, :, ::-1]))).any()
    writer.release()
    cap.release()
    return np.stack(ref)


def _landmark_pass(video: Path, out: Path):
    from configs.config import load_cfg
    from micalib.tracking.options import TrackOptions
    from micalib.tracking.runner import TrackRunner

    options = TrackOptions.from_section(load_cfg("configs/tracker.yml", []).tracker, video=False)
    runner = TrackRunner(options, video, out, None, load_mica=None)  # the landmark pass needs no FLAME
    runner.layout.make_dirs()
    lm = runner._detect()
    return runner, lm["mediapipe"]


@pytest.mark.shared_data
@pytest.mark.slow
def test_small_face_found_from_its_first_frame_with_one_decode(tmp_path):
    if not JUSTIN.is_file() or not mediapipe_available():
        pytest.skip("../shared/data/tracker/justin.mp4 or mediapipe is absent")
    ref = _small_face_video(tmp_path / "small.avi")
    runner, mp = _landmark_pass(tmp_path / "small.avi", tmp_path / "out")
    assert len(mp) == 13 and np.isnan(mp[:3]).all()  # the grey frames have no face
    assert np.isfinite(mp[3:]).all()  # every frame with the face, from the first
    err = np.linalg.norm(mp[3:] - ref, axis=-1)
    assert np.median(err) < 2.0, np.median(err)  # the same face as on the full-size frames
    # one decode: the frames before the face were kept and cropped with the box found later
    assert runner._n_cached == 13 and runner._box is not None
    assert all(runner.layout.png(k).is_file() for k in range(13))


def _clip(name: str) -> Path | None:
    for root in (os.environ.get("MICA_TRACKER_CLIPS"), "/work/clips"):
        if root and (Path(root) / name / "video.mp4").is_file():
            return Path(root) / name / "video.mp4"
    return None


@pytest.mark.slow
def test_duda_opening_frames_have_a_face():
    """duda (1920x1080, a small face): frames 0-15 were held at frame 16 before the search."""
    video = _clip("duda")
    if video is None or not mediapipe_available():
        pytest.skip("duda/video.mp4 (MICA_TRACKER_CLIPS or /work/clips) or mediapipe is absent")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runner, mp = _landmark_pass(video, Path(tmp))
        assert np.isfinite(mp[:16]).all()
        assert np.isfinite(mp).all(axis=(1, 2)).mean() > 0.95
