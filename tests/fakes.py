"""Stand-ins the tests share: a detector and a network that sleep like real ones (``SlowDetector``,
``SlowNetwork``, ``ThreeFaces``; ``fake_runner`` builds a ``DemoRunner`` on them, ``TETRA`` is their
mesh), a tiny SCRFD ONNX graph with hand-set outputs (``make_scrfd_onnx``) and a UV sphere mesh."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from micalib.inference.demo_runner import DemoRunner
from models.detectors import Face
from tests.numerics import reorder_bound, ulp32
from utils.alignment import ARCFACE_TEMPLATE

TETRA = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])


class Clock:
    """(thread name, start, end) of every call, recorded thread-safely."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()

    def record(self, start: float) -> None:
        with self._lock:
            self.calls.append((threading.current_thread().name, start, time.perf_counter()))


class SlowDetector:
    """One face at the ArcFace template positions (scaled to the photo); sleeps like a real one."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds = seconds
        self.clock = Clock()

    def detect(self, image: np.ndarray) -> list[Face]:
        start = time.perf_counter()
        time.sleep(self.seconds)
        s = image.shape[0] / 112.0
        kps = ARCFACE_TEMPLATE.astype(np.float32) * s
        box = np.array([0, 0, image.shape[1] - 1, image.shape[0] - 1], np.float32)
        self.clock.record(start)
        return [Face(box, kps, 0.99)]


class SlowNetwork:
    """predict_identity: a code that depends on each input's pixels; decode: a tetrahedron per code."""

    def __init__(self, seconds: float = 0.03) -> None:
        self.seconds = seconds
        self.clock = Clock()
        self.batches: list[int] = []

    def predict_identity(self, batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        time.sleep(self.seconds)
        self.batches.append(len(batch))
        codes = np.stack([batch.reshape(len(batch), -1).mean(1), batch.reshape(len(batch), -1).std(1)], 1)
        self.clock.record(start)
        return np.repeat(codes, 150, axis=1).astype(np.float32)  # (B, 300)

    def decode(self, identity: np.ndarray) -> dict:
        base = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32) * 0.1
        verts = base[None] * (1 + identity[:, :1, None])
        return {"vertices": verts, "landmarks68": np.repeat(verts[:, :1], 68, 1), "landmarks7": verts[:, [0, 1, 2, 3, 0, 1, 2]]}


class ThreeFaces(SlowDetector):
    """Three faces side by side: the ArcFace template scaled into each third of the photo."""

    def detect(self, image):
        third = image.shape[1] / 3
        faces = []
        for k in range(3):
            kps = ARCFACE_TEMPLATE.astype(np.float32) * (third / 112.0) + np.float32([k * third, image.shape[0] / 3])
            box = np.float32([k * third, image.shape[0] / 3, (k + 1) * third, image.shape[0] * 2 / 3])
            faces.append(Face(box, kps, 0.9 - 0.1 * k))
        return faces


def fake_runner(out: Path, net=None, det=None, **kwargs) -> DemoRunner:
    kwargs.setdefault("render", False)
    return DemoRunner(net or SlowNetwork(0), det or SlowDetector(0), TETRA, out / "meshes", out / "arcface", **kwargs)


DET = 64  # input side of the tiny SCRFD graph: grids 8x8, 4x4, 2x2 (x 2 anchors)


def scrfd_outputs(batched: bool) -> list[np.ndarray]:
    """Raw SCRFD outputs (scores x3, box distances x3, keypoint distances x3) with a few set anchors."""
    n = {s: (DET // s) ** 2 * 2 for s in (8, 16, 32)}
    sc = {s: np.zeros((n[s], 1), np.float32) for s in n}
    bb = {s: np.zeros((n[s], 4), np.float32) for s in n}
    kp = {s: np.zeros((n[s], 10), np.float32) for s in n}
    # A: stride 8, cell (x=3, y=2), anchor 1 -> index (2*8+3)*2+1 = 39, centre (24, 16)
    sc[8][39] = 0.9
    bb[8][39] = [1, 2, 3, 4]
    kp[8][39] = [0.5, 0.25, 1, 0.25, 0.75, 1, 0.5, 2, 1, 2]
    # B: same cell, anchor 0, nearly the same box, lower score -> removed by NMS
    sc[8][38] = 0.8
    bb[8][38] = [1, 2, 3, 4.5]
    # C: stride 32, cell (1, 1), anchor 0 -> index 6, centre (32, 32); small box, IoU with A ~0.17 -> kept
    sc[32][6] = 0.7
    bb[32][6] = [0.25, 0.25, 0.25, 0.25]
    # D: below the score threshold
    sc[16][5] = 0.3
    bb[16][5] = [1, 1, 1, 1]
    outs = [sc[8], sc[16], sc[32], bb[8], bb[16], bb[32], kp[8], kp[16], kp[32]]
    return [o[None] for o in outs] if batched else outs


def make_scrfd_onnx(path: Path, batched: bool = False, fixed: bool = False) -> list[np.ndarray]:
    """A 9-output ONNX graph with SCRFD's input/output layout that emits ``scrfd_outputs``."""
    outs = scrfd_outputs(batched)
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    inits = [numpy_helper.from_array(a, name=f"c_{nm}") for a, nm in zip(outs, names, strict=True)]
    nodes = [helper.make_node("Identity", [f"c_{nm}"], [nm]) for nm in names]
    graph = helper.make_graph(
        nodes, "tiny_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, DET, DET] if fixed else [1, 3, "h", "w"])],
        [helper.make_tensor_value_info(nm, TensorProto.FLOAT, list(a.shape)) for nm, a in zip(names, outs, strict=True)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return outs


def uv_sphere(n_lat: int = 12, n_lon: int = 16):
    """Unit sphere, counter-clockwise triangles seen from outside."""
    verts = [[0.0, 0.0, 1.0]]
    for i in range(1, n_lat):
        th = np.pi * i / n_lat
        for j in range(n_lon):
            ph = 2 * np.pi * j / n_lon
            verts.append([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)])
    verts.append([0.0, 0.0, -1.0])
    faces = []
    ring = lambda i, j: 1 + (i - 1) * n_lon + j % n_lon  # noqa: E731
    for j in range(n_lon):
        faces.append([0, ring(1, j), ring(1, j + 1)])
        faces.append([len(verts) - 1, ring(n_lat - 1, j + 1), ring(n_lat - 1, j)])
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            faces.append([ring(i, j), ring(i + 1, j), ring(i + 1, j + 1)])
            faces.append([ring(i, j), ring(i + 1, j + 1), ring(i, j + 1)])
    return torch.tensor(verts, dtype=torch.float64), torch.tensor(faces)


class TinyNetwork:
    """``predict_identity``: a strided convolution, ReLU and a linear layer (torch, fixed seed);
    ``decode``: a tetrahedron moved by a linear shape basis, in metres."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.conv = torch.randn(8, 3, 5, 5, generator=g) * 0.2
        self.linear = torch.randn(8 * 27 * 27, 300, generator=g) * 0.01
        self.basis = np.random.default_rng(1).normal(0, 0.002, (300, 12)).astype(np.float32)
        self.calls: list[int] = []

    def predict_identity(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        x = torch.nn.functional.conv2d(torch.from_numpy(np.ascontiguousarray(batch)), self.conv, stride=4).relu()
        return torch.tanh(x.flatten(1) @ self.linear).numpy()

    BASE = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32) * 0.1

    def decode(self, identity: np.ndarray) -> dict:
        verts = self.BASE[None] + (np.asarray(identity, np.float32) @ self.basis).reshape(-1, 4, 3)
        return {"vertices": verts, "landmarks68": np.repeat(verts[:, :1], 68, 1),
                "landmarks7": verts[:, [0, 1, 2, 3, 0, 1, 2]]}

    def bounds(self, x: np.ndarray, identity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """How far another run's (batch, threads, CPU) float32 ``identity (300,)`` and ``vertices
        (4, 3)`` (metres) of the network input ``x (3, 112, 112)`` may lie from these, by
        tests/numerics.py: the convolution's 75-term sums (worst case), the linear layer's 5832-term
        sums (probabilistic: its random weights cancel, the worst case would allow 0.1; the
        convolution's errors carried through it as independent bounded terms, Hoeffding), tanh
        (1-Lipschitz; its vectorised and scalar versions each within 2 ulp), then the decode's
        301-term sums (worst case) with the identity's own bound propagated through |basis|."""
        xd = torch.from_numpy(np.asarray(x, np.float64))[None]
        conv, conv_abs = self.conv.double(), self.conv.double().abs()
        y = torch.nn.functional.conv2d(xd, conv, stride=4).relu().flatten(1)[0].numpy()
        e_conv = reorder_bound(torch.nn.functional.conv2d(xd.abs(), conv_abs, stride=4).flatten(1)[0].numpy(), 75)
        w_abs = self.linear.double().abs().numpy()
        e_in = 10 * np.sqrt(e_conv ** 2 @ w_abs ** 2)  # independent, bounded input errors: Hoeffding, lam = 10
        e_id = reorder_bound(np.abs(y) @ w_abs, y.size, probabilistic=True) + e_in + 4 * ulp32(identity)
        b_abs = np.abs(self.basis.astype(np.float64))
        abs_v = np.abs(self.BASE).astype(np.float64).ravel() + np.abs(identity).astype(np.float64) @ b_abs
        e_v = e_id @ b_abs + reorder_bound(abs_v, 301)
        return e_id, e_v.reshape(4, 3)
