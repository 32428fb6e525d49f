"""micalib/inference/demo_runner.py with stand-ins for the detector and the network (fast, no ../shared):
worker threads prepare and write a batch's images at the same time, never while the network runs
(without prefetch), lose nothing and give the same outputs as one image after the other."""
from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from micalib.inference.demo_runner import DemoRunner, default_workers
from models.detectors import Face
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


@pytest.fixture()
def photos(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        cv2.imwrite(str(folder / f"img{i}.png"), rng.integers(0, 256, (160, 160, 3), dtype=np.uint8))
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def _run(photos: Path, out: Path, **kwargs) -> tuple[list, SlowDetector, SlowNetwork]:
    det, net = SlowDetector(), SlowNetwork()
    runner = DemoRunner(net, det, TETRA, out / "meshes", out / "arcface", render=False, **kwargs)
    return runner.run(photos), det, net


def _overlaps(a: tuple, b: tuple) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def test_workers_prepare_a_batch_at_once_but_never_during_the_network(tmp_path, photos):
    results, det, net = _run(photos, tmp_path / "w", batch_size=4, workers=3)
    assert len({name for name, _, _ in det.clock.calls}) >= 2  # detection ran in several threads
    assert any(_overlaps(a, b) for a in det.clock.calls for b in det.clock.calls if a is not b)
    for d in det.clock.calls:  # ...but never at the same time as a network call
        for n in net.clock.calls:
            assert not _overlaps(d, n), (d, n)
    assert net.batches == [4, 3]
    status = {r.input: r.status for r in results}
    assert status.pop("broken.jpg") == "failed"
    assert set(status.values()) == {"ok"} and len(status) == 7


def test_workers_and_prefetch_give_the_same_outputs_as_one_after_the_other(tmp_path, photos):
    runs = {"serial": dict(workers=1), "workers": dict(workers=3), "prefetch": dict(workers=2, prefetch=3)}
    outputs = {}
    for label, kwargs in runs.items():
        results, _, _ = _run(photos, tmp_path / label, batch_size=3, **kwargs)
        rows = list(csv.DictReader(open(tmp_path / label / "meshes" / "summary.csv")))
        outputs[label] = (
            [(r["input"], r["status"], r["outputs"]) for r in rows],
            {p.stem: np.load(tmp_path / label / "meshes" / p.stem / "identity.npy") for p in photos.glob("*.png")},
            {p.stem: np.load(tmp_path / label / "arcface" / f"{p.stem}.npy") for p in photos.glob("*.png")},
        )
    ref_rows, ref_ids, ref_inputs = outputs["serial"]
    assert [r[0] for r in ref_rows] == sorted(p.name for p in photos.iterdir())  # input order kept
    for label in ("workers", "prefetch"):
        rows, ids, inputs = outputs[label]
        assert rows == ref_rows
        for stem in ref_ids:
            np.testing.assert_array_equal(ids[stem], ref_ids[stem])
            np.testing.assert_array_equal(inputs[stem], ref_inputs[stem])
    assert len(set(np.round([v[0] for v in ref_ids.values()], 6))) == 7  # the codes do depend on the photo


def test_batch_size_one_runs_one_image_at_a_time(tmp_path, photos):
    _, det, net = _run(photos, tmp_path / "b1", batch_size=1, workers=4)
    calls = sorted(det.clock.calls + net.clock.calls, key=lambda c: c[1])
    for a, b in zip(calls, calls[1:]):
        assert a[2] <= b[1]  # strictly one after the other: nothing to do at the same time
    assert net.batches == [1] * 7


def test_default_workers_is_the_usable_cores_at_most_8():
    n = default_workers()
    assert 1 <= n <= 8
    try:
        import os

        assert n == min(8, len(os.sched_getaffinity(0)))
    except AttributeError:
        pass


@pytest.mark.parametrize("workers", [1, 3])
def test_a_failed_write_fails_only_its_image(tmp_path, photos, workers):
    out = tmp_path / f"w{workers}"
    (out / "meshes").mkdir(parents=True)
    (out / "meshes" / "img3").write_text("a file where the output folder should go")
    results, _, _ = _run(photos, out, batch_size=4, workers=workers)
    status = {r.input: (r.status, r.message) for r in results}
    assert status["img3.png"][0] == "failed" and "could not write outputs" in status["img3.png"][1]
    ok = [name for name, (st, _) in status.items() if st == "ok"]
    assert sorted(ok) == [f"img{i}.png" for i in range(7) if i != 3]
    for name in ok:
        assert (out / "meshes" / Path(name).stem / "mesh.obj").is_file()


def test_worker_threads_run_torch_on_one_core_and_the_network_keeps_all(tmp_path, photos):
    import torch

    if "ATen parallel backend: OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("torch's thread count is per thread only with the OpenMP backend")
    seen: dict[str, set] = {"detect": set(), "network": set()}

    class CountingDetector(SlowDetector):
        def detect(self, image):
            seen["detect"].add((threading.current_thread().name, torch.get_num_threads()))
            return super().detect(image)

    class CountingNetwork(SlowNetwork):
        def predict_identity(self, batch):
            seen["network"].add(torch.get_num_threads())
            return super().predict_identity(batch)

    before = torch.get_num_threads()
    torch.set_num_threads(2)  # so that "one" is distinguishable even on a one-core machine
    try:
        runner = DemoRunner(CountingNetwork(), CountingDetector(), TETRA, tmp_path / "m", tmp_path / "a",
                            render=False, batch_size=4, workers=3)
        runner.run(photos)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert {t for name, t in seen["detect"]} == {1}
    assert all(name.startswith("demo-worker") for name, _ in seen["detect"])
    assert seen["network"] == {2}


def test_rerun_skips_finished_images_but_redoes_one_with_an_empty_output(tmp_path, photos):
    _run(photos, tmp_path / "r", batch_size=3, workers=2)
    (tmp_path / "r" / "meshes" / "img2" / "mesh.obj").write_bytes(b"")  # as a power failure can leave it
    results, det, _ = _run(photos, tmp_path / "r", batch_size=3, workers=2)
    status = {r.input: r.status for r in results}
    assert status.pop("img2.png") == "ok" and status.pop("broken.jpg") == "failed"
    assert set(status.values()) == {"done"}
    assert len(det.clock.calls) == 1  # only img2 was detected again
    assert (tmp_path / "r" / "meshes" / "img2" / "mesh.obj").stat().st_size > 0


def test_the_run_records_how_the_network_ran(tmp_path, photos):
    net = SlowNetwork(0.0)
    net.plan = {"backend": "stand-in", "precision": "float32", "channels_last": False, "batch_size": 16}
    DemoRunner(net, SlowDetector(0.0), TETRA, tmp_path / "meshes", tmp_path / "arcface", render=False).run(photos)
    assert json.loads((tmp_path / "meshes" / ".mica" / "encoder.json").read_text()) == net.plan
