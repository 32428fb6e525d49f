"""Synthetic-truth live runs for the live tests: the tracker test's ground-truth sequence
(``tests.synthetic_tracking``) played through ``PacedRows`` into a ``LiveSession``; a recording
WebSocket client on its own thread (``RecordingClient``)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from tests.synthetic_tracking import embedding_arrays, make_sequence, synthetic_setup


class Synthetic:
    """Assets, FLAME, a ground-truth sequence and a config pointing at them (built once per test module)."""

    def __init__(self, tmp: Path, n_frames: int = 120, noise_px: float = 0.5) -> None:
        from configs.config import load_cfg

        self.assets, self.flame, self.emb, self.lids, self.identity, self.iris = synthetic_setup(tmp, real=False)
        self.seq = make_sequence(self.flame, self.lids, embedding_arrays(self.emb), self.identity, n_frames=n_frames, size=512,
                                 distance=0.6, focal_x=1.5, noise_px=noise_px, iris_vertices=self.iris, seed=11)
        np.save(tmp / "identity.npy", self.identity)
        self.identity_path = tmp / "identity.npy"
        a = self.assets
        self.cfg = load_cfg(None, ["model.flame_model_path", str(a["flame_model_path"]),
                                   "model.flame_lmk_embedding_path", str(a["flame_lmk_embedding_path"]),
                                   "tracker.mediapipe_embedding_path", str(a["mediapipe_embedding_path"]),
                                   "tracker.l_eyelid_path", str(a["l_eyelid_path"]),
                                   "tracker.r_eyelid_path", str(a["r_eyelid_path"]),
                                   "tracker.iris_vertices", str(list(self.iris)), "tracker.crop", "False"])

    def rows(self, repeat: int = 1) -> dict[str, np.ndarray]:
        mp = self.seq["mediapipe"].astype(np.float32)
        return {"mediapipe": np.concatenate([mp] * repeat)}

    def session(self, fps: float, warmup_s: float = 1.0, output=None, port: int | None = 0, send_crops=False,
                image=None, repeat: int = 1, fail_after=None, start_server: bool = True, lossless: bool = False):
        from micalib.live.build import LiveOptions, build_tracker, writer_factory
        from micalib.live.session import LiveSession, glb_builder
        from micalib.live.sources import PacedRows
        from micalib.live.stream import StreamServer

        o = LiveOptions(identity=str(self.identity_path), warmup_s=warmup_s, output=None if output is None else str(output),
                        send_crops=send_crops)
        src = PacedRows(self.rows(repeat), fps, image=image, name="synthetic", fail_after=fail_after, lossless=lossless)
        tracker = build_tracker(self.cfg, o, flame=self.flame, emb=self.emb, lids=self.lids, detector=object())
        server = StreamServer("127.0.0.1", 0) if port is not None else None
        sess = LiveSession(src, tracker, server, writer_factory(self.cfg, o, src), send_crops, glb=glb_builder(fps))
        if server is not None and start_server:
            server.start()
        return sess


def run_in_thread(session):
    """Run ``session.run()`` in a thread; returns (thread, box) with box["stats"] or box["error"]."""
    box: dict = {}

    def work():
        try:
            box["stats"] = session.run()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t, box


class RecordingClient:
    """A WebSocket client on its own thread that sends ``requests`` (JSON messages), then records
    every message (text ones decoded, binary ones as bytes) until ``end``. Given the ``server``,
    the constructor returns once the server counts a client (or the client's thread has ended)."""

    def __init__(self, url: str, requests=(), server=None) -> None:
        self._box: dict = {}
        self._thread = threading.Thread(target=self._receive_all, args=(url, requests))
        self._thread.start()
        while server is not None and server.counts[0] < 1 and self._thread.is_alive():
            threading.Event().wait(0.01)

    def _receive_all(self, url: str, requests) -> None:
        from micalib.live.websocket import WebSocketClient

        c = WebSocketClient(url)
        for r in requests:
            c.send_text(json.dumps(r))
        msgs = []
        try:
            while True:
                m = c.recv()
                msgs.append(m if isinstance(m, bytes) else json.loads(m))
                if isinstance(msgs[-1], dict) and msgs[-1]["type"] == "end":
                    break
        finally:
            c.close()
            self._box["msgs"] = msgs

    def messages(self, timeout: float = 60.0) -> list:
        """Wait for the client's thread (``timeout`` seconds) and return what it recorded."""
        self._thread.join(timeout)
        return self._box["msgs"]
