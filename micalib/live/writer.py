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

import numpy as np
from loguru import logger

from micalib.live.online import OnlineResult
from micalib.tracking import crop as cropmod
from micalib.tracking.depth import DepthMesh, DepthStats, frame_geometry
from micalib.tracking.layout import TrackLayout
from micalib.tracking.outputs import frame_dict
from micalib.tracking.runner import CSV_FIELDS, csv_row
from micalib.tracking.writer import overlay_frame, write_frame_files
from utils.io import atomic_save_npy, atomic_write_bytes, atomic_write_text
from utils.mesh import obj_text

OVERLAY_QUEUE = 2


class LiveWriter:
    """See the module docstring. ``model``: the tracking FLAME; ``k``: the fixed intrinsics (crop
    pixels); ``matrix``: the crop box (input px -> crop px); ``video``: write ``video.mp4``."""

    def __init__(self, layout: TrackLayout, model, identity: np.ndarray, k: np.ndarray, size: int, matrix: np.ndarray,
                 fps: float, video: bool = True, capacity: int = 16, png_compression: int = 1,
                 masks: dict | None = None) -> None:
        self.layout, self.model, self.identity, self.k, self.size = layout, model, identity, k, int(size)
        self.depth_mesh, self.depth_stats = DepthMesh.build(model.faces, model.flame.n_vertices, masks), DepthStats()
        self.out = layout.root
        self.matrix, self.fps, self.png_compression = matrix, float(fps), int(png_compression)
        layout.make_dirs()
        atomic_write_bytes(layout.canonical, obj_text(model.canonical_vertices(), model.faces), fsync=False)
        atomic_save_npy(layout.identity, np.asarray(identity, np.float32))
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
        st, lay = res.state, self.layout
        g = frame_geometry(self.model, self.depth_mesh, st, self.k, self.size)  # one rasterisation, as offline
        data = frame_dict(st.exp, st.pose, st.eyelids, self.identity, st.r, st.t, self.k, (self.size, self.size),
                          res.frame, res.frame)
        write_frame_files(lay, res.frame, g, self.size, self.model.faces, res.crop, data, self.depth_mesh,
                          self.depth_stats, self.png_compression)
        row = csv_row(res.frame, res.captured.index, 1.0, res.face_found, res.valid, res.rms, not res.face_found, self.model)
        row["time_s"] = round(res.captured.t_capture, 6)  # the capture time (offline: frame / fps)
        self.rows.append(row)
        self.inputs.append(res.captured.index)
        if self._video_on and res.crop is not None:
            if self.files.qsize() * 2 >= self.files.maxsize:
                self.overlays_shed += 1
                return
            try:
                self.overlays.put_nowait((res.crop, res.detected, g))
            except queue.Full:
                self.overlays_shed += 1

    def _overlay_loop(self) -> None:
        from concurrent.futures import Future

        from micalib.tracking.overlay import VideoWriter

        while True:
            item = self.overlays.get()
            if item is None:
                return
            crop, detected, geom = item
            done: Future = Future()
            done.set_result(geom)
            if self._video is None:
                self._video = VideoWriter(self.layout.video, self.fps, (3 * self.size, self.size))
            self._video.write(overlay_frame(crop, detected, done, self.model.faces))

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
        atomic_write_text(self.layout.csv, buf.getvalue(), fsync=False)
        if self.inputs:
            cropmod.write_crop_json(self.layout.crop_json, [self.matrix] * len(self.inputs), self.size, self.inputs,
                                    fsync=False)
        logger.info(f"live: {len(self.rows)} tracked frames written to {self.out}"
                    + (f" ({self.overlays_shed} overlay frames shed)" if self.overlays_shed else ""))
        if self.error is not None:
            raise self.error
