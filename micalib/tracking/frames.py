"""The frames of a tracked sequence: a video file or a folder of images, streamed one at a time.

``open_frames(path, fps, begin)`` returns a ``FrameSource``. Iterating it yields ``(out_index,
input_index, rgb)``: the 0-based output frame number, the 0-based number of the input frame it
shows (in decoding order, the order of ``--landmarks`` rows) and the frame as RGB uint8 (H,W,3).
``begin`` (track.py ``--begin-frame``, the original tracker's ``begin_frames``) drops the first
``begin`` output frames of the input (after the resampling to ``fps``): output frame 0 is then the
input's output frame ``begin``. ``FrameSource.indices`` is the one map from output frame numbers to
input frames; everything downstream numbers its files by it.

Videos are decoded by OpenCV's ``VideoCapture`` (opencv-python-headless ships FFmpeg inside the
wheel; no system ``ffmpeg`` is called), without holding more than one frame. With ``fps`` the video
is resampled: output frame k shows the input frame nearest to the time k / fps, ties going to the
earlier frame, i.e. input index ``ceil(k * input_fps / fps - 1/2)``; output frames continue while
that input frame exists. The original tracker splits the video into frames with ffmpeg at 25 fps,
whose rounding of the time stamps can differ from this rule by one frame at exact ties. Frames that
the resampling drops are only ``grab()``bed (demuxed and decoded, not converted to RGB). A video
that ends before the frame count its container states (truncated) yields the frames it has, logs a
warning and sets ``truncated_at``; nothing is raised, so a long run keeps what it tracked.

A folder is read in sorted-name order (plain string order of the file names: name frames with
zero-padded numbers); ``fps`` does not apply to it. All its images must have the size of the first.
"""
from __future__ import annotations

import math
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from loguru import logger

from utils.errors import MICAError
from utils.image_io import list_images, read_image
from utils.io import opencv_path

PathLike = str | os.PathLike

__all__ = ["FrameSource", "VideoFrames", "FolderFrames", "open_frames", "resample_indices", "prefetch"]

T = TypeVar("T")

# Rational approximation of a frame rate read as a float (29.97002997... -> 30000/1001), so that
# ties of the resampling rule are decided exactly.
_FPS_DENOMINATOR = 100_000


def _rational(fps: float) -> Fraction:
    return Fraction(float(fps)).limit_denominator(_FPS_DENOMINATOR)


def resample_indices(n_input: int, input_fps: float, fps: float | None) -> list[int]:
    """Input frame index of every output frame: output frame k shows the input frame nearest to the
    time k / ``fps`` (input frame i is at time i / ``input_fps``), ties to the earlier one; the
    list ends before the first k whose nearest input frame is past the last (index ``n_input - 1``).
    ``fps`` None: every input frame."""
    if fps is None:
        return list(range(n_input))
    if not fps > 0 or not input_fps > 0:
        raise ValueError(f"resample_indices: frame rates must be positive (fps={fps}, input_fps={input_fps})")
    ratio = _rational(input_fps) / _rational(fps)  # input frames per output frame
    out: list[int] = []
    k = 0
    while True:
        # nearest integer to x = k * ratio, ties to the earlier: ceil(x - 1/2)
        i = math.ceil(k * ratio - Fraction(1, 2))
        if i > n_input - 1:
            return out
        out.append(i)
        k += 1


class FrameSource:
    """Common interface of ``VideoFrames`` and ``FolderFrames``.

    Attributes:
        path: the video file or the folder.
        name: the video's stem or the folder's name (the sequence name NAME of the outputs).
        input_fps: frame rate of the input (None for a folder).
        fps: the output frame rate asked for (None: every input frame).
        n_input_frames: number of input frames (rows of a ``--landmarks`` file).
        size: (width, height) of the input frames in pixels.
        indices: input frame index of every output frame.
        begin: output frames of the input dropped before output frame 0 (``skip_first``).
        truncated_at: the output frame where a cut-short video stopped decoding, else None.
    """

    path: Path
    name: str
    input_fps: float | None
    fps: float | None
    n_input_frames: int
    size: tuple[int, int]
    indices: list[int]
    begin: int = 0
    truncated_at: int | None = None

    def skip_first(self, n: int) -> None:
        """Drop the first ``n`` output frames: output frame 0 becomes the input's output frame ``n``.

        Raises:
            MICAError: ``n`` negative, or not below the number of output frames.
        """
        n = int(n)
        if n < 0:
            raise MICAError(f"--begin-frame {n}: give the number of output frames to skip (0 or more)")
        if n >= len(self.indices):
            raise MICAError(f"--begin-frame {n} skips every output frame of {self.path}: it has {len(self.indices)} "
                            f"(at {'every frame' if self.fps is None else f'{self.fps:g} frames/s'}); give a smaller number")
        self.indices = self.indices[n:]
        self.begin = n

    def keep_decoded(self) -> bool:
        """Drop the output frames past where a cut-short video stopped decoding (``truncated_at``);
        returns whether any were dropped."""
        if self.truncated_at is None or self.truncated_at >= len(self.indices):
            return False
        self.indices = self.indices[:self.truncated_at]
        return True

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, {len(self)} output frames of "
                f"{self.n_input_frames}, {self.size[0]}x{self.size[1]}, input fps {self.input_fps}, fps {self.fps})")


def _bgr_to_rgb(bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim == 2:
        return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    if bgr.shape[2] == 4:
        return cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class VideoFrames(FrameSource):
    """A video file decoded with OpenCV (see the module docstring)."""

    def __init__(self, path: PathLike, fps: float | None = None):
        self.path = Path(path).expanduser()
        self.name = self.path.stem
        self.fps = float(fps) if fps is not None else None
        fix = "check that it is a complete video (e.g. play it), or extract its frames into a folder and pass that"
        cap = self._open()
        try:
            input_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            ok, first = cap.read()
        finally:
            cap.release()
        if not ok or first is None:
            raise MICAError(f"video {self.path} has no frame OpenCV can decode; {fix}")
        if not math.isfinite(input_fps) or input_fps <= 0:
            if self.fps is not None:
                raise MICAError(f"video {self.path} does not state its frame rate, so it cannot be resampled "
                                "to --fps; leave --fps out (every frame is used) or extract its frames into a folder")
            input_fps = 0.0
        if count <= 0:  # a stream without a frame count: count by demuxing once
            count = self._count_frames()
        self.input_fps = input_fps or None
        self.n_input_frames = count
        self.size = (int(first.shape[1]), int(first.shape[0]))
        self.indices = resample_indices(count, input_fps, self.fps) if self.fps is not None else list(range(count))
        self.truncated_at: int | None = None  # output frame where decoding stopped early, if it did

    def _open(self) -> cv2.VideoCapture:
        if not self.path.exists():
            raise MICAError(f"video {self.path} does not exist (check the path)")
        if self.path.is_dir():
            raise MICAError(f"{self.path} is a folder; internal error: opened as a video")
        if self.path.stat().st_size == 0:
            raise MICAError(f"video {self.path} is an empty file (0 bytes); pass a complete video")
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our own message says it
        try:
            with opencv_path(self.path) as name:  # a name of non-UTF-8 bytes crashes OpenCV
                cap = cv2.VideoCapture(name, cv2.CAP_FFMPEG)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not cap.isOpened():
            cap.release()
            raise MICAError(f"video {self.path} cannot be opened by OpenCV's FFmpeg (not a video, corrupt, or an "
                            "unsupported codec); convert it to H.264 MP4 or extract its frames into a folder")
        return cap

    def _count_frames(self) -> int:
        cap = self._open()
        n = 0
        try:
            while cap.grab():
                n += 1
        finally:
            cap.release()
        return n

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        cap = self._open()
        try:
            position = -1  # index of the last grabbed input frame
            for k, i in enumerate(self.indices):
                ok = True
                while ok and position < i:
                    ok = cap.grab()
                    position += ok
                if ok:
                    ok, bgr = cap.retrieve()
                    ok = ok and bgr is not None
                if not ok and k == 0 and self.begin:  # nothing left to track: the header's count misled skip_first
                    raise MICAError(f"--begin-frame {self.begin}: video {self.path} ends after {position + 1} of the "
                                    f"{self.n_input_frames} frames its header states, before that output frame "
                                    "(truncated or corrupt); give a smaller number or re-encode the video")
                if not ok:
                    self.truncated_at = k
                    logger.warning(f"video {self.path} ends after {position + 1} of its {self.n_input_frames} frames (truncated or "
                                   f"corrupt): {k} of {len(self)} output frames read; re-encode it to use the rest")
                    return
                yield k, i, _bgr_to_rgb(bgr)
        finally:
            cap.release()


class FolderFrames(FrameSource):
    """A folder of images (not its subfolders), in sorted-name order; every image is one frame.
    An image that cannot be read becomes a black frame (one warning naming the file; its index in
    ``unreadable``): the tracker finds no face there, so it is interpolated and flagged like any
    faceless frame, and its ``input/NNNNN.png`` is black."""

    def __init__(self, path: PathLike):
        self.path = Path(path).expanduser()
        self.name = self.path.resolve().name
        self.fps = None
        self.input_fps = None
        self.files: Sequence[Path] = list_images(self.path, recursive=False)
        if not self.files:
            raise MICAError(f"frame folder {self.path} holds no images (.jpg/.png/...); "
                            "pass a folder of frames or a video file")
        self.unreadable: set[int] = set()
        first = None
        for i, _f in enumerate(self.files):  # the size: of the first readable image
            first = self._read(i)
            if first is not None:
                break
        if first is None:
            raise MICAError(f"no image of the frame folder {self.path} can be read; check the files")
        self.size = (int(first.shape[1]), int(first.shape[0]))
        self.n_input_frames = len(self.files)
        self.indices = list(range(len(self.files)))

    def _read(self, i: int) -> np.ndarray | None:
        """Frame i, or None when its file cannot be read (warned once)."""
        try:
            return read_image(self.files[i])
        except (MICAError, OSError) as e:
            if i not in self.unreadable:
                self.unreadable.add(i)
                logger.warning(f"frame {self.files[i]} cannot be read ({str(e)[:100]}): tracked as a black frame "
                               "without a face (interpolated, flagged in tracking.csv)")
            return None

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        for k, i in enumerate(self.indices):
            rgb = self._read(i)
            if rgb is None:
                yield k, i, np.zeros((self.size[1], self.size[0], 3), np.uint8)
                continue
            if (rgb.shape[1], rgb.shape[0]) != self.size:
                raise MICAError(f"frame {self.files[i]} is {rgb.shape[1]}x{rgb.shape[0]} pixels but the first frame of the "
                                f"folder is {self.size[0]}x{self.size[1]}; all frames must have one size (resize or remove it)")
            yield k, i, rgb


def open_frames(path: PathLike, fps: float | None = None, begin: int = 0) -> FrameSource:
    """A ``VideoFrames`` for a file, a ``FolderFrames`` for a folder (``fps`` ignored there), its
    first ``begin`` output frames dropped (``FrameSource.skip_first``).

    Raises:
        MICAError: missing path, unreadable or empty video, folder without images, ``begin`` past
            the last output frame.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise MICAError(f"input {p} does not exist (pass a video file or a folder of frames)")
    if fps is not None and not (math.isfinite(float(fps)) and float(fps) > 0):
        raise MICAError(f"--fps {fps} is not a positive frame rate (use e.g. --fps 25)")
    src = FolderFrames(p) if p.is_dir() else VideoFrames(p, fps)
    if begin:
        src.skip_first(begin)
    return src


_END = object()


def prefetch(items: Iterable[T], depth: int = 4) -> Iterator[T]:
    """Iterate ``items`` in a background thread, up to ``depth`` ahead: decoding (which releases the
    GIL inside OpenCV) then overlaps with the caller's work. Exceptions of ``items`` are raised in
    the caller at the item where they happened; leaving the loop early stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        it = iter(items)
        try:
            for x in it:
                if not put((x, None)):
                    return
        except BaseException as e:  # handed to the consumer
            put((_END, e))
            return
        finally:
            close = getattr(it, "close", None)  # a generator releases its video here, in this thread
            if close is not None:
                close()
        put((_END, None))

    thread = threading.Thread(target=work, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            x, err = q.get()
            if x is _END:
                if err is not None:
                    raise err
                return
            yield x
    finally:
        stop.set()
        thread.join()
