"""A minimal glTF 2.0 binary (``.glb``) writer: one buffer, typed accessors, the container.

``GlbBuilder`` collects binary data as accessors (each in its own buffer view, 4-byte aligned, with
``min``/``max`` where the specification asks for them) and JSON objects; ``to_bytes(json)`` packs
the 12-byte header, the JSON chunk (padded with spaces) and the BIN chunk (padded with zeros), as
the specification's "GLB File Format Specification" section lays out. What the scene *means* is
``micalib/export/gltf.py``'s business; this module knows only the container.
"""
from __future__ import annotations

import json
import struct

import numpy as np

GLB_MAGIC = 0x46546C67  # "glTF"
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942
ARRAY_BUFFER = 34962
ELEMENT_ARRAY_BUFFER = 34963
# numpy dtype -> glTF componentType
COMPONENT = {np.dtype(np.float32): 5126, np.dtype(np.uint32): 5125, np.dtype(np.uint16): 5123,
             np.dtype(np.uint8): 5121}
TYPES = {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4", 16: "MAT4"}


class GlbBuilder:
    """Binary data and the ``bufferViews`` / ``accessors`` arrays of one glTF asset."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._length = 0
        self.buffer_views: list[dict] = []
        self.accessors: list[dict] = []

    def add(self, array: np.ndarray, *, target: int | None = None, minmax: bool = False,
            normalized: bool = False) -> int:
        """Append ``array`` (N,) or (N, C) as one accessor; returns its index.

        Args:
            target: ``ARRAY_BUFFER`` / ``ELEMENT_ARRAY_BUFFER`` for vertex data / indices, None for
                animation and skin data (which must have no target).
            minmax: write ``min`` / ``max`` (required for POSITION and animation inputs).
        """
        a = np.ascontiguousarray(array)
        if a.dtype not in COMPONENT:
            raise ValueError(f"unsupported dtype {a.dtype}")
        n = a.shape[0]
        comps = 1 if a.ndim == 1 else int(np.prod(a.shape[1:]))
        view = {"buffer": 0, "byteOffset": self._length, "byteLength": a.nbytes}
        if target is not None:
            view["target"] = target
        self._append(a.tobytes())
        self.buffer_views.append(view)
        acc = {"bufferView": len(self.buffer_views) - 1, "componentType": COMPONENT[a.dtype], "count": n,
               "type": TYPES[comps]}
        if normalized:
            acc["normalized"] = True
        if minmax:
            flat = a.reshape(n, comps)
            cast = float if a.dtype.kind == "f" else int
            acc["min"] = [cast(x) for x in flat.min(0)]
            acc["max"] = [cast(x) for x in flat.max(0)]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def _append(self, data: bytes) -> None:
        self._chunks.append(data)
        self._length += len(data)
        pad = (-self._length) % 4
        if pad:
            self._chunks.append(b"\0" * pad)
            self._length += pad

    @property
    def byte_length(self) -> int:
        return self._length

    def to_bytes(self, gltf: dict) -> bytes:
        """The ``.glb`` of ``gltf`` (its ``buffers`` / ``bufferViews`` / ``accessors`` are set here)."""
        doc = dict(gltf)
        doc["buffers"] = [{"byteLength": self._length}]
        doc["bufferViews"] = self.buffer_views
        doc["accessors"] = self.accessors
        text = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")
        text += b" " * ((-len(text)) % 4)
        binary = b"".join(self._chunks)
        total = 12 + 8 + len(text) + 8 + len(binary)
        return b"".join([struct.pack("<III", GLB_MAGIC, 2, total), struct.pack("<II", len(text), CHUNK_JSON), text,
                         struct.pack("<II", len(binary), CHUNK_BIN), binary])
