"""``tracker.follow_face`` when the output frames skip input frames (``--fps`` below the clip's rate,
``--begin-frame``): the crop box follows the face of the previous *output* frame. The oracle is a
landmarker that finds a white rectangle (the "face") in whatever image it is given and reports no
face when the rectangle is cut by the image's edge, so where the face truly is is known."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import micalib.tracking.landmarks as landmarks
from configs.config import PROJECT_ROOT, load_cfg
from micalib.tracking.frames import open_frames
from micalib.tracking.runner import TrackRunner
from tests.synthetic_tracking import asset_opts

STEP = 2  # pixels the face moves right per input frame
SKIP = 3  # one output frame per SKIP input frames (a 30 fps clip at --fps 10)
N_INPUT = 45


class _RectangleLandmarker:
    """478 points spread over the white rectangle of the image, all NaN when there is none or it
    touches the image's edge (cut by the crop)."""

    def __init__(self, video_mode: bool = True):
        self.calls = 0

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        ys, xs = np.nonzero(np.asarray(rgb)[..., 0] > 128)
        h, w = rgb.shape[:2]
        if len(xs) < 20 or xs.min() == 0 or ys.min() == 0 or xs.max() == w - 1 or ys.max() == h - 1:
            return np.full((478, 2), np.nan, np.float32)
        u = np.random.default_rng(0).random((478, 2))
        x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
        return np.stack([x0 + u[:, 0] * (x1 - x0), y0 + u[:, 1] * (y1 - y0)], 1).astype(np.float32)


def _clip(folder):
    folder.mkdir()
    for i in range(N_INPUT):
        img = np.zeros((360, 640, 3), np.uint8)
        x = 60 + STEP * i
        img[150:200, x:x + 40] = 255
        cv2.imwrite(str(folder / f"{i:03d}.png"), img)
    return folder


@pytest.mark.parametrize("begin", [0, 2])
def test_follow_face_follows_the_previous_output_frame_when_input_frames_are_skipped(tmp_path, monkeypatch, begin):
    monkeypatch.setattr(landmarks, "MediaPipeLandmarker", _RectangleLandmarker)
    np.save(tmp_path / "zero.npy", np.zeros(300, np.float32))
    cfg = load_cfg(PROJECT_ROOT / "configs" / "tracker.yml", asset_opts(tmp_path / "assets") + ["tracker.follow_face", "True"])
    src = open_frames(_clip(tmp_path / "clip"))
    src.indices = src.indices[::SKIP]  # what --fps does to a clip of SKIP times the rate
    if begin:
        src.skip_first(begin)
    runner = TrackRunner.from_config(cfg, tmp_path / "clip", tmp_path / "out", identity_path=tmp_path / "zero.npy",
                                     source=src, video=False)
    mp = runner._detect()["mediapipe"]
    tracked = mp[src.indices]
    # the face moved 88 px over the clip, beyond a box that stays where it started (side ~125 px)
    assert np.isfinite(tracked).all(), f"frames without a face: {np.nonzero(~np.isfinite(tracked).all((1, 2)))[0]}"
    centre_x = np.nanmean(tracked[:, :, 0], axis=1)
    truth_x = 60 + STEP * np.asarray(src.indices) + 19.5  # the rectangle's centre column
    np.testing.assert_allclose(centre_x, truth_x, atol=3.0)
    skipped = [i for i in range(N_INPUT) if i not in src.indices]
    assert np.isnan(mp[skipped]).all()  # frames that are no output frame are not looked at
