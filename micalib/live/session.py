"""One live run: source -> online tracker -> stream (+ ``-o`` files), and how it ends.

``LiveSession(source, tracker, server, ...).run() -> LiveStats``: takes the newest frame, tracks
it, sends its ``frame`` message (and its crop as a JPEG with ``send_crops``; posed vertices to
clients that subscribed), hands it to the writer. Ends when the source ends (a ``--live`` file),
fails (``source.error``, raised as one ``MICAError`` line after the files are finished) or on
KeyboardInterrupt (Ctrl-C; SIGTERM through ``utils.errors.sigterm_as_interrupt``): capture stops,
the files of every tracked frame are finished, clients get an ``end`` message, and the
interruption propagates (``run_main`` exits 130).
"""
from __future__ import annotations

import time
from collections.abc import Callable

import cv2
import numpy as np
from loguru import logger

from micalib.live import messages
from micalib.live.online import OnlineResult, OnlineTracker
from micalib.live.sources import LiveSource
from micalib.live.stats import LiveStats
from micalib.live.stream import StreamServer, binary, text
from utils.errors import MICAError


def glb_builder(fps: float | None) -> Callable:
    """``f(tracker) -> bytes``: the ``.glb`` a client animates (``micalib.export.gltf``: the identity's
    mesh with the expression, eyelid and pose-corrective morph targets and the 4-joint skin; one frame,
    the tracker's current state; the camera with the fixed intrinsics, K in OpenCV pixel centres)."""
    def build(tracker) -> bytes:
        from micalib.export.gltf import tracking_glb_bytes
        from micalib.tracking.fitting import FrameState

        state = tracker.prev if tracker.prev is not None else FrameState()
        return tracking_glb_bytes(tracker.model, [state], tracker.k, (tracker.size, tracker.size), fps or 25.0,
                                  pixel_centre=0.0)[0]

    return build


class LiveSession:
    """See the module docstring.

    Args:
        source: a ``LiveSource`` (not started).
        tracker: an ``OnlineTracker``.
        server: a started ``StreamServer`` or None.
        writer_factory: ``f(tracker) -> LiveWriter`` called when the warm-up ends (``-o``), or None.
        send_crops: send each tracked frame's crop as a JPEG (``jpeg_quality``).
        glb: ``f(tracker) -> bytes`` for ``get_glb`` requests (``glb_builder``), or None.
    """

    def __init__(self, source: LiveSource, tracker: OnlineTracker, server: StreamServer | None = None,
                 writer_factory: Callable | None = None, send_crops: bool = False, jpeg_quality: int = 80,
                 glb: Callable | None = None) -> None:
        self.source, self.tracker, self.server = source, tracker, server
        self.writer_factory, self.writer = writer_factory, None
        self.send_crops, self.jpeg_quality, self.glb = bool(send_crops), int(jpeg_quality), glb
        self.stats = LiveStats()
        self._glb_bytes: bytes | None = None
        self._taken_warm = 0
        if server is not None:
            server.hello, server.on_request = self.hello, self.on_request

    # ------------------------------------------------------------------------------------------
    def hello(self) -> dict:
        t = self.tracker
        cam = {"K": np.round(t.k, 4).tolist(), "focal_px": round(t.fitter.intr.focal, 3)} if t.tracking else None
        return messages.hello_message(self.source.name, self.source.fps, (t.size, t.size), t.flame.n_vertices,
                                      len(t.flame.faces), self.send_crops, self.glb is not None, cam)

    def on_request(self, client, req: dict):
        kind = req.get("type")
        t = self.tracker
        if kind == "get_faces":
            return [text({"type": "faces", "faces": np.asarray(t.flame.faces).astype(int).tolist()})]
        if kind == "get_glb":
            if self.glb is None:
                return [text({"type": "error", "message": "no .glb in this run"})]
            if not t.tracking:
                return [text({"type": "error", "message": "the .glb is ready when the warm-up is over; ask again"})]
            if self._glb_bytes is None:
                self._glb_bytes = bytes(self.glb(t))
            return [text({"type": "glb", "bytes": len(self._glb_bytes)}), binary(self._glb_bytes)]
        return None

    # ------------------------------------------------------------------------------------------
    def run(self) -> LiveStats:
        reason = "interrupted"
        try:
            self.source.start()
            self._loop()
            reason = "source failed" if self.source.error else "source ended"
        finally:
            self._finish(reason)
        if self.source.error:
            raise MICAError(self.source.error)
        return self.stats

    def _loop(self) -> None:
        src, st, tracker = self.source, self.stats, self.tracker
        while True:
            cap = src.get(timeout=0.25)
            if cap is None:
                if src.ended:
                    return
                continue
            if self.writer is not None and not self.writer.has_room():
                st.dropped_writer += 1
                continue
            if tracker.tracking and st.first_index is None:
                st.warmup_over(src.dropped, cap.index, self._taken_warm)
            res = tracker.process(cap)
            if res is None:  # a warm-up frame (the warm-up may have ended on it)
                self._taken_warm += 1
                if tracker.tracking:
                    self._warmup_done()
                continue
            self._emit(res)

    def _warmup_done(self) -> None:
        t = self.tracker
        if self.writer_factory is not None:
            self.writer = self.writer_factory(t)
        if self.server is not None:
            i, c = t.fitter.intr, t.camera
            interval = None if c is None else [round(c.low, 3), round(c.high, 3)]  # crop px, as focal_px
            self.server.publish([text({"type": "camera", "K": np.round(t.k, 4).tolist(), "focal_px": round(i.focal, 3),
                                       "focal_interval_px": interval, "warmup_frames": self._taken_warm + self.source.dropped,
                                       "identity": t.identity_source})])

    def _emit(self, res: OnlineResult) -> None:
        st, cap = self.stats, res.captured
        s = res.state
        unit = []
        jpeg = None
        if self.send_crops and res.crop is not None:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(res.crop, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            jpeg = buf.tobytes() if ok else None
        t_send = time.perf_counter()
        latency = 1000.0 * (t_send - cap.t_ref)
        msg = messages.frame_message(res.frame, cap.index, cap.t_capture, latency, res.face_found, s.exp, s.pose,
                                     s.eyelids, s.r, s.t, self.tracker.k, jpeg is not None,
                                     self.source.dropped + st.dropped_writer)
        unit.append(text(msg))
        if jpeg is not None:
            unit.append(binary(messages.tagged(b"JPEG", res.frame, jpeg)))
        if self.server is not None:
            self.server.publish(unit)
        if st.first_result_s is None:
            st.first_result_s = time.perf_counter() - self.source.t0
        st.frame_sent(latency)
        st.faceless += int(not res.face_found)
        if self.server is not None and self.server.wanted("vertices"):
            verts = self.tracker.model.vertices(s.exp, s.pose, s.eyelids)[0]
            self.server.publish([binary(messages.vertices_payload(res.frame, verts))], only="vertices")
        if self.writer is not None:
            self.writer.submit(res)

    def _finish(self, reason: str) -> None:
        """Stop capture, finish the files, tell the clients; never raises over a pending error."""
        self.source.stop()
        st = self.stats
        st.finish(self.source.dropped, self.source.produced)
        try:
            if self.writer is not None:
                self.writer.close()
                st.overlays_shed = self.writer.overlays_shed
        finally:
            if self.server is not None:
                _, st.client_sent, st.client_dropped = self.server.counts
                self.server.close([text({"type": "end", "reason": reason, "stats": st.summary()})])
                _, st.client_sent, st.client_dropped = self.server.counts
            logger.info(f"live ({reason}): {st.line()}")
