"""utils/image_io.py: formats, EXIF orientation, alpha, greyscale/16-bit, and one-line errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.errors import MICAError
from utils.image_io import list_images, read_image, write_image


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    """A deterministic RGB test pattern whose orientation is recognisable."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 40)], -1).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tiff", ".webp"])
def test_lossless_formats_roundtrip(tmp_path: Path, suffix: str) -> None:
    img = _gradient()
    path = tmp_path / f"a{suffix}"
    kwargs = {"lossless": True} if suffix == ".webp" else {}
    Image.fromarray(img).save(path, **kwargs)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out, img)


def test_jpeg_close_to_source(tmp_path: Path) -> None:
    img = _gradient()
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=98)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == img.shape
    assert np.abs(out.astype(int) - img).mean() < 3


def test_exif_rotation_applied(tmp_path: Path) -> None:
    img = _gradient(40, 80)  # landscape on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(img).save(tmp_path / "r.jpg", quality=98, exif=exif)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (80, 40, 3)  # displayed upright: portrait
    # Orientation 6 = displayed image is the stored one rotated 90 deg clockwise
    expected = np.rot90(img, k=-1)
    assert np.abs(out.astype(int) - expected).mean() < 3


def test_png_alpha_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 200  # red channel
    rgba[:, :20, 3] = 255  # left half opaque
    rgba[:, 20:, 3] = 0  # right half transparent
    rgba[0, 30, 3] = 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    out = read_image(tmp_path / "alpha.png")
    assert out.shape == (40, 40, 3)
    np.testing.assert_array_equal(out[5, 5], [200, 0, 0])
    np.testing.assert_array_equal(out[5, 35], [255, 255, 255])
    # half-transparent: 200*a + 255*(1-a), a = 128/255 -> 227.4 and 0*a + 255*(1-a) -> 127.0
    np.testing.assert_allclose(out[0, 30], [227, 127, 127], atol=1)


def test_greyscale_and_16bit(tmp_path: Path) -> None:
    grey = _gradient()[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (48, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)
    g16 = (grey.astype(np.uint16) * 257)  # 8-bit value v -> 16-bit v*257
    Image.fromarray(g16).save(tmp_path / "g16.png")
    out16 = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(out16[..., 1], grey)


def test_palette_image(tmp_path: Path) -> None:
    img = Image.fromarray(_gradient()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    img.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(out, np.asarray(img.convert("RGB")))


def test_bad_files_raise_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image\n")
    Image.fromarray(_gradient(200, 200)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    Image.fromarray(_gradient(20, 100)).save(tmp_path / "tiny.png")
    (tmp_path / "folder.jpg").mkdir()
    for name in ["empty.jpg", "text.jpg", "truncated.jpg", "tiny.png", "folder.jpg"]:
        with pytest.raises(MICAError) as e:
            read_image(tmp_path / name)
        msg = str(e.value)
        assert name in msg and "\n" not in msg, msg
    assert "20" in str(pytest.raises(MICAError, read_image, tmp_path / "tiny.png").value)
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")


def test_list_images_sorted_recursive(tmp_path: Path) -> None:
    for rel in ["b.JPG", "a.png", "sub/c.webp", "sub/deeper/d.tiff", "notes.txt", ".hidden.jpg", "x.gif",
                ".mica/done/e.jpg"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    # every image extension is listed (also .gif, which Pillow reads), hidden files and folders are not
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["a.png", "b.JPG", "sub/c.webp", "sub/deeper/d.tiff", "x.gif"]
    flat = [p.name for p in list_images(tmp_path, recursive=False)]
    assert flat == ["a.png", "b.JPG", "x.gif"]
    assert [p.name for p in list_images(tmp_path, exclude=[tmp_path / "sub" / "deeper"])] == [
        "a.png", "b.JPG", "c.webp", "x.gif"]
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nope")


def test_write_image_roundtrip(tmp_path: Path) -> None:
    img = _gradient()
    write_image(tmp_path / "out" / "w.png", img)
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "w.png"), img)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["w.png"]  # no temp files left
    with pytest.raises(ValueError):
        write_image(tmp_path / "bad.png", img.astype(np.float32))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_fast_path_orientations_match_pillow(tmp_path: Path, orientation: int) -> None:
    """The OpenCV JPEG path applies each of the 8 EXIF orientations as Pillow's exif_transpose does
    (the oracle), and decodes the same pixels as OpenCV's own reader (what MICA's demo uses)."""
    import cv2
    from PIL import ImageOps

    img = _gradient(48, 80)
    img[5:15, 10:30] = (255, 0, 0)  # an asymmetric mark, so a wrong flip cannot pass
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    Image.fromarray(img).save(path, quality=95, exif=exif)
    with Image.open(path) as im:
        im.load()
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    out = read_image(path)
    assert out.shape == expected.shape and out.flags.c_contiguous
    assert np.abs(out.astype(int) - expected).mean() < 1.0  # same pixels up to decoder rounding
    if orientation == 1:
        np.testing.assert_array_equal(out, cv2.imread(str(path))[..., ::-1])


def test_jpeg_with_trailing_data_and_greyscale(tmp_path: Path) -> None:
    img = _gradient()
    path = tmp_path / "trail.jpg"
    Image.fromarray(img).save(path, quality=98)
    path.write_bytes(path.read_bytes() + b"camera maker trailer")  # data after the end marker
    assert np.abs(read_image(path).astype(int) - img).mean() < 3
    grey = Image.fromarray(img).convert("L")
    grey.save(tmp_path / "g.jpg", quality=98)
    out = read_image(tmp_path / "g.jpg")
    assert out.shape == img.shape and (out[..., 0] == out[..., 1]).all()
    assert np.abs(out[..., 0].astype(int) - np.asarray(grey)).mean() < 3


def _sparse(path: Path, head: bytes, size: int) -> Path:
    """A file of ``size`` bytes that starts with ``head``, the rest a hole (no disk space used)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


@pytest.mark.parametrize("head", ["zeros", "jpeg", "pgm"])
def test_a_huge_file_named_like_an_image_is_not_read_whole(tmp_path: Path, monkeypatch, head: str) -> None:
    """Issue 21, D5: a 20 GB file named .jpg was read whole into memory (21.9 GB peak) before being
    refused. Files of 8 GB (sparse): nothing reads more than the header; one line naming the file."""
    import utils.image_io as image_io

    real_fromfile, read = np.fromfile, []

    def spy(file, *args, **kwargs):
        read.append(Path(file).stat().st_size)
        assert Path(file).stat().st_size < 1 << 30, "a huge file is being read whole"
        return real_fromfile(file, *args, **kwargs)

    monkeypatch.setattr(image_io.np, "fromfile", spy)
    small = tmp_path / "small.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(small, quality=90)
    data = {"zeros": b"", "jpeg": small.read_bytes(), "pgm": b"P5\n64 64\n255\n"}[head]
    big = _sparse(tmp_path / f"big_{head}.jpg", data, 8 << 30)
    with pytest.raises(MICAError) as e:
        read_image(big)
    msg = str(e.value)
    assert "\n" not in msg and str(big) in msg
    assert ("unsupported" in msg) if head == "zeros" else ("more than a 64x64 image can take" in msg)
    assert read_image(small).shape == (64, 64, 3) and read  # a plain photo still reads (through the spy)
