"""Face photos for tests without ../shared: scikit-image's public-domain portrait
(``skimage.data.astronaut()``, shipped in its wheel; nothing is downloaded)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


def portrait_variants() -> list[np.ndarray]:
    """The test photos (tests/photos.py) in sizes and aspect ratios that give every photo its own
    pyramid (square, cropped, enlarged, mirrored), plus a small copy and a blank photo with no face."""
    small = cv2.resize(astronaut(), (203, 240), interpolation=cv2.INTER_AREA)
    return [*portrait_photos().values(), small, np.full((61, 90, 3), 128, np.uint8)]


def write_noise_photos(folder: Path, names: Sequence[str], seed: int = 0, shapes: Sequence[tuple[int, int]] = ((160, 160),),
                       broken: str | None = "broken.jpg") -> Path:
    """The one maker of the stand-in photo folders of the pipeline tests (their detector is a stand-in
    too, so the pixels are noise): ``names`` (paths under ``folder``, sub-folders created; the
    format follows the suffix) of shape ``shapes[i % len(shapes)]`` from ``default_rng(seed)``, plus
    ``broken`` (a file that is not an image) unless None."""
    rng = np.random.default_rng(seed)
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        h, w = shapes[i % len(shapes)]
        if not cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8)):
            raise OSError(f"could not write {path}")
    if broken is not None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / broken).write_bytes(b"not an image")
    return folder
