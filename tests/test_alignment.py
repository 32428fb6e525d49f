"""utils/alignment.py: similarity estimation, ArcFace crops, network input, box crops."""
from __future__ import annotations

import numpy as np
import pytest

from utils.alignment import (
    ARCFACE_TEMPLATE,
    box_crop_matrix,
    crop_from_box,
    estimate_norm,
    estimate_similarity,
    norm_crop,
    to_network_input,
    warp_bilinear,
)


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


def test_box_crop_matrix_hand_values() -> None:
    # Box left 200.3, top 100.2, right 300.9, bottom 261.7: width 100.6, height 161.5, mean 131.05;
    # 1.6 x 131.05 = 209.68 -> side 209 (truncated); centre (250.6, 180.95); scale 223/209.
    m = box_crop_matrix(np.array([200.3, 100.2, 300.9, 261.7]), scale=1.6, size=224)
    k = 223.0 / 209.0
    hand = np.array([[k, 0.0, -k * (250.6 - 104.5)], [0.0, k, -k * (180.95 - 104.5)]])
    np.testing.assert_allclose(m, hand, rtol=0, atol=1e-12)
    # The three corners land on (0,0), (0,223), (223,0); the centre on (111.5, 111.5).
    corners = np.array([[146.1, 76.45], [146.1, 285.45], [355.1, 76.45], [250.6, 180.95]])
    np.testing.assert_allclose(_apply(m, corners), [[0, 0], [0, 223], [223, 0], [111.5, 111.5]], atol=1e-9)
    # scikit-image's least-squares similarity from the same three corners (what MICA calls).
    from skimage.transform import estimate_transform

    tf = estimate_transform("similarity", corners[:3], np.array([[0, 0], [0, 223], [223, 0]], float))
    np.testing.assert_allclose(m, tf.params[:2], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="box"):
        box_crop_matrix(np.array([10.0, 10.0, 5.0, 5.0]))


def _skimage_crop(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Independent reference: scikit-image warp (bilinear, constant 0), as MICA samples NoW crops."""
    from skimage.transform import AffineTransform, warp

    return warp(img, AffineTransform(matrix=np.vstack([m, [0, 0, 1]])).inverse, output_shape=(224, 224),
                order=1, mode="constant", cval=0.0, clip=False, preserve_range=True)


def test_crop_from_box_is_exact_bilinear() -> None:
    rng = np.random.default_rng(0)
    # Non-square photo with hard edges (random blocks) and noise: OpenCV's 1/32-pixel grid fails here.
    img = np.kron(rng.integers(0, 256, (30, 45, 3)), np.ones((10, 10, 1))).astype(np.uint8)
    img = np.clip(img.astype(int) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    for box in ([150.3, 80.7, 260.2, 230.9], [-40.0, 200.5, 90.25, 320.0]):  # the second crosses the border
        crop, m = crop_from_box(img / 255.0, np.array(box))
        assert crop.shape == (224, 224, 3) and crop.dtype == np.float64
        np.testing.assert_array_equal(m, box_crop_matrix(np.array(box)))
        ref = _skimage_crop(img / 255.0, m)
        assert np.abs(crop - ref).max() <= 1e-9  # far inside the 1/255 the protocol needs
        # Sampling the uint8 photo directly is the same up to the /255 (no float copy of the photo).
        np.testing.assert_allclose(crop_from_box(img, np.array(box))[0] / 255.0, ref, atol=1e-12)
    # A plain loop over one pixel: the source point and its four neighbours, by hand.
    x, y = 17, 203
    sx, sy = np.linalg.solve(m[:, :2], np.array([x, y]) - m[:, 2])
    x0, y0 = int(np.floor(sx)), int(np.floor(sy))
    fx, fy = sx - x0, sy - y0

    def px(xx, yy):
        return img[yy, xx].astype(float) if 0 <= xx < img.shape[1] and 0 <= yy < img.shape[0] else np.zeros(3)

    hand = ((1 - fx) * (1 - fy) * px(x0, y0) + fx * (1 - fy) * px(x0 + 1, y0) + (1 - fx) * fy * px(x0, y0 + 1)
            + fx * fy * px(x0 + 1, y0 + 1))
    np.testing.assert_allclose(crop_from_box(img, np.array(box))[0][y, x], hand, atol=1e-9)


def test_warp_bilinear_grey_and_identity() -> None:
    img = np.arange(20.0).reshape(4, 5)
    out = warp_bilinear(img, np.array([[1.0, 0, 0], [0, 1.0, 0]]), 6)
    np.testing.assert_array_equal(out[:4, :5], img)
    assert (out[4:] == 0).all() and (out[:, 5:] == 0).all()
    half = warp_bilinear(img, np.array([[1.0, 0, -0.5], [0, 1.0, 0]]), 4)  # samples x + 0.5
    np.testing.assert_allclose(half[0, :3], [0.5, 1.5, 2.5])
