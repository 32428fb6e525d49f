"""Live tracking (issue 24): paced synthetic-truth landmark rows through the live path.

Timing-independent by construction: frame rates far from the tracker's own (1000 frames/s against
a per-frame fit of milliseconds; 4 frames/s against the same), and assertions on counts and order,
never on wall-clock values.
"""
from __future__ import annotations

import json
import pickle
import socket
import threading

import cv2
import numpy as np
import pytest

from micalib.live.stream import StreamServer, binary, check_host, text
from micalib.live.websocket import (
    OP_BINARY,
    WebSocketClient,
    accept_key,
    encode_frame,
    read_frame,
)
from tests.live_synthetic import RecordingClient, Synthetic, run_in_thread
from utils.errors import MICAError


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    """The synthetic truth; torch on one thread as track.py sets it (two threads that wait for each
    other on a loaded 2-core machine make each small product take milliseconds)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Synthetic(tmp_path_factory.mktemp("live"))
    torch.set_num_threads(threads)


def _accounting(s: dict, produced: int) -> None:
    """Every frame of the source is a warm-up frame, tracked, or dropped (counted once)."""
    assert s["warmup_frames"] + s["tracked"] + s["dropped_busy"] + s["dropped_writer"] == produced, s
    assert s["tracked"] + s["dropped_busy"] + s["dropped_writer"] == s["produced_after_warmup"], s


# ------------------------------------------------------------------------------------------------
def test_websocket_framing_and_handshake_key():
    # RFC 6455 section 1.3's worked example
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    import io

    for n in (0, 5, 125, 126, 65535, 65536, 200_000):
        payload = bytes(np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8))
        for mask in (False, True):
            fin, op, got = read_frame(io.BytesIO(encode_frame(OP_BINARY, payload, mask)))
            assert fin and op == OP_BINARY and got == payload


def test_host_other_than_loopback_is_refused_unless_allowed():
    assert check_host("127.0.0.1", False) == "127.0.0.1"
    with pytest.raises(MICAError, match="--allow-remote"):
        check_host("0.0.0.0", False)
    assert check_host("0.0.0.0", True) == "0.0.0.0"


def test_port_in_use_is_one_line():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        with pytest.raises(MICAError, match=f"port {s.getsockname()[1]} .* in use"):
            StreamServer("127.0.0.1", s.getsockname()[1]).start()
    finally:
        s.close()


def test_camera_or_url_that_cannot_be_opened_is_one_line():
    from micalib.live.sources import CaptureSource

    with pytest.raises(MICAError, match="camera 97 cannot be opened"):
        CaptureSource(97).open()
    with pytest.raises(MICAError, match="cannot be opened"):
        CaptureSource("http://127.0.0.1:9/none.mp4").open()


def test_slow_client_loses_messages_and_never_blocks_the_sender():
    """A client that never reads: its units are dropped and counted once its queue is full; a
    client that reads receives every unit in order. publish() never waits for either."""
    srv = StreamServer("127.0.0.1", 0, queue_size=8)
    port = srv.start()
    # a fixed small receive window (no autotuning, which may grow to tcp_rmem's 32 MB); the server's
    # send buffer holds at most tcp_wmem's maximum (4 MB here): a few of the 1 MB units
    slow = WebSocketClient(f"ws://127.0.0.1:{port}/", recv_buffer=4096)
    fast = WebSocketClient(f"ws://127.0.0.1:{port}/")
    while srv.counts[0] < 2:
        threading.Event().wait(0.01)
    n, blob = 120, bytes(1 << 20)
    got = []
    for k in range(n):
        srv.publish([text({"type": "frame", "frame": k}), binary(blob)])
        m = fast.recv()  # paced by the reader: the fast client never falls behind
        got.append(json.loads(m)["frame"])
        assert fast.recv() == blob
    _, sent, dropped = srv.counts
    assert got == list(range(n))
    assert dropped > n // 2  # the slow client holds at most its queue and the socket buffers
    srv.close()
    slow.sock.close()
    fast.sock.close()


def test_paced_source_faster_than_the_tracker_drops_frames(syn):
    """1000 frames/s: the tracker takes the newest frame when it is ready; the others are dropped
    and counted, and every frame is accounted for once."""
    sess = syn.session(fps=1000.0, warmup_s=0.0, repeat=10)
    sess.tracker.focal_px = 768.0  # no keyframe fit: the warm-up is three frames
    client = RecordingClient(f"ws://127.0.0.1:{sess.server.port}/", server=sess.server)
    stats = sess.run().summary()
    msgs = client.messages()
    assert stats["dropped_busy"] > stats["tracked"] > 0, stats
    _accounting(stats, 10 * len(syn.seq["exp"]))
    assert len(sess.stats.latencies_ms) == stats["tracked"]
    # the client still gets every tracked frame, in order, each saying how many were dropped so far
    frames = [m for m in msgs if isinstance(m, dict) and m["type"] == "frame"]
    assert [m["frame"] for m in frames] == list(range(stats["tracked"]))
    dropped = [m["dropped"] for m in frames]
    assert dropped == sorted(dropped) and dropped[-1] <= stats["dropped_busy"] + stats["warmup_frames"]


def test_paced_source_slower_than_the_tracker_drops_nothing(syn):
    """2 frames/s (500 ms per frame against a fit of a few ms of CPU; a frame is dropped only if the
    tracker spends longer than that on one): every frame after the warm-up is tracked; latency is
    measured for each."""
    sess = syn.session(fps=2.0, warmup_s=1.0, port=None)
    sess.source.n = 12
    sess.tracker.focal_px = 768.0
    stats = sess.run().summary()
    assert stats["dropped_busy"] == 0 and stats["dropped_writer"] == 0, stats
    assert stats["warmup_frames"] == 3 and stats["tracked"] == 9, stats
    _accounting(stats, 12)
    lat = np.asarray(sess.stats.latencies_ms)
    assert len(lat) == 9 and np.isfinite(lat).all() and (lat >= 0).all()
    assert stats["latency_p50_ms"] <= stats["latency_p95_ms"]
    assert stats["first_result_s"] is not None


@pytest.mark.slow
def test_live_path_meets_the_offline_synthetic_thresholds(syn, tmp_path):
    """The synthetic ground truth of the offline test (tests/test_tracking_fit.py), played at 30
    frames/s through the live path with -o: the written frames meet the offline thresholds
    (camera distance, translation, mesh error, reprojection); the focal length is fitted on the
    warm-up's first second only and is checked to the offline 2%. The rows are played losslessly
    (the source waits for the tracker instead of dropping: the figures must not depend on the
    machine's load; the drop tests above cover dropping)."""
    from tests.synthetic_tracking import check_fit

    sess = syn.session(fps=30.0, warmup_s=1.0, output=tmp_path / "out", port=None, lossless=True)
    stats = sess.run().summary()
    out = tmp_path / "out" / "synthetic"
    from micalib.tracking.outputs import read_frame

    rows = list(csvrows(out / "tracking.csv"))
    assert len(rows) == stats["tracked"] == len(list((out / "checkpoint").iterdir()))
    idx = [int(r["input_frame"]) for r in rows]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    fr = [read_frame(out / "checkpoint" / f"{k:05d}.frame") for k in range(len(rows))]
    seq = {key: (v[idx] if isinstance(v, np.ndarray) and v.ndim and len(v) == len(syn.seq["exp"]) else v)
           for key, v in syn.seq.items()}
    from micalib.tracking.model import TrackingFLAME

    model = TrackingFLAME(syn.flame, syn.identity, syn.emb, syn.lids, syn.iris)
    with open(syn.assets["flame_masks_path"], "rb") as f:
        face = pickle.load(f, encoding="latin1")["face"]
    check_fit(seq, fr, model, face)


def csvrows(path):
    import csv

    with open(path, newline="") as f:
        yield from csv.DictReader(f)


def _check_frame_schema(d: dict, size: int) -> None:
    """The README's schema, checked field by field (independently of micalib.live.messages)."""
    assert set(d) == {"type", "schema", "frame", "input_frame", "capture_time", "latency_ms", "face_found",
                      "expression", "jaw", "eyes", "eyelids", "camera", "crop", "dropped"}
    assert d["schema"] == 1 and isinstance(d["face_found"], bool) and isinstance(d["crop"], bool)
    assert len(d["expression"]) == 100 and len(d["jaw"]) == 3 and len(d["eyes"]) == 6 and len(d["eyelids"]) == 2
    r, t, k = (np.asarray(d["camera"][key], np.float64) for key in ("R", "t", "K"))
    assert r.shape == (3, 3) and t.shape == (3,) and k.shape == (3, 3)
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-5) and abs(np.linalg.det(r) - 1) < 1e-5
    assert k[0, 0] > 0 and k[1, 0] == k[2, 0] == k[2, 1] == 0 and k[2, 2] == 1 and 0 < k[0, 2] < size
    assert t[2] > 0 and d["latency_ms"] >= 0 and d["capture_time"] >= 0


def test_client_receives_every_message_in_order_with_the_schema(syn):
    """One client connected before the start: hello, camera, one frame message per tracked frame in
    order (with its JPEG crop), faces and the .glb answer, end; the camera matches the truth."""
    grey = np.full((512, 512, 3), 90, np.uint8)
    sess = syn.session(fps=20.0, warmup_s=0.5, send_crops=True, image=lambda k: grey, lossless=True)
    sess.source.n = 40
    client = RecordingClient(f"ws://127.0.0.1:{sess.server.port}/", [{"type": "get_faces"}], server=sess.server)
    th, res = run_in_thread(sess)
    th.join(300)
    msgs = client.messages()
    stats = res["stats"].summary()
    texts = [m for m in msgs if isinstance(m, dict)]
    assert texts[0]["type"] == "hello" and texts[0]["schema"] == 1 and texts[0]["image_size"] == [512, 512]
    assert texts[-1]["type"] == "end" and texts[-1]["reason"] == "source ended"
    faces = [m for m in texts if m["type"] == "faces"]
    assert len(faces) == 1 and np.array_equal(np.asarray(faces[0]["faces"]), syn.flame.faces.numpy())
    frames = [i for i, m in enumerate(msgs) if isinstance(m, dict) and m["type"] == "frame"]
    assert [msgs[i]["frame"] for i in frames] == list(range(stats["tracked"])) and stats["tracked"] > 0
    assert stats["warmup_frames"] + stats["tracked"] == 40  # lossless: every frame is one or the other
    cam = [m for m in texts if m["type"] == "camera"]
    assert len(cam) == 1 and texts.index(cam[0]) < texts.index(msgs[frames[0]])
    for i in frames:
        d = msgs[i]
        _check_frame_schema(d, 512)
        assert d["crop"] and isinstance(msgs[i + 1], bytes) and msgs[i + 1][:4] == b"JPEG"
        assert int.from_bytes(msgs[i + 1][4:8], "little") == d["frame"]
        img = cv2.imdecode(np.frombuffer(msgs[i + 1][8:], np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (512, 512, 3) and abs(float(img.mean()) - 90) < 2
        truth_t = syn.seq["t"][d["input_frame"]]
        assert np.abs(np.asarray(d["camera"]["t"]) - truth_t).max() < 0.03  # metres; the offline test: 2-3 %


def test_vanished_source_finishes_the_files_and_says_so(syn, tmp_path):
    sess = syn.session(fps=25.0, warmup_s=0.3, output=tmp_path / "out", fail_after=30)
    client = RecordingClient(f"ws://127.0.0.1:{sess.server.port}/", server=sess.server)
    with pytest.raises(MICAError, match="vanished after 30"):
        sess.run()
    msgs = client.messages()
    out = tmp_path / "out" / "synthetic"
    n = sess.stats.tracked
    assert n > 0 and len(list(csvrows(out / "tracking.csv"))) == n
    assert len(list((out / "checkpoint").iterdir())) == n and len(list((out / "mesh").iterdir())) == n
    # the same per-frame files as offline: a depth PNG per frame, its face nearer than 65 m and where the mesh is
    depths = sorted((out / "depth").iterdir())
    assert [p.name for p in depths] == [f"{k:05d}.png" for k in range(n)]
    d = cv2.imread(str(depths[-1]), cv2.IMREAD_UNCHANGED)
    assert d.dtype == np.uint16 and d.ndim == 2 and 0 < (d > 0).mean() < 1 and d.max() < 65535
    assert msgs[-1]["type"] == "end" and msgs[-1]["reason"] == "source failed"


def test_identity_from_the_warmup_frames_and_glb_on_request(syn):
    """Without --identity the identity function gets frames of the warm-up (images) once, and its
    result is the identity tracked with; a client's get_glb is answered by the glTF export's .glb
    (a `glb` message and one binary message; built once), a valid glTF 2.0 binary of the model."""
    grey = np.full((512, 512, 3), 90, np.uint8)
    sess = syn.session(fps=20.0, warmup_s=0.5, image=lambda k: grey)
    sess.source.n = 80
    sess.tracker.focal_px = 768.0
    calls = []

    def identity_fn(frames):
        calls.append([k for k, _ in frames])
        assert all(rgb.shape == (512, 512, 3) for _, rgb in frames)
        return syn.identity

    sess.tracker.identity, sess.tracker.identity_fn, sess.tracker.identity_source = None, identity_fn, "mica"
    built = []
    real_glb = sess.glb
    sess.glb = lambda tracker: built.append(np.array(tracker.identity)) or real_glb(tracker)
    url = f"ws://127.0.0.1:{sess.server.port}/"
    th, res = run_in_thread(sess)
    while not sess.tracker.tracking and th.is_alive():
        threading.Event().wait(0.05)
    client = RecordingClient(url, [{"type": "get_glb"}, {"type": "get_glb"}])
    th.join(300)
    msgs = client.messages()
    assert "error" not in res, res
    assert len(calls) == 1 and 3 <= len(calls[0]) <= 8 and calls[0] == sorted(calls[0])
    assert np.array_equal(sess.tracker.identity, syn.identity) and len(built) == 1
    # connected after the warm-up: the hello carries the fixed intrinsics every frame uses
    assert msgs[0]["type"] == "hello" and msgs[0]["state"] == "tracking"
    assert all(m["camera"]["K"] == msgs[0]["camera"]["K"] for m in msgs if isinstance(m, dict) and m["type"] == "frame")
    heads = [i for i, m in enumerate(msgs) if isinstance(m, dict) and m["type"] == "glb"]
    assert len(heads) == 2 and msgs[heads[0] + 1] == msgs[heads[1] + 1]  # built once, sent twice
    glb = msgs[heads[0] + 1]
    assert msgs[heads[0]]["bytes"] == len(glb) and glb[:4] == b"glTF"
    import struct

    magic, version, length = struct.unpack("<4sII", glb[:12])
    chunk_len, chunk_type = struct.unpack("<I4s", glb[12:20])
    doc = json.loads(glb[20:20 + chunk_len])
    assert version == 2 and length == len(glb) and chunk_type == b"JSON"
    mesh = doc["meshes"][0]
    assert len(mesh["primitives"][0]["targets"]) >= 102  # 100 expressions + 2 eyelids (+ pose correctives)
    assert doc["accessors"][mesh["primitives"][0]["attributes"]["POSITION"]]["count"] == syn.flame.n_vertices


def test_writer_full_drops_the_frame_before_tracking_and_every_tracked_frame_is_written(syn, tmp_path, monkeypatch):
    """The session asks the writer for room before tracking; a frame without room is dropped and
    counted (here every third frame: the policy, deterministically), every tracked frame written."""
    from micalib.live import writer as writer_mod

    asked = []

    def has_room(self):
        asked.append(1)
        return len(asked) % 3 != 0

    monkeypatch.setattr(writer_mod.LiveWriter, "has_room", has_room)
    sess = syn.session(fps=8.0, warmup_s=0.3, output=tmp_path / "out", port=None)
    sess.source.n = 24
    sess.tracker.focal_px = 768.0
    stats = sess.run().summary()
    assert stats["dropped_writer"] == len(asked) // 3 > 0
    _accounting(stats, 24)
    out = tmp_path / "out" / "synthetic"
    assert len(list(csvrows(out / "tracking.csv"))) == stats["tracked"] == len(list((out / "checkpoint").iterdir()))


def test_latest_slot_keeps_the_newest_frame_and_counts_the_rest():
    from micalib.live.sources import Captured, LatestSlot

    slot = LatestSlot()
    for k in range(5):
        slot.put(Captured(k, 0.0, 0.0))
    assert slot.get(0).index == 4 and slot.dropped == 4 and slot.produced == 5
    slot.drop()
    assert slot.dropped == 5 and slot.produced == 6 and slot.get(0) is None
    slot.put(Captured(6, 0.0, 0.0))
    slot.close()
    assert slot.get(0).index == 6 and slot.get(0) is None and slot.closed


def test_capture_url_source_reads_frames_then_reports_the_end_in_one_line(tmp_path):
    """A capture URL (here a file path, which OpenCV opens the same way): frames in order with
    increasing read times, then the source ends with one line saying after how many frames."""
    from micalib.live.sources import CaptureSource

    path = tmp_path / "cam.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (64, 48))
    for k in range(12):
        w.write(np.full((48, 64, 3), 10 * k, np.uint8))
    w.release()
    src = CaptureSource(str(path))
    src.lossless = True  # take every frame (the test reads slower than the file decodes)
    src.start()
    got = []
    while (item := src.get(timeout=30)) is not None:
        got.append(item)
    assert [c.index for c in got] == list(range(12))
    assert all(b.t_ref >= a.t_ref for a, b in zip(got, got[1:], strict=False)) and got[0].image.shape == (48, 64, 3)
    assert src.ended and src.error is not None and "stopped delivering frames after 12" in src.error


def test_a_diverged_fit_is_held_and_flagged_not_sent_as_nan(syn, monkeypatch):
    from micalib.tracking.fitting import LandmarkFitter

    real, calls = LandmarkFitter.fit_frame, []

    def fit_frame(self, *a, **kw):
        res = real(self, *a, **kw)
        calls.append(1)
        if len(calls) == 5:  # the 4th tracked frame (the 1st call is the warm-up's pose)
            res.state.exp = res.state.exp * np.nan
        return res

    monkeypatch.setattr(LandmarkFitter, "fit_frame", fit_frame)
    sess = syn.session(fps=20.0, warmup_s=0.2, lossless=True)
    sess.source.n = 12
    sess.tracker.focal_px = 768.0
    client = RecordingClient(f"ws://127.0.0.1:{sess.server.port}/", server=sess.server)
    stats = sess.run().summary()
    frames = [m for m in client.messages() if isinstance(m, dict) and m["type"] == "frame"]
    assert stats["faceless"] == 1 and len(frames) == stats["tracked"]
    held = [m for m in frames if not m["face_found"]]
    assert len(held) == 1 and held[0]["expression"] == frames[frames.index(held[0]) - 1]["expression"]
