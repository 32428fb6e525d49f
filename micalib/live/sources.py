"""Live sources behind one interface: a reader thread produces ``Captured`` frames (capture time,
image or landmarks) into a one-frame slot, and the tracker takes the newest one.

``LiveSource.start()`` opens the source (one ``MICAError`` line when it cannot), ``get()`` blocks
for the next frame and returns None once the source has ended (``error`` then says why when it
ended by failing: a camera that disconnected, a URL that broke), ``stop()`` ends it. No queue:
a frame that arrives while the previous one has not been taken replaces it and is counted in
``dropped`` -- the newest frame wins, exactly as with a camera whose driver keeps the last frame.

- ``CaptureSource``: an OpenCV camera index or any capture URL OpenCV opens (``rtsp://``,
  ``http://``, also a file path); frames as fast as the device delivers them; the latency
  reference of a frame is the moment ``read()`` returned it.
- ``PacedVideoSource`` (``--live FILE``): a video file played at its own frame rate, as a stand-in
  camera; frame k is due at start + k / fps (decoded ahead, published at its due time, or at once
  when decoding is late; skipped and counted as dropped when it is more than a frame late, at most ``MAX_SKIPPED`` in a row) and that
  due time is its latency reference.
- ``PacedRows``: landmark rows (and optional images) at a given rate, the same way (tests, and
  ``--landmarks`` with ``--live``).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import cv2
import numpy as np

from utils.errors import MICAError


@dataclass
class Captured:
    """One frame of a live source.

    Attributes:
        index: the source's frame number (0-based, counting every frame it produced).
        t_ref: ``time.perf_counter()`` latency reference (due time for paced sources, read time else).
        t_capture: seconds since the source started.
        image: RGB uint8 (H, W, 3) or None.
        landmarks: {"mediapipe": (478, 2)} and/or {"ibug68": (68, 2)} in image pixels, or None.
    """

    index: int
    t_ref: float
    t_capture: float
    image: np.ndarray | None = None
    landmarks: dict[str, np.ndarray] | None = None


class LatestSlot:
    """A one-frame mailbox: ``put`` replaces an untaken frame (``dropped`` += 1)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Captured | None = None
        self._closed = False
        self.dropped = 0
        self.produced = 0

    def drop(self) -> None:
        """A frame the source produced but skipped (counted as produced and dropped)."""
        with self._cond:
            self.produced += 1
            self.dropped += 1

    def put(self, item: Captured, wait: bool = False) -> None:
        """Offer ``item``; with ``wait`` first wait until the previous frame was taken (a lossless
        source: ``PacedRows(lossless=True)``, for tests whose figures must not depend on the load)."""
        with self._cond:
            if wait:
                self._cond.wait_for(lambda: self._item is None or self._closed)
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self.produced += 1
            self._cond.notify()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def empty(self) -> bool:
        return self._item is None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Captured | None:
        """The newest untaken frame; None when closed and empty (or on ``timeout``)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._item is not None or self._closed, timeout):
                return None
            item, self._item = self._item, None
            self._cond.notify_all()
            return item


class LiveSource:
    """Base: subclasses implement ``_open()`` and ``_frames()`` (a generator of ``Captured`` that
    checks ``self.stopping``); see the module docstring."""

    name = "live"
    fps: float | None = None
    lossless = False  # True: wait for the tracker instead of replacing an untaken frame (tests)

    def __init__(self) -> None:
        self.slot = LatestSlot()
        self.stopping = threading.Event()
        self.error: str | None = None
        self.t0 = 0.0
        self._thread: threading.Thread | None = None
        self._opened = False

    @property
    def dropped(self) -> int:
        return self.slot.dropped

    @property
    def produced(self) -> int:
        return self.slot.produced

    @property
    def ended(self) -> bool:
        """The source has ended and its last frame was taken."""
        return self.slot.closed and self.slot.empty


    def open(self) -> LiveSource:
        """Open the device / file (one ``MICAError`` line when it cannot); ``start`` opens too."""
        if not self._opened:
            self._open()
            self._opened = True
        return self

    def start(self) -> LiveSource:
        self.open()
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"live-source-{self.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            for item in self._frames():
                if self.stopping.is_set():
                    break
                self.slot.put(item, wait=self.lossless)
        except Exception as e:  # a source that breaks ends the run with one line, not a traceback
            self.error = f"{self.name}: {type(e).__name__}: {e}"
        finally:
            self._close()
            self.slot.close()

    def get(self, timeout: float | None = None) -> Captured | None:
        return self.slot.get(timeout)

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _open(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _frames(self) -> Iterator[Captured]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def _wait_until(self, t: float) -> None:
        """Sleep until ``perf_counter() >= t`` (or the source is stopped)."""
        while not self.stopping.is_set():
            left = t - time.perf_counter()
            if left <= 0:
                return
            self.stopping.wait(min(left, 0.05))


def _open_capture(spec, what: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(spec)
    if not cap.isOpened():
        cap.release()
        raise MICAError(f"{what} cannot be opened by OpenCV; check the {'index (--camera N)' if isinstance(spec, int) else 'address or file'}")
    return cap


class CaptureSource(LiveSource):
    """A camera index or a capture URL (see the module docstring)."""

    def __init__(self, spec: int | str) -> None:
        super().__init__()
        self.spec = spec
        self.name = f"camera{spec}" if isinstance(spec, int) else "stream"
        self.what = f"camera {spec}" if isinstance(spec, int) else f"capture URL {spec}"
        self.cap: cv2.VideoCapture | None = None

    def _open(self) -> None:
        self.cap = _open_capture(self.spec, self.what)
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 and np.isfinite(fps) else None

    def _frames(self) -> Iterator[Captured]:
        k = 0
        while not self.stopping.is_set():
            ok, bgr = self.cap.read()
            t = time.perf_counter()
            if not ok or bgr is None:
                if not self.stopping.is_set():
                    self.error = (f"{self.what} stopped delivering frames after {k} (disconnected or ended); "
                                  "the frames tracked before are kept")
                return
            yield Captured(k, t, t - self.t0, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            k += 1

    def _close(self) -> None:
        if self.cap is not None:
            self.cap.release()


MAX_SKIPPED = 4  # late frames skipped in a row by PacedVideoSource before one is delivered anyway


class PacedVideoSource(LiveSource):
    """A video file played at its own frame rate (``--live``); ``landmarks``: rows per input frame
    ({"mediapipe": (T, 478, 2), ...}, ``--landmarks``) given with each frame instead of detection."""

    def __init__(self, path, landmarks: dict[str, np.ndarray] | None = None, loops: int = 1) -> None:
        super().__init__()
        self.path = str(path)
        self.landmarks = landmarks
        self.loops = int(loops)  # play the file this many times in a row (bench/live.py: longer runs)
        from pathlib import Path

        self.name = Path(path).stem
        self.cap: cv2.VideoCapture | None = None

    def _open(self) -> None:
        from pathlib import Path

        if not Path(self.path).is_file():
            raise MICAError(f"video {self.path} not found (--live FILE)")
        self.cap = _open_capture(self.path, f"video {self.path}")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        if not (fps and fps > 0 and np.isfinite(fps)):
            self.cap.release()
            raise MICAError(f"video {self.path} states no frame rate; --live plays a file at its own rate")
        self.fps = float(fps)

    def _frames(self) -> Iterator[Captured]:
        for loop in range(self.loops):
            if loop:
                self.cap.release()
                self.cap = _open_capture(self.path, f"video {self.path}")
            yield from self._play(self.produced)

    def _play(self, k0: int) -> Iterator[Captured]:
        """One pass over the file; its frames are numbered from ``k0`` on."""
        k, skipped = k0, 0
        while not self.stopping.is_set():
            due = self.t0 + k / self.fps
            if time.perf_counter() > due + 1.0 / self.fps and skipped < MAX_SKIPPED:
                # more than a frame late (decoding slower than the clip: a loaded machine): a camera
                # would have replaced this frame by now, so it is skipped without converting it
                if not self.cap.grab():
                    return
                self.slot.drop()
                k, skipped = k + 1, skipped + 1
                continue
            skipped = 0
            ok, bgr = self.cap.read()
            if not ok or bgr is None:
                return
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            rows = None
            if self.landmarks is not None:
                if k - k0 >= len(next(iter(self.landmarks.values()))):
                    return  # no landmark row for this frame: the landmarks file ends the clip
                rows = {key: arr[k - k0] for key, arr in self.landmarks.items()}
            self._wait_until(due)
            yield Captured(k, due, k / self.fps, rgb, rows)
            k += 1

    def _close(self) -> None:
        if self.cap is not None:
            self.cap.release()


class PacedRows(LiveSource):
    """Landmark rows at ``fps``: ``rows`` {"mediapipe": (T, 478, 2), ...} in image pixels;
    ``image(k)`` an optional image per frame; ``fail_after``: raise after that many frames (a source
    that vanishes); ``lossless``: never drop, wait for the tracker instead (a frame is then published
    when it is due or when the previous one was taken, whichever is later)."""

    def __init__(self, rows: dict[str, np.ndarray], fps: float, image: Callable[[int], np.ndarray] | None = None,
                 name: str = "rows", fail_after: int | None = None, lossless: bool = False) -> None:
        super().__init__()
        self.lossless = bool(lossless)
        self.rows, self.fps, self.image, self.name = rows, float(fps), image, name
        self.n = len(next(iter(rows.values())))
        self.fail_after = fail_after

    def _open(self) -> None:
        if not self.fps > 0:
            raise MICAError(f"frame rate must be positive, not {self.fps}")

    def _frames(self) -> Iterator[Captured]:
        for k in range(self.n):
            if self.fail_after is not None and k >= self.fail_after:
                raise ConnectionError(f"source vanished after {k} frames")
            due = self.t0 + k / self.fps
            self._wait_until(due)
            if self.stopping.is_set():
                return
            yield Captured(k, due, k / self.fps, None if self.image is None else self.image(k),
                           {key: arr[k] for key, arr in self.rows.items()})


def describe(source: LiveSource) -> str:
    rate = f"{source.fps:.3g} fps" if source.fps else "rate unknown"
    return f"{source.name} ({rate})"
