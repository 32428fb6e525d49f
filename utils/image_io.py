"""Reading and writing photos: any common format in, RGB uint8 out, with one-line errors.

``read_image`` applies the EXIF orientation, composites transparency on white, converts
greyscale / palette / CMYK / 16-bit images to 8-bit RGB and refuses files that cannot hold a face.
One pixel limit (``set_max_pixels``, the config key ``image.max_pixels``) holds for every decoder:
the size is read from the file's header and checked before anything is decoded (Pillow's own
decompression-bomb limit is switched off in favour of it). ``list_images`` finds the files with an
image extension in a folder, in a stable (sorted) order, and reports the folders it cannot list.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from collections import Counter
from pathlib import Path
from typing import Iterable, List, Optional, Tuple, Union

import cv2
import numpy as np
from loguru import logger
from PIL import Image, ImageOps, UnidentifiedImageError

from utils.errors import MICAError
from utils.io import atomic_write_bytes

PathLike = Union[str, os.PathLike]

__all__ = ["IMAGE_EXTENSIONS", "MIN_IMAGE_SIZE", "DEFAULT_MAX_PIXELS", "ImageList", "read_image", "list_images",
           "set_max_pixels", "write_image"]

# Formats OpenCV's imread documents (read when Pillow cannot identify a file).
_OPENCV_EXTENSIONS = {".bmp", ".dib", ".jpeg", ".jpg", ".jpe", ".jp2", ".png", ".webp", ".avif", ".pbm", ".pgm",
                      ".ppm", ".pxm", ".pnm", ".pam", ".pfm", ".sr", ".ras", ".tiff", ".tif", ".exr", ".hdr",
                      ".pic", ".gif", ".jxl"}
# Extensions Pillow registers that are documents, videos or data containers rather than photos.
_NOT_PHOTOS = {".pdf", ".ps", ".eps", ".mpeg", ".mpg", ".h5", ".hdf", ".bufr", ".grib", ".wmf", ".emf"}


def _image_extensions() -> Tuple[str, ...]:
    Image.init()
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return tuple(sorted((readable | _OPENCV_EXTENSIONS) - _NOT_PHOTOS))


# Extensions (lower case) that list_images picks up: what the installed Pillow can open, and OpenCV's.
IMAGE_EXTENSIONS = _image_extensions()
# Smallest accepted image side in pixels: below this no detector can find a face.
MIN_IMAGE_SIZE = 32
# Largest accepted width x height (config key image.max_pixels; 0 = no limit).
DEFAULT_MAX_PIXELS = 100_000_000
_max_pixels = DEFAULT_MAX_PIXELS
# Our limit replaces Pillow's (a warning above 89 Mpx, an error above 179 Mpx): one limit, one message.
Image.MAX_IMAGE_PIXELS = None


def set_max_pixels(limit: int) -> None:
    """Set the pixel limit of ``read_image`` for this process (``image.max_pixels``; 0 = none)."""
    global _max_pixels
    if limit < 0:
        raise ValueError(f"image.max_pixels must be >= 0 (0 = no limit), not {limit}")
    _max_pixels = int(limit)


def _check_pixels(path: Path, width: int, height: int, limit: Optional[int]) -> None:
    limit = _max_pixels if limit is None else limit
    if limit and width * height > limit:
        raise MICAError(f"image {path} is {width}x{height} pixels ({width * height / 1e6:.1f} Mpx), over the limit "
                        f"image.max_pixels = {limit}; shrink it, or raise image.max_pixels (0 = no limit) "
                        f"if you trust the file")

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


_RADIANCE_SIZE = re.compile(rb"^([-+])([XY]) +([0-9]+) +([-+])([XY]) +([0-9]+)\s*$")


def _radiance_size(head: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) of a Radiance HDR header: text lines, an empty line, then e.g. ``-Y 480 +X 640``."""
    lines = head.split(b"\n")
    for i, line in enumerate(lines[:-1]):
        if not line.strip():
            m = _RADIANCE_SIZE.match(lines[i + 1])
            if m is None or m[2] == m[5]:
                return None
            dims = {m[2]: int(m[3]), m[5]: int(m[6])}
            return dims[b"X"], dims[b"Y"]
    return None


def _netpbm_size(head: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) of a PBM/PGM/PPM (P1-P6), PFM (PF/Pf) or PAM (P7, WIDTH/HEIGHT lines) header."""
    text = re.sub(rb"#[^\n]*", b" ", head[2:])
    if head[:2] == b"P7":
        w, h = re.search(rb"\bWIDTH\s+([0-9]+)", text), re.search(rb"\bHEIGHT\s+([0-9]+)", text)
        return (int(w[1]), int(h[1])) if w and h else None
    m = re.match(rb"\s+([0-9]+)\s+([0-9]+)", text)
    return (int(m[1]), int(m[2])) if m else None


def _header_size(head: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from the header of the formats OpenCV reads that Pillow may not identify;
    None when the header is not one of them (then the size cannot be checked before decoding)."""
    if head.startswith((b"#?RADIANCE", b"#?RGBE")):
        return _radiance_size(head)
    if re.match(rb"P[1-7Ff]\s", head[:3]):
        return _netpbm_size(head)
    return None


# The most bytes an image file of W x H pixels takes: float32 RGBA (TIFF, PFM) is 16 per pixel,
# plus room for metadata (EXIF, ICC profiles, thumbnails). A larger file is not a plain image of
# that size (a 20 GB file named .jpg was read whole into memory before being refused: issue 21, D5).
MAX_BYTES_PER_PIXEL = 16
FILE_SLACK_BYTES = 64 << 20
_HEAD_BYTES = 65536


def _check_file_size(path: Path, n_bytes: int, width: int, height: int) -> None:
    limit = MAX_BYTES_PER_PIXEL * width * height + FILE_SLACK_BYTES
    if n_bytes > limit:
        raise MICAError(f"image {path} is {n_bytes / 1e6:.0f} MB, more than a {width}x{height} image can take "
                        f"({limit / 1e6:.0f} MB at most): it is not a plain image file, so it is not read; {_FIX}")


def _cv2_read(path: Path, max_pixels: Optional[int], n_bytes: int) -> np.ndarray | None:
    """Fallback decoder (OpenCV) for files Pillow cannot identify, for the formats whose size
    ``_header_size`` reads from the first 64 KiB (pixels and file size checked before the file is
    read whole); None when it cannot read the file either."""
    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
    size = _header_size(head) if head else None
    if size is None:
        return None
    _check_pixels(path, size[0], size[1], max_pixels)
    _check_file_size(path, n_bytes, size[0], size[1])
    data = np.fromfile(str(path), dtype=np.uint8)
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
    """Decode a complete 8-bit RGB/greyscale JPEG with OpenCV (what MICA's demo reads with), faster
    than Pillow's decode + array copy on camera-size photos (bench/README.md, Demo); None for anything else (CMYK,
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


def _read_error(path: Path, e: OSError) -> MICAError:
    """A one-line error for an operating-system error reading ``path`` (not a format problem)."""
    if e.errno in (errno.EACCES, errno.EPERM):
        return MICAError(f"image {path} cannot be read: permission denied; make it readable (chmod a+r) "
                         f"or copy it to a folder you own")
    return MICAError(f"image {path} cannot be read: {e.strerror or e}; check the disk or copy the file again")


def read_image(path: PathLike, min_size: int = MIN_IMAGE_SIZE, max_pixels: Optional[int] = None) -> np.ndarray:
    """Read a photo as RGB uint8.

    Args:
        path: jpg/png/bmp/webp/tiff/gif/... (anything Pillow opens; what only OpenCV reads when its
            header gives the size: Radiance HDR, PAM, PNM, PFM).
        min_size: smallest accepted width and height in pixels.
        max_pixels: largest accepted width x height, checked from the header before decoding
            (None = the process setting, ``set_max_pixels``; 0 = no limit).

    Returns:
        (H, W, 3) uint8 RGB, EXIF orientation applied, alpha composited on white,
        greyscale and 16-bit images converted to 8-bit RGB.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        MICAError: a folder; an unreadable (permissions), empty, corrupt, unsupported or too large
            file; an image smaller than ``min_size`` pixels on a side.
    """
    path = Path(path).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist (check the path)") from None
    except OSError as e:
        raise _read_error(path, e) from None
    if stat.S_ISDIR(st.st_mode):
        raise MICAError(f"image {path} is a folder, not an image file (pass a file, or use the folder as input)")
    if st.st_size == 0:
        raise MICAError(f"image {path} is an empty file (0 bytes); {_FIX}")
    rgb: np.ndarray | None = None
    try:
        with Image.open(path) as img:
            _check_pixels(path, img.size[0], img.size[1], max_pixels)
            _check_file_size(path, st.st_size, img.size[0], img.size[1])
            rgb = _read_jpeg_fast(path, img)
            if rgb is None:
                img.load()
                if _orientation(img) != 1:  # exif_transpose copies the image even when nothing changes
                    img = ImageOps.exif_transpose(img)
                rgb = _pil_to_rgb(img)
    except UnidentifiedImageError:
        try:
            rgb = _cv2_read(path, max_pixels, st.st_size)
        except OSError as e:
            raise _read_error(path, e) from None
        if rgb is None:
            raise MICAError(f"image {path}: unsupported or unrecognised image format (neither Pillow nor OpenCV "
                            f"reads it); {_FIX}") from None
    except OSError as e:
        if e.errno is not None:  # the operating system's error, not the decoder's
            raise _read_error(path, e) from None
        raise MICAError(f"image {path} is corrupt or truncated ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'}); {_FIX}") from None
    except Image.DecompressionBombError as e:  # only if Image.MAX_IMAGE_PIXELS was set again elsewhere
        raise MICAError(f"image {path} has more pixels than Pillow's limit ({str(e).splitlines()[0]}); shrink it "
                        f"or reset PIL.Image.MAX_IMAGE_PIXELS") from None
    except (ValueError, SyntaxError, EOFError) as e:
        raise MICAError(f"image {path} is corrupt or truncated ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'}); {_FIX}") from None
    h, w = rgb.shape[:2]
    if min(h, w) < min_size:
        raise MICAError(f"image {path} is {w}x{h} pixels, too small to hold a face "
                        f"(needs at least {min_size} px per side); use a larger photo")
    return rgb


class ImageList(list):
    """What ``list_images`` returns: the image paths (a plain sorted ``list`` of ``Path``) plus

    Attributes:
        failures: ``(folder, message)`` for each sub-folder that could not be listed; a caller that
            reports per input gives each a ``failed`` row with that one-line message.
        ignored: the number of other files passed over (no image extension, or hidden).
    """

    def __init__(self, paths: Iterable[Path] = (), failures: Iterable[Tuple[Path, str]] = (), ignored: int = 0):
        super().__init__(paths)
        self.failures: List[Tuple[Path, str]] = list(failures)
        self.ignored = ignored


def _folder_key(path: PathLike) -> Tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _follow_links(links: List[Path], skip: set, seen: set, walk, unlistable) -> None:
    """``list_images``' symbolic links to folders, followed after the real folders in name order (so
    the same tree always lists the same paths), each real folder once: a link back into its own
    ancestors (a cycle) or to a folder listed already is not followed (one log line). ``walk`` may
    add links to ``links`` while this runs."""
    while links:
        links.sort(key=lambda p: p.as_posix(), reverse=True)
        link = links.pop()
        try:
            key = _folder_key(link)
        except OSError as e:  # a dangling link or one without permission
            unlistable(link, e)
            continue
        if key in skip:
            continue
        if key in seen:
            target = Path(os.path.realpath(link))
            if Path(os.path.realpath(link.parent)).is_relative_to(target):
                logger.warning(f"{link} links back to a folder that contains it (a cycle); not followed")
            else:
                logger.info(f"{link} links to a folder that is listed already; not listed twice")
            continue
        seen.add(key)
        walk(link)


def list_images(folder: PathLike, recursive: bool = True, exclude: Iterable[PathLike] = ()) -> ImageList:
    """Files with an image extension (``IMAGE_EXTENSIONS``, any case) under ``folder``, sorted by path.

    Every such file is listed, also one that turns out unreadable (``read_image`` then says why,
    e.g. an unsupported format), so that each gets a row in a summary. Hidden files and folders
    (names starting with '.', e.g. ``.mica/``) and the folders in ``exclude`` are passed over.
    Symbolic links to folders are followed after the real folders, each real folder once: a link
    back into its own ancestors (a cycle) or to a folder already listed is not followed (one log
    line), so every file is listed under one path.
    Sub-folders that cannot be listed are returned in ``failures``; files without an image
    extension are counted in ``ignored`` and in one log line.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        MICAError: ``folder`` is a file, or cannot be listed.
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"image folder {folder} does not exist (check the path)")
    if not folder.is_dir():
        raise MICAError(f"{folder} is a file, not a folder of images (pass its parent folder)")
    skip = set()
    for p in exclude:
        try:
            skip.add(_folder_key(p))
        except OSError:
            continue
    found: List[Path] = []
    failures: List[Tuple[Path, str]] = []
    other: Counter = Counter()
    seen = {_folder_key(folder)}
    links: List[Path] = []  # symbolic links to folders, followed after the real folders

    def unlistable(path: Path, e: OSError) -> None:
        if path == folder:
            raise MICAError(f"image folder {folder} cannot be listed: {e.strerror or e}; fix its permissions "
                            f"or pass another folder") from None
        failures.append((path, f"folder {path} cannot be listed: {e.strerror or e}; fix its permissions "
                               f"or move it out of the input folder"))

    def walk(start: Path) -> None:
        stack = [start]
        while stack:
            current = stack.pop()
            try:
                with os.scandir(current) as it:
                    entries = list(it)
            except OSError as e:
                unlistable(current, e)
                continue
            for entry in entries:
                path = Path(entry.path)
                try:
                    is_dir = entry.is_dir()
                    is_link = entry.is_symlink()
                except OSError:
                    is_dir = is_link = False
                if entry.name.startswith("."):
                    other["hidden"] += not is_dir
                elif not is_dir:
                    ext = path.suffix.lower()
                    if ext in IMAGE_EXTENSIONS:
                        found.append(path)
                    else:
                        other[ext or "no extension"] += 1
                elif recursive and is_link:
                    links.append(path)
                elif recursive:
                    try:
                        key = _folder_key(path)
                    except OSError as e:
                        unlistable(path, e)
                        continue
                    if key not in skip and key not in seen:
                        seen.add(key)
                        stack.append(path)

    walk(folder)
    _follow_links(links, skip, seen, walk, unlistable)
    ignored = sum(other.values())
    if ignored:
        kinds = ", ".join(f"{k} {n}" for k, n in other.most_common(5))
        logger.info(f"{folder}: ignored {ignored} file(s) that are not images or are hidden ({kinds})")
    return ImageList(sorted(found, key=lambda p: p.as_posix()), failures, ignored)


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
