"""Face photos for tests without ../shared: scikit-image's public-domain portrait
(``skimage.data.astronaut()``, shipped in its wheel; nothing is downloaded)."""
from __future__ import annotations

import cv2
import numpy as np


def astronaut() -> np.ndarray:
    """The portrait, (512, 512, 3) uint8 RGB, one face."""
    import skimage.data

    return skimage.data.astronaut()


def portrait_photos() -> dict[str, np.ndarray]:
    """File name -> RGB photo with one face each: the square original, a non-square crop, an
    enlarged copy and a mirrored copy."""
    a = astronaut()
    return {
        "astronaut.jpg": a,
        "crop.png": np.ascontiguousarray(a[41:400, 60:]),
        "large.jpg": cv2.resize(a, (820, 820), interpolation=cv2.INTER_CUBIC),
        "mirror.png": np.ascontiguousarray(a[:, ::-1]),
    }


def two_faces() -> np.ndarray:
    """The portrait beside its mirror image: one photo with two faces."""
    a = astronaut()
    return np.concatenate([a, np.ascontiguousarray(a[:, ::-1])], axis=1)
