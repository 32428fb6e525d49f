"""The tracker's per-frame PNGs: ``utils/png.py`` against OpenCV's PNG encoder, measured in one run.

For a 512x512 face crop (from a video when one is given, else a synthetic picture) and a 512x512
16-bit depth image, prints CPU milliseconds per encode (one thread, process time) and the size of
the file for: OpenCV's fastest settings (the 'up' filter with Huffman-only zlib for the crop, the
'up' filter with run-length zlib for the depth: what the tracker used before), and ``encode_png`` at
levels 0-3 with ISA-L and with zlib only. The ratio column is OpenCV's time over this one's.

Usage::

    python bench/png.py [--video ../shared/data/tracker/justin.mp4] [--repeat 60]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_description  # noqa: E402


def _crop(video: Path) -> tuple[np.ndarray, str]:
    if video.exists():
        cap = cv2.VideoCapture(str(video))
        frame = None
        for _ in range(30):
            ok, f = cap.read()
            frame = f if ok else frame
        cap.release()
        if frame is not None:
            h, w = frame.shape[:2]
            s = min(h, w) * 5 // 6
            y, x = (h - s) // 2, (w - s) // 2
            return cv2.resize(frame[y:y + s, x:x + s], (512, 512), interpolation=cv2.INTER_AREA)[..., ::-1].copy(), video.name
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512]
    img = (np.sin(xx / 20)[..., None] + np.cos(yy / 30)[..., None] + 2) * 60 + rng.normal(0, 4, (512, 512, 3))
    return np.clip(img, 0, 255).astype(np.uint8), "synthetic picture"


def _depth() -> np.ndarray:
    yy, xx = np.mgrid[0:512, 0:512]
    r = ((xx - 256) / 150.0) ** 2 + ((yy - 260) / 200.0) ** 2
    return np.where(r < 1, 600 + 150 * r + 3 * np.sin(xx / 7.0), 0).astype(np.uint16)


def _time(fn, repeat: int) -> tuple[float, int]:
    data = fn()
    t0 = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t0) / repeat * 1e3, len(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=str(ROOT.parent / "shared" / "data" / "tracker" / "justin.mp4"))
    ap.add_argument("--repeat", type=int, default=60)
    args = ap.parse_args()
    import utils.png as png

    cv2.setNumThreads(1)
    crop, what = _crop(Path(args.video))
    depth = _depth()
    opencv = {
        "crop": lambda: cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [
            cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
            cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY])[1],
        "depth": lambda: cv2.imencode(".png", depth, [
            cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
            cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])[1]}
    print(f"machine: {cpu_description()}; crop from {what}; one thread, CPU ms per encode ({args.repeat} repeats)")
    isal = png.isal_zlib
    for name, img in (("crop 512x512 RGB", crop), ("depth 512x512 uint16", depth)):
        key = name.split()[0]
        ref_ms, ref_size = _time(opencv[key], args.repeat)
        print(f"{name}: OpenCV (before) {ref_ms:6.2f} ms {ref_size / 1024:7.1f} kB")
        for deflater in ("ISA-L", "zlib"):
            png.isal_zlib = isal if deflater == "ISA-L" else None
            if deflater == "ISA-L" and isal is None:
                print("  ISA-L: not installed")
                continue
            for level in (0, 1, 2, 3):
                ms, size = _time(lambda level=level, img=img: png.encode_png(img, level), args.repeat)
                print(f"  encode_png {deflater:5s} level {level}: {ms:6.2f} ms {size / 1024:7.1f} kB  "
                      f"OpenCV / this {ref_ms / ms:5.2f}x")
        png.isal_zlib = isal


if __name__ == "__main__":
    main()
