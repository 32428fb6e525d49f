"""The live stream's messages (schema ``SCHEMA`` = 1; README "Live tracking" documents it).

Text messages are JSON objects with a ``type``:
- ``hello`` (first message to every client): ``schema``, ``source``, ``fps`` (null for a camera that
  does not say), ``image_size`` [h, w] of the crop K refers to, ``n_vertices``, ``n_faces``,
  ``crops`` (whether crops are sent), ``glb`` (whether ``get_glb`` can be answered), ``state``
  ("warmup" or "tracking"), ``camera`` ({``K``, ``focal_px``} once the warm-up is over, else null).
- ``camera`` (once, when the warm-up ends): ``K``, ``focal_px``, ``focal_interval_px`` ([low, high]
  or null), ``warmup_frames``, ``identity`` ("given" or "mica").
- ``frame`` (one per tracked frame, in order): ``frame`` (tracked frame number, 0-based: the -o
  file number), ``input_frame`` (the source's frame number), ``capture_time`` (s since the source
  started), ``latency_ms``, ``face_found``, ``expression`` [100], ``jaw`` [3] and ``eyes`` [6] (left,
  right) as axis-angle radians, ``eyelids`` [2], ``camera`` {``R`` 3x3, ``t`` [3] metres, ``K`` 3x3
  crop pixels: x_pixel = pi(K (R X + t)) for a FLAME vertex X in metres, OpenCV pixel centres},
  ``crop`` (true: a ``JPEG`` binary message of this frame follows), ``dropped`` (frames dropped so
  far: replaced while the tracker was busy, warm-up included, or refused for a full writer).
- ``faces`` (answer to ``get_faces``): ``faces`` (F x 3 vertex indices).
- ``glb`` (answer to ``get_glb``): ``bytes``; the next binary message is the ``.glb`` (starts "glTF").
- ``error``: ``message``. ``end`` (last message): ``reason``, ``stats``.
Binary messages start with 4 ASCII bytes: ``glTF`` (the .glb itself), ``JPEG`` + uint32 frame
(little-endian) + the crop's JPEG, ``VERT`` + uint32 frame + float32 (V, 3) model-space vertices
in metres (sent to clients that sent ``{"type": "subscribe", "vertices": true}``).
Requests (client -> server, JSON text): ``get_faces``, ``get_glb``, ``subscribe``.
"""
from __future__ import annotations

import struct

import numpy as np

SCHEMA = 1


def _list(x, digits: int = 6) -> list:
    return np.round(np.asarray(x, np.float64), digits).tolist()


def camera_block(r: np.ndarray, t: np.ndarray, k: np.ndarray) -> dict:
    return {"R": _list(r, 7), "t": _list(t, 7), "K": _list(k, 4)}


def frame_message(frame: int, input_frame: int, capture_time: float, latency_ms: float, face_found: bool,
                  exp: np.ndarray, pose9: np.ndarray, eyelids: np.ndarray, r: np.ndarray, t: np.ndarray,
                  k: np.ndarray, crop: bool, dropped: int) -> dict:
    pose9 = np.asarray(pose9, np.float64).reshape(9)
    return {"type": "frame", "schema": SCHEMA, "frame": int(frame), "input_frame": int(input_frame),
            "capture_time": round(float(capture_time), 6), "latency_ms": round(float(latency_ms), 3),
            "face_found": bool(face_found), "expression": _list(exp, 5), "jaw": _list(pose9[:3]),
            "eyes": _list(pose9[3:]), "eyelids": _list(eyelids, 5), "camera": camera_block(r, t, k),
            "crop": bool(crop), "dropped": int(dropped)}


def hello_message(source: str, fps: float | None, image_size: tuple[int, int], n_vertices: int, n_faces: int,
                  crops: bool, glb: bool, camera: dict | None) -> dict:
    return {"type": "hello", "schema": SCHEMA, "source": source, "fps": None if fps is None else float(fps),
            "image_size": [int(image_size[0]), int(image_size[1])], "n_vertices": int(n_vertices),
            "n_faces": int(n_faces), "crops": bool(crops), "glb": bool(glb),
            "state": "warmup" if camera is None else "tracking", "camera": camera}


def tagged(tag: bytes, frame: int, payload: bytes) -> bytes:
    """A binary message: 4-byte tag, uint32 frame (little-endian), payload."""
    return tag + struct.pack("<I", int(frame) & 0xFFFFFFFF) + payload


def vertices_payload(frame: int, vertices: np.ndarray) -> bytes:
    return tagged(b"VERT", frame, np.ascontiguousarray(vertices, "<f4").tobytes())
