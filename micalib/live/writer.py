"""``-o`` while live: the offline tracker's per-frame files, written by a thread behind a bounded
queue so that writing never delays the tracker.

``LiveWriter(out, ...)`` writes ``canonical.obj`` and ``identity.npy`` at once; per tracked frame
(``submit``) ``checkpoint/NNNNN.frame``, ``mesh/NNNNN.ply``, ``input/NNNNN.png`` (sources with
images) and a ``video.mp4`` overlay frame; ``close()`` finishes every queued frame and writes
``tracking.csv`` (``time_s`` = capture time) and ``crop.json``. The session asks ``has_room()``
before tracking a frame and drops the frame when the queue is full (counted), so every tracked
frame is written. The overlay is shed first: its frames go through a queue of their own
(``OVERLAY_QUEUE``) and are skipped (counted in ``overlays_shed``) when that queue is full or the
file queue is at least half full; ``video.mp4`` then has fewer frames than were tracked.
"""
from __future__ import annotations

import csv
import io
import queue
import threading
from pathlib import Path

import numpy as np
from loguru import logger

from micalib.live.online import OnlineResult
from micalib.tracking import crop as cropmod
from micalib.tracking.outputs import frame_dict, frame_name, save_frame
from micalib.tracking.runner import CSV_FIELDS, _ply_metres, _png_bytes, _row
from utils.io import atomic_save_npy, atomic_write_bytes, atomic_write_text
from utils.mesh import obj_text

OVERLAY_QUEUE = 2


class LiveWriter:
    """See the module docstring. ``model``: the tracking FLAME; ``k``: the fixed intrinsics (crop
    pixels); ``matrix``: the crop box (input px -> crop px); ``video``: write ``video.mp4``."""

    def __init__(self, out: Path, model, identity: np.ndarray, k: np.ndarray, size: int, matrix: np.ndarray,
                 fps: float, video: bool = True, capacity: int = 16, png_compression: int = 1) -> None:
        self.out, self.model, self.identity, self.k, self.size = Path(out), model, identity, k, int(size)
        self.matrix, self.fps, self.png_compression = matrix, float(fps), int(png_compression)
        for sub in ("checkpoint", "mesh", "input"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.out / "canonical.obj", obj_text(model.canonical_vertices(), model.faces), fsync=False)
        atomic_save_npy(self.out / "identity.npy", np.asarray(identity, np.float32))
        self.files: queue.Queue = queue.Queue(int(capacity))
        self.overlays: queue.Queue = queue.Queue(OVERLAY_QUEUE)
        self.rows: list[dict] = []
        self.inputs: list[int] = []
        self.overlays_shed = 0
        self.error: BaseException | None = None
        self._video_on = bool(video)
        self._video = None
        self._threads = [threading.Thread(target=self._file_loop, name="live-write", daemon=True),
                         threading.Thread(target=self._overlay_loop, name="live-overlay", daemon=True)]
        for t in self._threads:
            t.start()

    def has_room(self) -> bool:
        return not self.files.full()

    def submit(self, res: OnlineResult) -> None:
        self.files.put_nowait(res)  # the session checked has_room(); only this thread puts

    # ------------------------------------------------------------------------------------------
    def _file_loop(self) -> None:
        while True:
            res = self.files.get()
            if res is None:
                self.overlays.put(None)
                return
            try:
                self._write(res)
            except BaseException as e:  # reported by close(); the frames after it are not written
                self.error = e
                logger.error(f"live: writing frame {res.frame} failed: {e}")

    def _write(self, res: OnlineResult) -> None:
        st, name = res.state, frame_name(res.frame)
        verts = self.model.vertices(st.exp, st.pose, st.eyelids)[0]
        if res.crop is not None:
            atomic_write_bytes(self.out / "input" / f"{name}.png", _png_bytes(res.crop, self.png_compression), fsync=False)
        atomic_write_bytes(self.out / "mesh" / f"{name}.ply", _ply_metres(verts, self.model.faces), fsync=False)
        data = frame_dict(st.exp, st.pose, st.eyelids, self.identity, st.r, st.t, self.k, (self.size, self.size),
                          res.frame, res.frame)
        save_frame(self.out / "checkpoint" / f"{name}.frame", data)
        row = _row(res.frame, res.captured.index, 1.0, res.face_found, res.valid, res.rms, not res.face_found, self.model)
        row["time_s"] = round(res.captured.t_capture, 6)  # the capture time (offline: frame / fps)
        self.rows.append(row)
        self.inputs.append(res.captured.index)
        if self._video_on and res.crop is not None:
            if self.files.qsize() * 2 >= self.files.maxsize:
                self.overlays_shed += 1
                return
            try:
                self.overlays.put_nowait((res.crop, verts, st))
            except queue.Full:
                self.overlays_shed += 1

    def _overlay_loop(self) -> None:
        from micalib.tracking.overlay import VideoWriter, compose_overlay

        while True:
            item = self.overlays.get()
            if item is None:
                return
            crop, verts, st = item
            cam = verts.astype(np.float64) @ st.r.T + st.t
            uvw = cam @ self.k.T
            screen = np.concatenate([uvw[:, :2] / uvw[:, 2:3], cam[:, 2:3]], 1).astype(np.float32)
            if self._video is None:
                self._video = VideoWriter(self.out / "video.mp4", self.fps, (3 * self.size, self.size))
            self._video.write(compose_overlay(crop, {}, screen, self.model.faces))

    # ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Write every queued frame, then ``video.mp4``, ``tracking.csv`` and ``crop.json``."""
        self.files.put(None)
        for t in self._threads:
            t.join()
        if self._video is not None:
            self._video.close()
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for row in self.rows:
            w.writerow(row)
        atomic_write_text(self.out / "tracking.csv", buf.getvalue(), fsync=False)
        if self.inputs:
            cropmod.write_crop_json(self.out / "crop.json", [self.matrix] * len(self.inputs), self.size, self.inputs,
                                    fsync=False)
        logger.info(f"live: {len(self.rows)} tracked frames written to {self.out}"
                    + (f" ({self.overlays_shed} overlay frames shed)" if self.overlays_shed else ""))
        if self.error is not None:
            raise self.error
