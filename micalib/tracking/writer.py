"""The per-frame files and the overlay video of a tracking run: ``FrameWriter``, the one owner of
the writer threads, the overlay threads and ``video.mp4``.

The main thread fits; per frame it hands the state to ``FrameWriter.submit``, whose one task per
frame on a writer thread poses the full mesh and rasterises it once (``depth.frame_geometry``;
torch releases the GIL): that one 512 rasterisation serves ``depth/NNNNN.png`` and the overlay.
The same task then writes ``input/NNNNN.png``, ``mesh/NNNNN.ply``, ``depth/NNNNN.png``,
``checkpoint/NNNNN.frame``, the csv row and last the frame's solver record (``solver_state.py``,
which marks the frame finished); the overlay (detected landmarks green, the model's red, as the
original's) is drawn on one of two overlay threads (frames are independent) and encoded in frame
order by the calling thread.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from loguru import logger

from micalib.tracking.depth import DepthMesh, DepthStats, FrameGeometry, depth_mm, frame_geometry
from micalib.tracking.fitting import FrameState
from micalib.tracking.layout import TrackLayout
from micalib.tracking.model import TrackingFLAME
from micalib.tracking.outputs import save_frame
from micalib.tracking.resume import RowJournal
from micalib.tracking.solver_state import KEEP_APPEARANCE, save_appearance, write_frame_state
from utils.io import atomic_write_bytes
from utils.mesh import ply_bytes
from utils.png import encode_png

# frames whose files / overlays may wait in the pools before the calling thread waits for the oldest
MAX_PENDING_WRITES = 8
MAX_PENDING_OVERLAYS = 4
# deflate level of depth/NNNNN.png (utils/png.py: 0.4 ms and ~28 kB for a 512 head depth)
DEPTH_PNG_COMPRESSION = 1



def ply_metres(verts: np.ndarray, faces: np.ndarray) -> bytes:
    """The project's binary PLY, in metres like the tracker's FLAME and ``opencv`` block."""
    return ply_bytes(verts, faces, unit="metres")


def overlay_frame(crop: np.ndarray, detected: np.ndarray, geom: Future, faces: np.ndarray) -> np.ndarray:
    """One ``video.mp4`` frame: the crop, the detected landmarks (green) and the model's (red), as
    the original's, and the shaded mesh, from the frame's ``FrameGeometry`` (its rasterisation)."""
    from micalib.tracking.overlay import compose_overlay

    g: FrameGeometry = geom.result()
    return compose_overlay(crop, {"detected": detected, "model": g.landmarks}, g.screen, faces, normals=g.normals,
                           fragments=g.fragments)


def write_frame_files(layout: TrackLayout, k: int, g: FrameGeometry, size: int, faces: np.ndarray,
                      crop: np.ndarray | None, data: dict, depth_mesh: DepthMesh, depth_stats: DepthStats,
                      png_compression: int) -> None:
    """Frame ``k``'s files from its one rasterisation ``g``: ``input/NNNNN.png`` (unless ``crop`` is
    None: written before, or a source without images), ``mesh/NNNNN.ply``, ``depth/NNNNN.png`` and
    ``checkpoint/NNNNN.frame`` (the ``.frame`` dict ``data``); offline and live alike."""
    if crop is not None:
        atomic_write_bytes(layout.png(k), encode_png(crop, png_compression), fsync=False)
    atomic_write_bytes(layout.mesh(k), ply_metres(g.verts, faces), fsync=False)
    depth = depth_mm(g.fragments, g.depth_offset, depth_mesh, size, size, depth_stats)
    atomic_write_bytes(layout.depth(k), encode_png(depth, DEPTH_PNG_COMPRESSION), fsync=False)
    save_frame(layout.frame(k), data)


class FrameWriter:
    """Writes the frames of one run (see the module docstring); use as a context manager.

    Args:
        layout: the run's output paths.
        model: the tracking FLAME (poses the full mesh); depth_mesh: what ``depth/`` rasterises
            (``DepthMesh.build``; ``depth_stats`` counts its clamped pixels).
        png_compression: of ``input/NNNNN.png``; png_written: frames whose PNG the landmark pass wrote.
        workers: writer threads.
        video: (fps, (width, height)) of ``video.mp4``, or None for no video.
        journal: gets each written frame's csv row.
    """

    def __init__(self, layout: TrackLayout, model: TrackingFLAME, png_compression: int, workers: int,
                 video: tuple[float, tuple[int, int]] | None, png_written: set[int], journal: RowJournal,
                 depth_mesh: DepthMesh) -> None:
        self.layout, self.model, self.faces = layout, model, model.faces
        self.depth_mesh, self.depth_stats = depth_mesh, DepthStats()
        self.png_compression = png_compression
        self.png_written = png_written
        self.journal = journal
        self.seconds = 0.0  # the calling thread's time in submit
        self._pool = ThreadPoolExecutor(max(1, int(workers)), thread_name_prefix="track-write")
        self._vpool = None
        self._video = None
        if video is not None:
            from micalib.tracking.overlay import VideoWriter

            # overlays are drawn by two threads (frames are independent) and written in order here
            self._vpool = ThreadPoolExecutor(2, thread_name_prefix="track-video")
            self._video = VideoWriter(layout.video, video[0], video[1])
        self._pending: list[Future] = []
        self._vid_pending: list[Future] = []
        self._kept: deque[int] = deque()  # frames whose photometric appearance is kept

    @property
    def draws_video(self) -> bool:
        """Whether frames get an overlay (``submit``'s ``detected`` are used)."""
        return self._video is not None

    def submit(self, k: int, crop: np.ndarray, st: FrameState, kk: np.ndarray, data: dict | None,
               row: dict | None, detected: np.ndarray | None, basis_pose: np.ndarray | None = None,
               appearance: np.ndarray | None = None) -> None:
        """Frame ``k``: its files from ``data`` (the ``.frame`` dict; None = finished before, only
        the overlay) and its overlay (camera ``kk`` in OpenCV's pixel convention; ``detected``: the
        fit's targets in crop pixels, NaN where unused), in frame order. ``st``, ``basis_pose`` and
        ``appearance`` go into its solver record (``solver_state.py``)."""
        t0 = time.perf_counter()
        # One writer task per frame: the full mesh posed and rasterised once (depth and overlay), then
        # the frame's files. (A separate task waiting for the geometry held the other writer thread
        # idle: the two threads then computed one frame's geometry at a time.)
        geom: Future = Future()
        write = None
        if data is not None:
            drop = None
            if appearance is not None:  # the last KEEP_APPEARANCE fitted frames' appearance is kept
                self._kept.append(k)
                drop = self._kept.popleft() if len(self._kept) > KEEP_APPEARANCE else None
            write = (k, data, crop, row, st, basis_pose, appearance, drop)
        self._pending.append(self._pool.submit(self._frame_task, geom, st, kk, crop.shape[0], write))
        if self._video is not None:
            self._vid_pending.append(self._vpool.submit(overlay_frame, crop, detected, geom, self.faces))
        while len(self._pending) > MAX_PENDING_WRITES:
            self._pending.pop(0).result()
        while len(self._vid_pending) > MAX_PENDING_OVERLAYS or (self._vid_pending and self._vid_pending[0].done()):
            self._video.write(self._vid_pending.pop(0).result())
        self.seconds += time.perf_counter() - t0

    def _frame_task(self, geom: Future, st: FrameState, kk: np.ndarray, size: int, write: tuple | None) -> None:
        """A writer thread's work for one frame: its geometry (handed to the overlay through ``geom``
        as soon as it is there), then its files (``write``: ``_write_frame``'s arguments; None for a
        frame finished before)."""
        try:
            g = frame_geometry(self.model, self.depth_mesh, st, kk, size)
        except BaseException as e:
            geom.set_exception(e)
            raise
        geom.set_result(g)
        if write is not None:
            self._write_frame(g, *write)

    def _write_frame(self, g: FrameGeometry, k: int, data: dict, crop: np.ndarray, row: dict | None, st: FrameState,
                     basis_pose: np.ndarray | None, appearance: np.ndarray | None, drop: int | None) -> None:
        write_frame_files(self.layout, k, g, crop.shape[0], self.faces,
                          None if k in self.png_written else crop, data, self.depth_mesh, self.depth_stats,
                          self.png_compression)
        if row is not None:
            self.journal.add(row)  # its csv row survives a kill
        if appearance is not None:
            save_appearance(self.layout, k, appearance, drop)
        write_frame_state(self.layout, k, st, basis_pose)  # last: marks the frame finished

    def finish(self) -> None:
        """Wait for every file and write the remaining overlays; ``video.mp4`` is complete after it."""
        for f in self._pending:
            f.result()
        for f in self._vid_pending:
            self._video.write(f.result())
        self._vid_pending = []
        if self._video is not None:
            self._video.close()
            self._video = None
        if self.depth_stats.clamped_pixels:
            logger.warning(f"depth: {self.depth_stats.clamped_pixels} pixels beyond 65,535 mm clamped to 65,535 "
                           "(the camera is over 65 m away: check the focal length)")

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)
        if self._vpool is not None:
            self._vpool.shutdown(wait=True)
        if self._video is not None:  # not finished: no half-written video.mp4
            self._video.abort()
