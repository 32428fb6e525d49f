"""``python -m micalib.export.gltf`` on tracking folders other than today's offline ones. K
(``read_clip``) in either convention:
track.py before run record format 2 wrote the ``.frame`` K in OpenCV's pixel convention (integer
pixel centres, no ``format`` in ``.track_run.json``), since then in the files' (centre at i + 0.5,
as the original). Both folders of one clip give the same camera; before, the older folder's came
out half a pixel off its .frame pixels, silently. The frame rate of a live ``-o`` folder."""
from __future__ import annotations

import json

import numpy as np
import pytest

from micalib.export.gltf import read_clip
from micalib.tracking.outputs import frame_dict, save_frame

K_CV = np.array([[900.0, 0, 255.5], [0, 910.0, 250.25], [0, 0, 1]])  # OpenCV's pixel centres


def _folder(root, record: dict | None, k_written: np.ndarray):
    (root / "checkpoint").mkdir(parents=True)
    for k in range(2):
        data = frame_dict(np.zeros(100), np.zeros(9), np.zeros(2), np.zeros(300), np.eye(3),
                          np.array([0.0, 0.0, 1.0]), K_CV, (512, 512), k, 0)
        data["opencv"]["K"] = k_written.reshape(1, 3, 3).astype(np.float32)
        save_frame(root / "checkpoint" / f"{k:05d}.frame", data)
    if record is not None:
        (root / ".track_run.json").write_text(json.dumps(record))
    return root


@pytest.mark.parametrize("record, k_written", [
    ({"format": 2, "fps": 25.0}, K_CV + np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])),  # today's track.py
    (None, K_CV + np.array([[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]])),  # the original tracker's (no record)
    ({"fps": 25.0, "image_size": 512}, K_CV),  # a track.py before format 2
])
def test_clip_k_is_opencv_whatever_the_folder_version(tmp_path, record, k_written):
    clip, _ = read_clip(_folder(tmp_path / "clip", record, k_written))
    np.testing.assert_allclose(clip.K, np.stack([K_CV, K_CV]), atol=1e-4)


def test_fps_of_a_live_folder(tmp_path):
    """A live run's tracking.csv has capture times (its first frame after the warm-up, here at
    2 s); the clip's frame rate is that of its frames (25 fps), as offline (times k / fps)."""
    from micalib.export.gltf import clip_fps

    for name, t0 in (("live", 2.0), ("offline", 0.0)):
        (tmp_path / name).mkdir()
        rows = "".join(f"{k},{t0 + k / 25.0:.6f}\n" for k in range(50))
        (tmp_path / name / "tracking.csv").write_text("frame,time_s\n" + rows)
        assert clip_fps(tmp_path / name) == pytest.approx(25.0, abs=1e-3), name


def test_frames_beyond_99999_come_in_frame_order(tmp_path):
    """Frame numbers grow to six digits after 99999 (``frame_name``); by name, 100000 sorted
    between 10000 and 10001."""
    from micalib.export.gltf import frame_paths

    (tmp_path / "checkpoint").mkdir()
    numbers = [9999, 10000, 10001, 99999, 100000, 100001]
    for k in numbers:
        (tmp_path / "checkpoint" / f"{k:05d}.frame").write_bytes(b"")
    assert [int(p.stem) for p in frame_paths(tmp_path)] == numbers
