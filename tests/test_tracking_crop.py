"""micalib.tracking.crop: the box and the crop matrix against hand computation, the crop against
independent OpenCV/numpy paths (block means, warpAffine with the same matrix), point round trips,
bbox.pt as the original's torch file, crop.json, and the per-frame CropTrack."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from micalib.tracking.crop import (
    CropTrack,
    box_from_landmarks,
    box_of_matrix,
    crop_matrix,
    invert_matrix,
    load_bbox_pt,
    read_crop_json,
    save_bbox_pt,
    transform_points,
    warp,
    write_crop_json,
)


def test_box_from_landmarks_hand_computed():
    pts = np.array([[100.0, 200.0], [140.0, 260.0], [120.0, 230.0], [np.nan, np.nan]])
    # bounding box x 100..140, y 200..260: centre (120, 230), longer side 60 x 2.5 = 150;
    # x_min = floor(120 - 149/2 + 1/2) = 46, y_min = floor(230 - 74) = 156
    assert box_from_landmarks(pts) == (46, 196, 156, 306)
    # side 60: x_min = floor(120 - 59/2 + 1/2) = 91 (centre 120.5: a tie between 91 and 90 goes up)
    assert box_from_landmarks(pts, scale=1.0) == (91, 151, 201, 261)
    with pytest.raises(ValueError, match="no face"):
        box_from_landmarks(np.full((68, 2), np.nan))


def test_crop_matrix_hand_computed_and_inverse():
    M = crop_matrix((46, 196, 156, 306), 300)
    # scale 300/150 = 2; input pixel 46 covers crop pixels 0 and 1 -> its centre maps to 0.5:
    # u = 2 x + (0.5 - 46) * 2 - 0.5 = 2 x - 91.5
    np.testing.assert_allclose(M, [[2.0, 0.0, -91.5], [0.0, 2.0, -311.5]])
    assert M.dtype == np.float64 and M.shape == (2, 3)
    np.testing.assert_allclose(transform_points(np.array([[46.0, 156.0], [195.0, 305.0]]), M), [[0.5, 0.5], [298.5, 298.5]])
    assert box_of_matrix(M, (300, 300)) == (46, 196, 156, 306)
    assert box_of_matrix(np.array([[1.0, 0.1, 0], [0, 1.0, 0]]), (10, 10)) is None
    rng = np.random.default_rng(0)
    p = rng.uniform(-50, 500, (100, 2))
    p[3] = np.nan
    back = transform_points(transform_points(p, M), invert_matrix(M))
    np.testing.assert_allclose(back[~np.isnan(p).any(1)], p[~np.isnan(p).any(1)], atol=1e-9)
    assert np.isnan(back[3]).all()
    np.testing.assert_allclose(invert_matrix(M), cv2.invertAffineTransform(M), atol=1e-12)


def test_warp_shrink_is_the_block_mean():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    box = (40, 240, 20, 220)  # 200 px -> 100: each crop pixel is the mean of a 2x2 block
    crop = warp(img, crop_matrix(box, 100), 100)
    ref = img[20:220, 40:240].astype(np.float64).reshape(100, 2, 100, 2, 3).mean(axis=(1, 3))
    assert crop.shape == (100, 100, 3) and crop.dtype == np.uint8
    assert np.abs(crop - ref).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("box, n", [((30, 360, 40, 370), 100), ((10, 400, 5, 395), 128), ((40, 240, 20, 220), 100),
                                     ((7, 157, 9, 159), 100)])
def test_warp_samples_where_the_matrix_says(box, n):
    """On a linear ramp (float image: value = x + 1000 y) every correct resampler returns the ramp at
    the sample's centre, so the crop must equal the hand-computed centres
    x = x_min + (u + 1/2) S / n - 1/2 (shrinks of 3.3x, 3.05x, 2x and 1.5x)."""
    h, w = 420, 440
    img = (np.arange(w)[None, :] + 1000.0 * np.arange(h)[:, None]).astype(np.float32)
    img = np.repeat(img[..., None], 3, axis=2)
    out = warp(img, crop_matrix(box, n), n)
    s = (box[1] - box[0]) / n
    u = np.arange(n)
    x = box[0] + (u + 0.5) * s - 0.5
    y = box[2] + (u + 0.5) * s - 0.5
    np.testing.assert_allclose(out[..., 0], x[None, :] + 1000.0 * y[:, None], rtol=0, atol=0.05)


def test_warp_large_shrink_does_not_alias():
    """A grating finer than the crop's pixels must average out (as OpenCV's exact area resampling
    does), not turn into moire (as plain bilinear sampling does)."""
    x, y = np.arange(420), np.arange(400)
    for period in (2.5, 4.0):
        g = 128 + 100 * np.cos(2 * np.pi * (x[None, :] / period + y[:, None] / (period * 1.7)))
        img = np.repeat(np.clip(np.rint(g), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        for box, n in (((30, 360, 40, 370), 100), ((10, 400, 5, 395), 128)):  # 3.3x and 3.05x
            sub = img[box[2]:box[3], box[0]:box[1]]
            ours = warp(img, crop_matrix(box, n), n).astype(np.float64).std()
            area = cv2.resize(sub, (n, n), interpolation=cv2.INTER_AREA).astype(np.float64).std()
            lin = cv2.resize(sub, (n, n), interpolation=cv2.INTER_LINEAR).astype(np.float64).std()
            assert ours < 1.5 * area + 1.0 and lin > 4 * ours, (period, n, ours, area, lin)


def test_warp_matches_warp_affine_with_the_same_matrix_and_pads_black():
    rng = np.random.default_rng(2)
    img = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (0, 0), 2.0)
    box = (-20, 80, 50, 150)  # 100 px, partly left of and below the image -> 256 (enlarging)
    M = crop_matrix(box, 256)
    ours = warp(img, M, 256).astype(np.int16)
    ref = cv2.warpAffine(img, M, (256, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    ref = ref.astype(np.int16)
    inner = (slice(10, 170), slice(60, 250))  # away from the image's edges
    assert np.abs(ours[inner] - ref[inner]).max() <= 2
    assert (ours[:, :40] == 0).all() and (ours[200:] == 0).all()  # outside the image: black
    # a rotated matrix takes the warpAffine path and agrees with it exactly
    R = np.array([[np.cos(0.3), -np.sin(0.3), 30.0], [np.sin(0.3), np.cos(0.3), -10.0]])
    np.testing.assert_array_equal(warp(img, R, (64, 48)), cv2.warpAffine(img, R, (64, 48), flags=cv2.INTER_LINEAR))


def test_bbox_pt_is_the_originals_int_tensor(tmp_path):
    path = tmp_path / "bbox.pt"
    save_bbox_pt(path, (652, 1494, 62, 904))
    t = torch.load(path, weights_only=True)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.tolist() == [652, 1494, 62, 904]
    assert load_bbox_pt(path) == (652, 1494, 62, 904)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file


def test_crop_json_round_trip(tmp_path):
    mats = [crop_matrix((0, 100, 0, 100), 512), crop_matrix((10, 110, 5, 105), 512)]
    write_crop_json(tmp_path / "crop.json", mats, 512, input_indices=[0, 2])
    doc = json.loads((tmp_path / "crop.json").read_text())
    assert doc["crop_size"] == [512, 512]
    assert [f["frame"] for f in doc["frames"]] == ["00000", "00001"]
    assert [f["input_frame"] for f in doc["frames"]] == [0, 2]
    np.testing.assert_allclose(doc["frames"][1]["matrix"], mats[1])
    back = read_crop_json(tmp_path / "crop.json")
    assert len(back) == len(mats)
    for a, b in zip(back, mats, strict=True):
        np.testing.assert_array_equal(a, b)


def test_crop_track_smooths_and_holds():
    track = CropTrack(scale=1.0, smoothing=0.5)
    nan = np.full((5, 2), np.nan)
    assert track.update(nan) is None  # no face yet
    a = np.array([[0.0, 0.0], [100.0, 100.0]])  # centre (50, 50), side 100
    assert track.update(a) == (1, 101, 1, 101)  # floor(50 - 99/2 + 1/2) = 1
    b = a + [40.0, 20.0]  # centre (90, 70): smoothed centre (70, 60), side 100
    # x_min = floor(70 - 99/2 + 1/2) = 21, y_min = floor(60 - 49) = 11
    assert track.update(b) == (21, 121, 11, 111)
    assert track.update(nan) == (21, 121, 11, 111)  # a frame without a face holds the box
    assert CropTrack(scale=1.0, smoothing=0.0).update(b) == box_from_landmarks(b, 1.0)
