"""An evaluator of glTF 2.0 binaries written from the specification (Khronos glTF 2.0, sections
"GLB File Format Specification", "Accessors", "Transformations", "Skins", "Morph Targets",
"Animations" and "Cameras"), for the tests only: it never imports the exporter.

- ``Glb(data)``: JSON and binary chunk; ``accessor(i)`` as float64 (N, C) (normalized integers
  scaled as the specification's table says).
- ``local(node, t)``: the node's matrix, or T * R * S with the animated values at time ``t``
  (LINEAR: linear interpolation, spherical linear for rotations; STEP: the previous key;
  CUBICSPLINE: Hermite); ``world(t)``: global matrices down the scene graph.
- ``skinned(mesh_node, t)``: morphed positions (base + sum w_i target_i; weights from the node's
  animation, else the mesh's) skinned as sum_j w_j (global(joint_j) x inverseBind_j); the mesh node's
  own transform is ignored for skinned meshes, as the specification says.
- ``view_projection(camera_node, t)``: inverse of the camera node's global matrix and the
  perspective matrix of the specification (finite or infinite far plane).
"""
from __future__ import annotations

import json
import struct

import numpy as np

_COMP = {5120: (np.int8, 127.0), 5121: (np.uint8, 255.0), 5122: (np.int16, 32767.0), 5123: (np.uint16, 65535.0),
         5125: (np.uint32, None), 5126: (np.float32, None)}
_NCOMP = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}


def quat_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def slerp(a: np.ndarray, b: np.ndarray, s: float) -> np.ndarray:
    d = float(np.dot(a, b))
    if d < 0:
        b, d = -b, -d
    if d > 0.9995:
        q = a + s * (b - a)
        return q / np.linalg.norm(q)
    th = np.arccos(d)
    return (np.sin((1 - s) * th) * a + np.sin(s * th) * b) / np.sin(th)


class Glb:
    def __init__(self, data: bytes) -> None:
        magic, version, length = struct.unpack_from("<III", data, 0)
        assert magic == 0x46546C67 and version == 2 and length == len(data)
        jlen, jtype = struct.unpack_from("<II", data, 12)
        assert jtype == 0x4E4F534A
        self.json = json.loads(data[20:20 + jlen])
        off = 20 + jlen
        self.bin = b""
        if off < len(data):
            blen, btype = struct.unpack_from("<II", data, off)
            assert btype == 0x004E4942
            self.bin = data[off + 8: off + 8 + blen]

    def accessor(self, i: int) -> np.ndarray:
        acc = self.json["accessors"][i]
        view = self.json["bufferViews"][acc["bufferView"]]
        dtype, norm = _COMP[acc["componentType"]]
        n, c = acc["count"], _NCOMP[acc["type"]]
        item = np.dtype(dtype).itemsize * c
        stride = view.get("byteStride", item)
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        raw = np.frombuffer(self.bin, np.uint8, count=stride * (n - 1) + item, offset=start)
        rows = np.lib.stride_tricks.as_strided(raw, (n, item), (stride, 1))
        a = np.frombuffer(rows.copy().tobytes(), dtype).reshape(n, c).astype(np.float64)
        if acc.get("normalized") and norm is not None:
            a = np.maximum(a / norm, -1.0)
        return a

    # ------------------------------------------------------------------ animation
    def _sample(self, sampler: dict, path: str, t: float) -> np.ndarray:
        times = self.accessor(sampler["input"])[:, 0]
        out = self.accessor(sampler["output"])
        interp = sampler.get("interpolation", "LINEAR")
        per = out.size // len(times) // (3 if interp == "CUBICSPLINE" else 1)
        vals = out.reshape(len(times), -1)
        if t <= times[0]:
            k, s = 0, 0.0
        elif t >= times[-1]:
            k, s = len(times) - 1, 0.0
        else:
            k = int(np.searchsorted(times, t, side="right") - 1)
            s = (t - times[k]) / (times[k + 1] - times[k])
        if interp == "CUBICSPLINE":
            raise NotImplementedError("CUBICSPLINE")
        if interp == "STEP" or s == 0.0:
            return vals[k, :per] if interp != "CUBICSPLINE" else vals[k]
        a, b = vals[k], vals[k + 1]
        if path == "rotation":
            return slerp(a, b, s)
        return (1 - s) * a + s * b

    def animated(self, t: float | None, anim: int = 0) -> dict:
        """{(node, path): value} of animation ``anim`` at time t (empty when t is None)."""
        if t is None or not self.json.get("animations"):
            return {}
        a = self.json["animations"][anim]
        return {(c["target"]["node"], c["target"]["path"]): self._sample(a["samplers"][c["sampler"]],
                                                                         c["target"]["path"], t)
                for c in a["channels"]}

    def local(self, i: int, values: dict) -> np.ndarray:
        node = self.json["nodes"][i]
        if "matrix" in node:
            return np.asarray(node["matrix"], np.float64).reshape(4, 4).T  # column-major
        t = np.asarray(values.get((i, "translation"), node.get("translation", [0, 0, 0])), np.float64)
        r = np.asarray(values.get((i, "rotation"), node.get("rotation", [0, 0, 0, 1])), np.float64)
        s = np.asarray(values.get((i, "scale"), node.get("scale", [1, 1, 1])), np.float64)
        m = np.eye(4)
        m[:3, :3] = quat_matrix(r) @ np.diag(s)
        m[:3, 3] = t
        return m

    def world(self, t: float | None) -> dict[int, np.ndarray]:
        values = self.animated(t)
        out: dict[int, np.ndarray] = {}

        def visit(i: int, parent: np.ndarray) -> None:
            out[i] = parent @ self.local(i, values)
            for c in self.json["nodes"][i].get("children", []):
                visit(c, out[i])

        for i in self.json["scenes"][self.json.get("scene", 0)]["nodes"]:
            visit(i, np.eye(4))
        return out

    def morph_weights(self, node: int, t: float | None) -> np.ndarray:
        n = self.json["nodes"][node]
        mesh = self.json["meshes"][n["mesh"]]
        w = self.animated(t).get((node, "weights"))
        if w is None:
            w = n.get("weights", mesh.get("weights", [0.0] * len(mesh["primitives"][0].get("targets", []))))
        return np.asarray(w, np.float64)

    def skinned(self, node: int, t: float | None) -> np.ndarray:
        """(V, 3) world positions of the first primitive of ``node``'s mesh at time t."""
        n = self.json["nodes"][node]
        prim = self.json["meshes"][n["mesh"]]["primitives"][0]
        pos = self.accessor(prim["attributes"]["POSITION"])
        w = self.morph_weights(node, t)
        for wi, tgt in zip(w, prim.get("targets", [])):
            if wi != 0.0:
                pos = pos + wi * self.accessor(tgt["POSITION"])
        world = self.world(t)
        if "skin" not in n:
            m = world[node]
            return pos @ m[:3, :3].T + m[:3, 3]
        skin = self.json["skins"][n["skin"]]
        ibm = self.accessor(skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
        mats = np.stack([world[j] @ ibm[k] for k, j in enumerate(skin["joints"])])  # (J, 4, 4)
        out = np.zeros_like(pos)
        for s in range(8):
            key_j, key_w = f"JOINTS_{s}", f"WEIGHTS_{s}"
            if key_j not in prim["attributes"]:
                break
            jj = self.accessor(prim["attributes"][key_j]).astype(np.int64)
            ww = self.accessor(prim["attributes"][key_w])
            for c in range(4):
                m = mats[jj[:, c]]
                out += ww[:, c:c + 1] * (np.einsum("vab,vb->va", m[:, :3, :3], pos) + m[:, :3, 3])
        return out

    def view_projection(self, node: int, t: float | None) -> tuple[np.ndarray, np.ndarray]:
        """(view 4x4 = inverse global matrix, projection 4x4) of a camera node."""
        cam = self.json["cameras"][self.json["nodes"][node]["camera"]]
        p = cam["perspective"]
        a, y, n = p["aspectRatio"], p["yfov"], p["znear"]
        f = 1.0 / np.tan(0.5 * y)
        proj = np.zeros((4, 4))
        proj[0, 0], proj[1, 1], proj[3, 2] = f / a, f, -1.0
        if "zfar" in p:
            far = p["zfar"]
            proj[2, 2], proj[2, 3] = (far + n) / (n - far), 2 * far * n / (n - far)
        else:
            proj[2, 2], proj[2, 3] = -1.0, -2 * n
        return np.linalg.inv(self.world(t)[node]), proj


def ndc(points: np.ndarray, view: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """(N, 3) world points -> (N, 3) normalised device coordinates."""
    h = np.concatenate([points, np.ones((len(points), 1))], 1) @ (proj @ view).T
    return h[:, :3] / h[:, 3:4]
