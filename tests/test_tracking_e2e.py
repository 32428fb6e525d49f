"""track.py end to end: the overlay video, resuming, and the real clip ../shared/data/tracker/justin.mp4
(first 60 frames, MediaPipe landmarks, synthetic FLAME on the real topology, zero identity)."""
from __future__ import annotations

import csv
import itertools
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from micalib.tracking.outputs import read_frame
from tests.synthetic_tracking import argv_of_last_run, asset_opts, track_synthetic


def _mtimes(folder: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


def _video_frames(path: Path):
    cap = cv2.VideoCapture(str(path))
    n, shape = 0, None
    while True:
        ok, img = cap.read()
        if not ok:
            break
        n, shape = n + 1, img.shape
    cap.release()
    return n, shape


def test_video_written_and_rerun_skips_finished_frames(tmp_path):
    _seq, frames, _model, _face, out = track_synthetic(tmp_path, real=False, n_frames=8, noise_px=0.3, video=True)
    n, shape = _video_frames(out / "video.mp4")
    assert n == 8 and shape == (512, 3 * 512, 3)
    for sub, ext in (("checkpoint", ".frame"), ("mesh", ".ply"), ("input", ".png")):
        assert sorted(p.name for p in (out / sub).iterdir()) == [f"{k:05d}{ext}" for k in range(8)]
    assert (out / "canonical.obj").is_file() and (out / "identity.npy").is_file() and (out / "crop.json").is_file()
    with open(out / "tracking.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["frame"] for r in rows] == [f"{k:05d}" for k in range(8)]
    assert all(r["face_found"] == "1" and r["interpolated"] == "0" for r in rows)
    # a re-run leaves the finished frames alone; deleting one frame redoes only that one
    before = _mtimes(out / "checkpoint")
    os.remove(out / "checkpoint" / "00005.frame")
    import track

    argv = argv_of_last_run(out)
    track.main(argv)
    after = _mtimes(out / "checkpoint")
    assert set(after) == set(before)
    assert all(after[k] == before[k] for k in before if k != "00005.frame")
    redone = read_frame(out / "checkpoint" / "00005.frame")
    assert np.allclose(redone["opencv"]["K"], frames[5]["opencv"]["K"])
    assert np.abs(redone["opencv"]["t"] - frames[5]["opencv"]["t"]).max() < 2e-3
    assert _video_frames(out / "video.mp4")[0] == 8


def test_no_face_in_any_frame_is_one_line_error(tmp_path):
    import track
    from utils.errors import MICAError

    frames = tmp_path / "clip"
    frames.mkdir()
    for k in range(3):
        cv2.imwrite(str(frames / f"{k}.png"), np.zeros((64, 64, 3), np.uint8))
    np.savez(tmp_path / "lmk.npz", mediapipe=np.full((3, 478, 2), np.nan, np.float32))
    with pytest.raises(MICAError, match="no face in any frame"):
        track.main(["-i", str(frames), "-o", str(tmp_path / "out"), "--landmarks", str(tmp_path / "lmk.npz"),
                    "--identity", str(tmp_path / "none.npy"), "--no-video"] + asset_opts(tmp_path / "assets"))


@pytest.mark.shared_data
@pytest.mark.slow
def test_real_clip_first_60_frames(tmp_path):
    from micalib.tracking.landmarks import mediapipe_available
    from tests.synthetic_flame import shared_flame_public
    from tests.synthetic_tracking import shared_tracker_dir, write_tracker_assets

    shared = shared_tracker_dir()
    if shared is None or not (shared / "justin.mp4").is_file() or shared_flame_public() is None:
        pytest.skip("../shared/data/tracker/justin.mp4 or ../shared/data/flame_public is absent")
    if not mediapipe_available():
        pytest.skip("mediapipe is not installed (install.sh installs it)")
    clip = tmp_path / "justin"
    clip.mkdir()
    cap = cv2.VideoCapture(str(shared / "justin.mp4"))
    for k in range(60):
        ok, img = cap.read()
        assert ok
        cv2.imwrite(str(clip / f"{k:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cap.release()
    assets = write_tracker_assets(tmp_path / "assets", seed=0, real=True)
    np.save(tmp_path / "zero.npy", np.zeros(300, np.float32))
    argv = ["-i", str(clip), "-o", str(tmp_path / "out"), "--identity", str(tmp_path / "zero.npy"),
            "model.flame_model_path", str(assets["flame_model_path"]),
            "model.flame_lmk_embedding_path", str(assets["flame_lmk_embedding_path"]),
            "tracker.mediapipe_embedding_path", str(assets["mediapipe_embedding_path"]),
            "tracker.l_eyelid_path", str(assets["l_eyelid_path"]), "tracker.r_eyelid_path", str(assets["r_eyelid_path"]),
            "model.flame_masks_path", str(assets["flame_masks_path"])]
    import track

    track.main(argv)
    out = tmp_path / "out" / "justin"
    with open(out / "tracking.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60 and all(r["face_found"] == "1" for r in rows)
    rs = [read_frame(out / "checkpoint" / f"{k:05d}.frame")["opencv"]["R"][0].astype(np.float64) for k in range(60)]
    steps = [np.degrees(np.linalg.norm(cv2.Rodrigues(b @ a.T)[0])) for a, b in itertools.pairwise(rs)]
    assert max(steps) < 5.0, max(steps)
    n, shape = _video_frames(out / "video.mp4")
    assert n == 60 and shape == (512, 1536, 3)
    assert (out / "landmarks.npz").is_file() and (out / "bbox.pt").is_file()
    # input/NNNNN.png (written by the landmark pass) is the frame warped by crop.json's matrix
    from micalib.tracking.crop import read_crop_json, warp
    from utils.image_io import read_image

    m = read_crop_json(out / "crop.json")
    for k in (0, 37):
        want = warp(read_image(clip / f"{k:03d}.jpg"), m[k], (512, 512))
        np.testing.assert_array_equal(read_image(out / "input" / f"{k:05d}.png"), want)
    before = _mtimes(out / "checkpoint")
    track.main(argv)  # finished frames are skipped (landmarks cached, nothing rewritten)
    assert _mtimes(out / "checkpoint") == before


@pytest.mark.shared_data
@pytest.mark.slow
def test_identity_from_the_frames_is_demo_fuse(tmp_path):
    """No --identity: MICA on the frames, averaged; the oracle is demo.py --fuse on the same images."""
    from tests.synthetic_tracking import shared_tracker_dir
    from tests.synthetic_weights import write_random_mica_tar

    shared = shared_tracker_dir()
    if shared is None or not (shared / "justin.mp4").is_file():
        pytest.skip("../shared/data/tracker/justin.mp4 is absent")
    _seq, _frames, _model, _face, out = track_synthetic(tmp_path / "run", real=False, n_frames=3, noise_px=0.3)
    clip = tmp_path / "faces" / "justin"
    clip.mkdir(parents=True)
    cap = cv2.VideoCapture(str(shared / "justin.mp4"))
    for k in range(3):
        ok, img = cap.read()
        assert ok
        cv2.imwrite(str(clip / f"{k:03d}.png"), cv2.resize(img[:, 690:1230], (512, 512), interpolation=cv2.INTER_AREA))
    cap.release()
    tar = write_random_mica_tar(tmp_path / "mica.tar", arch="iresnet18", seed=0)
    flame_dir = tmp_path / "run" / "assets" / "flame"
    common = ["model.arch", "iresnet18", "pretrained_model_path", str(tar), "detector.name", "mtcnn",
              "model.flame_model_path", str(flame_dir / "generic_model.pkl"),
              "model.flame_lmk_embedding_path", str(flame_dir / "landmark_embedding.npy"),
              "model.topology_path", str(flame_dir / "head_template.obj"),
              "model.flame_masks_path", str(flame_dir / "FLAME_masks.pkl"), "detector.antelopev2_dir", "/nonexistent/antelopev2"]
    import demo
    import track

    argv = argv_of_last_run(out)
    argv[argv.index("-i") + 1] = str(clip)
    i = argv.index("--identity")
    del argv[i:i + 2]
    i = argv.index("--landmarks")
    np.savez(tmp_path / "lmk3.npz", mediapipe=np.load(argv[i + 1])["mediapipe"][:3])
    argv[i + 1] = str(tmp_path / "lmk3.npz")
    track.main(argv + common)
    ident = np.load(tmp_path / "run" / "out" / "justin" / "identity.npy")
    assert not demo.main(["-i", str(tmp_path / "faces"), "-o", str(tmp_path / "demo"), "-a", str(tmp_path / "arc"),
                          "--fuse", "--no-render", *common])
    fused = np.load(tmp_path / "demo" / "justin" / "fused" / "identity.npy")
    assert ident.shape == (300,) and np.allclose(ident, fused.reshape(-1), atol=1e-4)


def test_photometric_stage_runs_and_lowers_its_error(tmp_path):
    """--photometric on a rendered synthetic sequence: frames are written, and within each frame the
    photometric error falls from the landmark fit's starting point."""
    import torch

    from micalib.tracking.photometric import PhotometricRefiner

    _seq, _frames, model, _face, out = track_synthetic(tmp_path, real=False, n_frames=4, noise_px=0.3)
    # render the ground-truth frames with a lit per-vertex albedo and track them again photometrically
    import track

    seq = _seq
    ref = PhotometricRefiner(model.faces, model.flame.n_vertices, 512, 512)
    ref.albedo = torch.rand(model.flame.n_vertices, 3, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    clip = tmp_path / "clip"
    for k in range(4):
        cam = seq["vertices"][k] @ seq["R"][k].T + seq["t"][k]
        uvw = cam @ seq["K"].T
        screen = torch.as_tensor(np.concatenate([uvw[:, :2] / uvw[:, 2:], cam[:, 2:]], 1), dtype=torch.float32)
        img, _, _ = ref.render((screen, torch.as_tensor(cam, dtype=torch.float32)))
        rgb = (img.clamp(0, 1).numpy() * 255).astype(np.uint8)
        cv2.imwrite(str(clip / f"{k:04d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    argv = argv_of_last_run(out)
    for sub in ("checkpoint", "mesh", "input"):
        for p in (out / sub).iterdir():
            p.unlink()
    captured = {}
    from micalib.tracking import photo_stage

    orig = photo_stage.PhotometricStage.refine

    def spy(self, *a, **kw):
        res = orig(self, *a, **kw)
        captured.setdefault("h", []).append(self.history[-1])
        return res

    photo_stage.PhotometricStage.refine = spy
    try:
        track.main(["--photometric", "--no-video", "--overwrite"] + argv + ["tracker.photometric_iters", "15"])
    finally:
        photo_stage.PhotometricStage.refine = orig
    assert len(captured["h"]) == 4 and (out / "checkpoint" / "00003.frame").is_file()
    for h in captured["h"][1:]:  # after the first frame the albedo has been learnt
        assert h[-1] < h[0]


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.linalg.norm(cv2.Rodrigues(b @ a.T)[0])))


def test_frames_without_a_face_are_interpolated_or_held_and_flagged(tmp_path):
    n = 20
    blank = (0, 1, 10, 11, 12, 19)
    _seq, fr, _model, _face, out = track_synthetic(tmp_path, real=False, n_frames=n, noise_px=0.3,
                                                    blank_frames=blank)
    with open(out / "tracking.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["frame"] for r in rows] == [f"{k:05d}" for k in range(n)]  # never dropped
    assert [int(r["interpolated"]) for r in rows] == [int(k in blank) for k in range(n)]
    assert [int(r["face_found"]) for r in rows] == [int(k not in blank) for k in range(n)]
    for sub in ("checkpoint", "mesh", "input"):
        assert len(list((out / sub).iterdir())) == n

    def get(k, *key):
        d = fr[k]
        for part in key:
            d = d[part]
        return np.asarray(d, np.float64)

    # held at the ends: the nearest tracked frame's values
    for k, src in ((0, 2), (1, 2), (19, 18)):
        for key in (("flame", "exp"), ("flame", "jaw"), ("opencv", "R"), ("opencv", "t")):
            np.testing.assert_allclose(get(k, *key), get(src, *key), atol=1e-6)
    # between frames 9 and 13: linear in expression and translation (by hand), the rotation on the geodesic
    for k in (10, 11, 12):
        s = (k - 9) / 4
        for key in (("flame", "exp"), ("flame", "eyelids"), ("opencv", "t")):
            np.testing.assert_allclose(get(k, *key), (1 - s) * get(9, *key) + s * get(13, *key), atol=1e-5)
    ra, rm, rb = get(9, "opencv", "R")[0], get(11, "opencv", "R")[0], get(13, "opencv", "R")[0]
    total = _angle_deg(ra, rb)
    assert total > 0.05  # the head moves over the gap
    assert abs(_angle_deg(ra, rm) - total / 2) < 1e-3 * max(total, 1) + 1e-4
    assert abs(_angle_deg(rm, rb) - total / 2) < 1e-3 * max(total, 1) + 1e-4


@pytest.mark.slow
def test_whole_truncated_clip_finishes_with_one_warning(tmp_path):
    """The shared justin.mp4 decodes 300 of the 448 frames its header states: track.py tracks the
    frames it has (no second decode, no error) and warns once (``--no-glb``: the synthetic FLAME's
    dense weights would add the .glb exporter's eyelid warning)."""
    from loguru import logger

    from micalib.tracking.crop import read_crop_json
    from micalib.tracking.landmarks import mediapipe_available
    from tests.synthetic_flame import shared_flame_public
    from tests.synthetic_tracking import shared_tracker_dir, write_tracker_assets

    shared = shared_tracker_dir()
    if shared is None or not (shared / "justin.mp4").is_file() or shared_flame_public() is None:
        pytest.skip("../shared/data/tracker/justin.mp4 or ../shared/data/flame_public is absent")
    if not mediapipe_available():
        pytest.skip("mediapipe is not installed (install.sh installs it)")
    cap = cv2.VideoCapture(str(shared / "justin.mp4"))
    stated, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
    decodable = 0
    while cap.grab():
        decodable += 1
    cap.release()
    if decodable >= stated:
        pytest.skip("this justin.mp4 is complete")
    assets = write_tracker_assets(tmp_path / "assets", seed=0, real=True)
    np.save(tmp_path / "zero.npy", np.zeros(300, np.float32))
    argv = ["-i", str(shared / "justin.mp4"), "-o", str(tmp_path / "out"), "--identity", str(tmp_path / "zero.npy"),
            "--fps", "25", "--no-glb", "model.flame_model_path", str(assets["flame_model_path"]),
            "model.flame_lmk_embedding_path", str(assets["flame_lmk_embedding_path"]),
            "tracker.mediapipe_embedding_path", str(assets["mediapipe_embedding_path"]),
            "tracker.l_eyelid_path", str(assets["l_eyelid_path"]), "tracker.r_eyelid_path", str(assets["r_eyelid_path"]),
            "model.flame_masks_path", str(assets["flame_masks_path"])]
    import track

    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(str(m)), level="WARNING")
    try:
        assert track.main(argv) == 0
    finally:
        logger.remove(sink)
    assert len(warnings) == 1 and "ends after" in warnings[0], warnings
    # output frame k shows input frame round(k * fps / 25), ties to the earlier: as many as decode
    n_out = sum(1 for k in range(10 ** 4) if np.ceil(k * fps / 25.0 - 0.5) <= decodable - 1)
    out = tmp_path / "out" / "justin"
    with open(out / "tracking.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n_out
    for sub in ("checkpoint", "mesh", "input"):
        assert len(list((out / sub).iterdir())) == n_out
    assert _video_frames(out / "video.mp4")[0] == n_out
    assert not (out / ".crops.raw").exists()  # the crop cache of the landmark pass is removed
    assert len(read_crop_json(out / "crop.json")) == n_out
    # landmarks from a file: the first pass decodes nothing, the second finds the end; crop.json
    # then lists the tracked frames only (it listed every frame the header states)
    argv_lm = ["--landmarks", str(out / "landmarks.npz")] + argv
    argv_lm[argv_lm.index("-o") + 1] = str(tmp_path / "out_lm")
    assert track.main(argv_lm) == 0
    out_lm = tmp_path / "out_lm" / "justin"
    assert len(list((out_lm / "checkpoint").iterdir())) == n_out
    assert len(read_crop_json(out_lm / "crop.json")) == n_out
