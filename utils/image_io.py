"""Reading and writing photos: any common format in, RGB uint8 out, with one-line errors.

``read_image`` applies the EXIF orientation, composites transparency on white, converts
greyscale / palette / CMYK / 16-bit images to 8-bit RGB and refuses files that cannot hold a face.
``list_images`` finds the photos of a folder in a stable (sorted) order.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from utils.errors import MICAError
from utils.io import atomic_write_bytes

PathLike = Union[str, os.PathLike]

__all__ = ["IMAGE_EXTENSIONS", "MIN_IMAGE_SIZE", "read_image", "list_images", "write_image"]

# Extensions (lower case) that list_images picks up.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Smallest accepted image side in pixels: below this no detector can find a face.
MIN_IMAGE_SIZE = 32

_FIX = "re-save it as JPEG or PNG, or remove it from the input folder"


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a 16-bit/32-bit integer or float array to uint8 (full range kept)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        a = np.nan_to_num(arr.astype(np.float64))
        hi = 1.0 if a.max(initial=0.0) <= 1.0 else (255.0 if a.max() <= 255.0 else float(a.max()))
        return np.clip(np.rint(a / hi * 255.0), 0, 255).astype(np.uint8)
    # integers: 16-bit data (uint16 or Pillow's int32 "I" mode) -> divide by 257 (65535 -> 255)
    a = arr.astype(np.int64)
    hi = 255 if a.max(initial=0) <= 255 else 65535
    return np.clip(np.rint(a * (255.0 / hi)), 0, 255).astype(np.uint8)


def _composite_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend ``rgb`` (H,W,3) uint8 over white with ``alpha`` (H,W) uint8."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Convert any Pillow image (orientation already applied) to RGB uint8 (H,W,3)."""
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(img.convert("RGBA"))
        return _composite_white(rgba[..., :3], rgba[..., 3])
    if mode == "RGB":
        return np.ascontiguousarray(np.asarray(img))
    if mode in ("1", "L") or mode.startswith("I") or mode == "F":
        grey = _to_uint8(np.asarray(img))
        if grey.ndim == 3:  # e.g. "I;16" read as (H,W,1)
            grey = grey[..., 0]
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    # CMYK, YCbCr, LAB, HSV, RGBX, ...
    return np.ascontiguousarray(np.asarray(img.convert("RGB")))


def _cv2_read(path: Path) -> np.ndarray | None:
    """Fallback decoder (OpenCV) for files Pillow cannot identify; None when it fails too."""
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        return None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    img = _to_uint8(img)
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:
        return _composite_white(img[..., 2::-1], img[..., 3])
    return np.ascontiguousarray(img[..., 2::-1])


# EXIF orientation (tag 0x0112) -> how the stored pixels become the displayed image, as numpy views
# (the same transforms as Pillow's ImageOps.exif_transpose; tests/test_image_io.py checks all 8).
_EXIF_ORIENTATION_TAG = 0x0112
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _orientation(img: Image.Image) -> int:
    try:
        value = int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # malformed EXIF block: show the pixels as stored, as most viewers do
        return 1
    return value if value in _ORIENT else 1


def _read_jpeg_fast(path: Path, img: Image.Image) -> np.ndarray | None:
    """Decode a complete 8-bit RGB/greyscale JPEG with OpenCV (what MICA's demo reads with), about 2x
    faster than Pillow's decode + array copy on camera-size photos; None for anything else (CMYK,
    data after the end marker, truncated files) so that the Pillow path handles or reports it."""
    if img.format != "JPEG" or img.mode not in ("RGB", "L"):
        return None
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size < 4 or data[-2] != 0xFF or data[-1] != 0xD9:  # no end-of-image marker: truncated?
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or bgr.shape[:2] != (img.size[1], img.size[0]):
        return None
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    orientation = _orientation(img)
    return rgb if orientation == 1 else np.ascontiguousarray(_ORIENT[orientation](rgb))


def read_image(path: PathLike, min_size: int = MIN_IMAGE_SIZE) -> np.ndarray:
    """Read a photo as RGB uint8.

    Args:
        path: jpg/png/bmp/webp/tiff (anything Pillow or OpenCV decodes).
        min_size: smallest accepted width and height in pixels.

    Returns:
        (H, W, 3) uint8 RGB, EXIF orientation applied, alpha composited on white,
        greyscale and 16-bit images converted to 8-bit RGB.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MICAError: a folder, an empty / corrupt / non-image file, or an image smaller than
            ``min_size`` pixels on a side.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image {path} does not exist (check the path)")
    if path.is_dir():
        raise MICAError(f"image {path} is a folder, not an image file (pass a file, or use the folder as input)")
    if path.stat().st_size == 0:
        raise MICAError(f"image {path} is an empty file (0 bytes); {_FIX}")
    rgb: np.ndarray | None = None
    try:
        with Image.open(path) as img:
            rgb = _read_jpeg_fast(path, img)
            if rgb is None:
                img.load()
                if _orientation(img) != 1:  # exif_transpose copies the image even when nothing changes
                    img = ImageOps.exif_transpose(img)
                rgb = _pil_to_rgb(img)
    except UnidentifiedImageError:
        rgb = _cv2_read(path)
        if rgb is None:
            raise MICAError(f"image {path} is not an image file Pillow or OpenCV can read; {_FIX}") from None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise MICAError(f"image {path} is corrupt or truncated ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'}); {_FIX}") from None
    h, w = rgb.shape[:2]
    if min(h, w) < min_size:
        raise MICAError(f"image {path} is {w}x{h} pixels, too small to hold a face "
                        f"(needs at least {min_size} px per side); use a larger photo")
    return rgb


def list_images(folder: PathLike, recursive: bool = True) -> list[Path]:
    """Image files (``IMAGE_EXTENSIONS``, any case) under ``folder``, sorted by path.

    Hidden files (names starting with '.') are skipped.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        MICAError: ``folder`` is a file.
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"image folder {folder} does not exist (check the path)")
    if not folder.is_dir():
        raise MICAError(f"{folder} is a file, not a folder of images (pass its parent folder)")
    pattern = "**/*" if recursive else "*"
    found = [p for p in folder.glob(pattern)
             if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()]
    return sorted(found, key=lambda p: p.as_posix())


def write_image(path: PathLike, image_rgb: np.ndarray, quality: int = 95, fsync: bool = True) -> None:
    """Write an RGB uint8 (H,W,3) image atomically; the format follows the suffix (.jpg, .png, ...).
    ``fsync``: see ``utils.io``."""
    path = Path(path)
    img = np.asarray(image_rgb)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"write_image({path}): expected uint8 (H,W,3) RGB, got {img.dtype} {img.shape}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix.lower() or ".png", np.ascontiguousarray(img[..., ::-1]), params)
    if not ok:
        raise MICAError(f"cannot encode image {path} (unsupported suffix '{path.suffix}'; use .jpg or .png)")
    atomic_write_bytes(path, buf, fsync=fsync)
