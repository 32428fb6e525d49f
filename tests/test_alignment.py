"""utils/alignment.py: similarity estimation, ArcFace crops, network input, box crops."""
from __future__ import annotations

import numpy as np
import pytest

from utils.alignment import (ARCFACE_TEMPLATE, crop_from_box, estimate_norm, estimate_similarity, norm_crop,
                             to_network_input)


def _similarity(scale: float, angle: float, t: tuple[float, float]) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, t[0]], [scale * s, scale * c, t[1]]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:, :2].T + m[:, 2]


def test_template_values() -> None:
    assert ARCFACE_TEMPLATE.shape == (5, 2) and ARCFACE_TEMPLATE.dtype == np.float32
    np.testing.assert_allclose(ARCFACE_TEMPLATE[0], [38.2946, 51.6963])
    np.testing.assert_allclose(ARCFACE_TEMPLATE[4], [70.7299, 92.2041])


def test_recovers_known_similarity_exactly() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = _similarity(rng.uniform(0.1, 5), rng.uniform(-np.pi, np.pi), tuple(rng.uniform(-300, 300, 2)))
        src = rng.uniform(0, 500, (rng.integers(2, 8), 2))
        np.testing.assert_allclose(estimate_similarity(src, _apply(m, src)), m, atol=1e-8)


def test_least_squares_and_no_reflection() -> None:
    # dst is a mirrored copy of src: the best proper similarity cannot reproduce it, but must still
    # have det > 0 (rotation+scale, no flip)
    src = np.array([[0, 0], [10, 0], [0, 5], [3, 7]], float)
    dst = src * [-1, 1]
    m = estimate_similarity(src, dst)
    assert np.linalg.det(m[:, :2]) > 0
    # noisy points: the estimate minimises the squared error -> no small perturbation improves it
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    dst = _apply(_similarity(1.3, 0.4, (5, -7)), src) + rng.normal(0, 2, (5, 2))
    m = estimate_similarity(src, dst)
    best = ((_apply(m, src) - dst) ** 2).sum()
    for _ in range(50):
        a, b = m[0, 0] + rng.normal(0, 1e-3), m[1, 0] + rng.normal(0, 1e-3)
        mm = np.array([[a, -b, m[0, 2] + rng.normal(0, 1e-2)], [b, a, m[1, 2] + rng.normal(0, 1e-2)]])
        assert ((_apply(mm, src) - dst) ** 2).sum() >= best - 1e-9
    with pytest.raises(ValueError):
        estimate_similarity(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 2)), np.zeros((4, 2)))


@pytest.mark.parametrize("size", [112, 224])
def test_norm_crop_puts_keypoints_on_template(size: int) -> None:
    m_true = _similarity(0.9, 0.3, (120.0, 40.0))
    kps = np.rint(_apply(m_true, ARCFACE_TEMPLATE.astype(float)))  # the face's points in the photo
    target = ARCFACE_TEMPLATE * (size / 112)
    for k in range(5):
        img = np.zeros((300, 400, 3), np.uint8)  # one bright 3x3 dot on keypoint k
        x, y = kps[k].astype(int)
        img[y - 1:y + 2, x - 1:x + 2] = 255
        crop = norm_crop(img, kps, size)
        assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
        w = crop[..., 0].astype(float)
        ys, xs = np.mgrid[0:size, 0:size]
        centroid = np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()
        # only rounding of the photo points to whole pixels separates them from the template
        np.testing.assert_allclose(centroid, target[k], atol=0.7 * size / 112 / 0.9)


def test_estimate_norm_224_is_template_times_two() -> None:
    rng = np.random.default_rng(3)
    kps = ARCFACE_TEMPLATE * 3 + rng.normal(0, 1, (5, 2))
    m112, m224 = estimate_norm(kps, 112), estimate_norm(kps, 224)
    np.testing.assert_allclose(m224, 2 * m112, atol=1e-9)


def test_to_network_input() -> None:
    crop = np.zeros((112, 112, 3), np.uint8)
    crop[..., 0] = 255
    crop[..., 1] = 127
    crop[0, 0, 2] = 10
    x = to_network_input(crop)
    assert x.shape == (3, 112, 112) and x.dtype == np.float32
    assert x[0, 5, 5] == pytest.approx(1.0)
    assert x[1, 5, 5] == pytest.approx((127 - 127.5) / 127.5)
    assert x[2, 0, 0] == pytest.approx((10 - 127.5) / 127.5)
    assert x[2, 5, 5] == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        to_network_input(np.zeros((224, 224, 3), np.uint8))


def test_crop_from_box() -> None:
    img = np.zeros((400, 600, 3), np.uint8)
    box = np.array([200, 100, 300, 260], float)  # w 100, h 160 -> extent 1.6 * 130 = 208 px
    img[180, 250] = 255  # box centre (250, 180)
    crop, m = crop_from_box(img, box, scale=1.6, size=224)
    assert crop.shape == (224, 224, 3)
    np.testing.assert_allclose(_apply(m, np.array([[250.0, 180.0]])), [[112, 112]])
    np.testing.assert_allclose(m[0, 0], 224 / 208)
    ys, xs = np.nonzero(crop[..., 0])
    assert abs(xs.mean() - 112) < 1 and abs(ys.mean() - 112) < 1
    # the crop spans exactly 208 photo pixels: photo x = 250 - 104 maps to crop x = 0
    np.testing.assert_allclose(_apply(m, np.array([[146.0, 76.0]])), [[0, 0]], atol=1e-9)
