"""utils/png.py against two independent PNG readers (libpng through OpenCV, and Pillow's own decoder):
every shape, sample depth and level decodes to exactly the pixels written, with ISA-L and without."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

import utils.png as png
from utils.png import encode_png


def _image(shape, dtype, seed=0):
    """A smooth picture with noise (rows that differ, runs, the full value range at the corners)."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    top = np.iinfo(dtype).max
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 9.0) + np.cos(yy / 13.0) + 2) / 4 * top
    img = base[..., None] if len(shape) == 3 else base
    img = img + rng.normal(0, top / 50, shape)
    out = np.clip(img, 0, top).astype(dtype)
    out.flat[0], out.flat[-1] = 0, top
    return out


def _opencv(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img is not None, "libpng refused the file"
    if img.ndim == 3:  # OpenCV returns BGR(A)
        img = img[..., [2, 1, 0, 3][: img.shape[2]]]
    return img


def _pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im)


CASES = [((512, 512, 3), np.uint8), ((37, 53, 3), np.uint8), ((1, 1, 3), np.uint8), ((64, 48), np.uint8),
         ((31, 17, 4), np.uint8), ((20, 30, 2), np.uint8), ((512, 512), np.uint16), ((9, 70), np.uint16)]


@pytest.mark.parametrize("shape,dtype", CASES)
@pytest.mark.parametrize("level", [0, 1, 3, 6])
def test_readers_decode_the_pixels_written(shape, dtype, level):
    img = _image(shape, dtype)
    data = encode_png(img, level)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = _opencv(data)
    if len(shape) == 3 and shape[2] == 2:  # OpenCV drops a grey image's alpha: compare the grey
        np.testing.assert_array_equal(back if back.ndim == 2 else back[..., 0], img[..., 0])
    else:
        assert back.dtype == img.dtype
        np.testing.assert_array_equal(back, img)
    if dtype == np.uint8:  # Pillow reads 16-bit grey as 32-bit ints: compare values
        np.testing.assert_array_equal(_pillow(data), img)
    else:
        np.testing.assert_array_equal(_pillow(data).astype(np.int64), img.astype(np.int64))


@pytest.mark.parametrize("level", [1, 2, 3])
def test_zlib_fallback_writes_the_same_pixels(monkeypatch, level):
    img = _image((96, 80, 3), np.uint8, seed=1)
    with_isal = encode_png(img, level)
    monkeypatch.setattr(png, "isal_zlib", None)
    without = encode_png(img, level)
    np.testing.assert_array_equal(_opencv(without), img)
    np.testing.assert_array_equal(_opencv(with_isal), _opencv(without))


def test_a_damaged_file_is_refused_by_the_reader():
    """The chunk CRCs are real: libpng refuses the file when one byte of the image data flips."""
    data = bytearray(encode_png(_image((64, 64, 3), np.uint8), 1))
    data[60] ^= 0xFF  # inside IDAT (after the 8-byte signature and the 25-byte IHDR chunk)
    assert cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_UNCHANGED) is None


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 5), np.uint8),
                                 np.zeros((0, 4), np.uint8), np.zeros((2, 2, 2, 2), np.uint8)])
def test_unsupported_images_are_refused(bad):
    with pytest.raises(ValueError, match="encode_png"):
        encode_png(bad)
