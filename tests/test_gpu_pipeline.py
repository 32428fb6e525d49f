"""The GPU pipeline's logic on the CPU (issue 17, section 2): batch detection with photos decoded in
worker processes gives the same files as photo by photo; the bounded queue; GPU busy time from
(stand-in) CUDA events; SCRFD over a batch with a tiny synthetic ONNX graph; which detectors count
as on the GPU. The GPU measurements themselves are in bench/gpu_all.sh."""
from __future__ import annotations

import csv
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from micalib.inference.batching import GpuBusy
from micalib.inference.demo_runner import DemoRunner, detector_on_gpu
from micalib.inference.scheduling import Schedule
from models.detectors import SCRFD
from tests.fakes import DET, TETRA, SlowDetector, SlowNetwork, make_scrfd_onnx, scrfd_outputs
from tests.photos import write_noise_photos


class BatchDetector(SlowDetector):
    """The stand-in detector with ``detect_batch`` (one call per batch, recorded)."""

    def __init__(self) -> None:
        super().__init__(0)
        self.batches: list[int] = []

    def detect_batch(self, images):
        self.batches.append(len(images))
        return [self.detect(im) for im in images]


@pytest.fixture()
def photos(tmp_path) -> Path:
    return write_noise_photos(tmp_path / "in", [f"img{i}.jpg" for i in range(9)], seed=3,
                              shapes=[(120 + 8 * i, 160) for i in range(9)], broken="broken.png")


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _rows(out: Path) -> list[dict]:
    with open(out / "meshes" / "summary.csv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("decode_processes", [0, 2])
def test_batch_detection_gives_the_files_of_photo_by_photo(tmp_path, photos, decode_processes):
    det = BatchDetector()
    runner = DemoRunner(SlowNetwork(0), det, TETRA, tmp_path / "gpu" / "meshes", tmp_path / "gpu" / "arcface",
                        render=False, batch_size=4, workers=2, batch_detect=True, decode_processes=decode_processes)
    assert runner.detects_in_batches()
    results = runner.run(photos)
    assert det.batches == [3, 4, 2]  # chunks of 4 of the 10 photos, one call each; broken.png (first) never reaches it
    assert runner.timings.seconds["detect"] > 0 and "read+detect" not in runner.timings.seconds
    one = DemoRunner(SlowNetwork(0), SlowDetector(0), TETRA, tmp_path / "one" / "meshes", tmp_path / "one" / "arcface",
                     render=False, batch_size=4, workers=1)
    assert not one.detects_in_batches()  # a CPU detector: photo by photo
    expected = one.run(photos)
    assert [(r.input, r.status, r.message) for r in results] == [(r.input, r.status, r.message) for r in expected]
    assert _files(tmp_path / "gpu") == _files(tmp_path / "one")
    assert _rows(tmp_path / "gpu") == _rows(tmp_path / "one")


def test_which_detectors_are_on_the_gpu(tmp_path):
    class OnCuda(BatchDetector):
        device = torch.device("cuda", 0)

    class CpuTorch(BatchDetector):
        device = torch.device("cpu")

    assert detector_on_gpu(OnCuda()) and not detector_on_gpu(CpuTorch()) and not detector_on_gpu(SlowDetector())
    out = tmp_path / "o"
    assert DemoRunner(SlowNetwork(0), OnCuda(), TETRA, out, out).detects_in_batches()  # default: on the GPU
    assert not DemoRunner(SlowNetwork(0), OnCuda(), TETRA, out, out, batch_detect=False).detects_in_batches()
    assert not DemoRunner(SlowNetwork(0), SlowDetector(), TETRA, out, out, batch_detect=True).detects_in_batches()


class _CountingPool:
    """An executor that runs nothing until asked: counts the futures submitted and not yet consumed."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.most = 0

    def submit(self, fn, *args):
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        f = Future()
        f.set_result(fn(*args))
        return f


def test_the_queue_in_front_of_the_network_is_bounded():
    pool = _CountingPool()
    seen = []
    for _args, result in Schedule(pool, ahead=3).imap(lambda x: x * 2, [(i,) for i in range(10)]):
        pool.in_flight -= 1
        seen.append(result)
    assert seen == [2 * i for i in range(10)] and pool.most == 3


class _FakeEvent:
    """A stand-in for ``torch.cuda.Event(enable_timing=True)``: the CPU clock at ``record()``."""

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _FakeEvent) -> float:
        return (end.t - self.t) * 1000.0


def test_gpu_busy_sums_the_event_spans_around_each_batch(tmp_path, photos):
    assert GpuBusy(torch.device("cpu")).seconds() is None and not GpuBusy(None).available  # no events on a CPU
    net = SlowNetwork(0.05)
    runner = DemoRunner(net, SlowDetector(0), TETRA, tmp_path / "m", tmp_path / "a", render=False, batch_size=4)
    runner.gpu_busy = GpuBusy(event=_FakeEvent)
    t0 = time.perf_counter()
    runner.run(photos)
    wall = time.perf_counter() - t0
    busy = runner.gpu_busy.seconds()
    assert len(net.batches) == 3 and len(runner.gpu_busy._spans) == 3  # one span per batch
    network = runner.timings.seconds["network"] + runner.timings.seconds["flame"]
    assert network <= busy <= wall and busy == pytest.approx(network, abs=0.02)


# ---------------------------------------------------------------------- SCRFD over a batch
def _make_batched_scrfd(path: Path) -> None:
    """SCRFD's layout with a dynamic batch axis; the scores scale with each photo's mean blob value
    (so photos differ), box and keypoint distances are the constants of tests/test_detectors.py."""
    consts = scrfd_outputs(batched=True)  # (1, anchors, C)
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in (8, 16, 32)]
    inits = [numpy_helper.from_array(a, name=f"c_{nm}") for a, nm in zip(consts, names, strict=True)]
    inits += [numpy_helper.from_array(np.array([-1, 1, 1], np.int64), name="shape3"),
              numpy_helper.from_array(np.array(0.5, np.float32), name="half"),
              numpy_helper.from_array(np.array(1.0, np.float32), name="one"),
              numpy_helper.from_array(np.array(0.0, np.float32), name="zero")]
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["mean4"], axes=[1, 2, 3], keepdims=1),
             helper.make_node("Reshape", ["mean4", "shape3"], ["mean"]),
             # factor = 1 + 0.5 * mean: blobs lie in [-1, 1], so the factor in [0.5, 1.5]
             helper.make_node("Mul", ["mean", "half"], ["m_half"]),
             helper.make_node("Add", ["m_half", "one"], ["factor"]),
             helper.make_node("Mul", ["mean", "zero"], ["batch_zero"])]
    for nm in names:
        op_in = ["factor"] if nm.startswith("score") else ["batch_zero"]
        nodes.append(helper.make_node("Mul" if nm.startswith("score") else "Add", [f"c_{nm}", *op_in], [nm]))
    graph = helper.make_graph(
        nodes, "tiny_scrfd_batched",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["B", 3, DET, DET])],
        [helper.make_tensor_value_info(nm, TensorProto.FLOAT, ["B", a.shape[1], a.shape[2]])
         for nm, a in zip(names, consts, strict=True)],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_scrfd_batch_equals_photo_by_photo(tmp_path, monkeypatch):
    _make_batched_scrfd(tmp_path / "b.onnx")
    det = SCRFD(tmp_path / "b.onnx", threshold=0.5, providers=["CPUExecutionProvider"])
    assert det.batched and not det.on_gpu
    photos = [np.full((64, 128, 3), 255, np.uint8), np.full((96, 48, 3), 60, np.uint8),
              np.full((64, 64, 3), 128, np.uint8)]
    alone = [det.detect(p) for p in photos]
    calls = []
    run = det.session.run
    monkeypatch.setattr(det.session, "run", lambda names, feed: calls.append(feed["input.1"].shape) or run(names, feed),
                        raising=False)
    batch = det.detect_batch(photos)
    assert calls == [(3, 3, DET, DET)]  # one call for the three photos
    assert [len(f) for f in batch] == [len(f) for f in alone] and [len(f) for f in alone] != [len(alone[0])] * 3
    for fa, fb in zip(alone, batch, strict=True):
        for a, b in zip(fa, fb, strict=True):
            np.testing.assert_allclose(a.box, b.box, atol=1e-4)
            np.testing.assert_allclose(a.kps, b.kps, atol=1e-4)
            assert a.score == pytest.approx(b.score, abs=1e-6)
    # hand-computed: the white 64x128 photo fills half of the 64x64 canvas (64x32), the other half is
    # black, so the blob mean is 0 and the factor 1; the grey 96x48 photo fills half with (60-127.5)/128
    mean_grey = ((60 - 127.5) / 128 + (0 - 127.5) / 128) / 2
    assert batch[0][0].score == pytest.approx(0.9, abs=1e-5) and len(batch[0]) == 2
    assert len(batch[1]) == 1 and batch[1][0].score == pytest.approx(0.9 * (1 + 0.5 * mean_grey), abs=1e-5)
    np.testing.assert_allclose(batch[0][0].box, [32, 0, 96, 96], atol=1e-4)  # det_scale 0.5, as the unbatched test


def test_scrfd_without_a_batch_axis_goes_photo_by_photo(tmp_path):

    make_scrfd_onnx(tmp_path / "tiny.onnx", batched=True)  # batch axis fixed to 1
    det = SCRFD(tmp_path / "tiny.onnx", det_size=(DET, DET), threshold=0.5, providers=["CPUExecutionProvider"])
    photos = [np.zeros((64, 128, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)]
    assert not det.batched
    got = det.detect_batch(photos)
    assert [[f.score for f in faces] for faces in got] == [[f.score for f in det.detect(p)] for p in photos]


# ---------------------------------------------------------------------- on a GPU (skipped without CUDA)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
SHARED_FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


@cuda
def test_mtcnn_on_cuda_finds_the_faces_of_the_cpu_path():
    """Issue 17's acceptance: the same faces as the CPU path, keypoints within 0.5 px, network
    inputs within 2/255 of their range (2 grey levels: 2/127.5 in (x - 127.5)/127.5 units)."""
    from models.detectors import MTCNN
    from models.face_prep import align_face
    from tests.photos import portrait_variants
    from utils.image_io import list_images, read_image

    photos = portrait_variants()
    if SHARED_FACES.is_dir():
        photos += [read_image(p) for p in list_images(SHARED_FACES)]
    cpu, gpu = MTCNN(), MTCNN(device="cuda")
    alone = [cpu.detect(p) for p in photos]
    batch = gpu.detect_batch(photos)
    assert [len(f) for f in batch] == [len(f) for f in alone]
    for photo, fa, fb in zip(photos, alone, batch, strict=True):
        for a, b in zip(fa, fb, strict=True):
            assert np.abs(a.kps - b.kps).max() <= 0.5
            assert np.abs(align_face(photo, a).input112 - align_face(photo, b).input112).max() <= 2 / 127.5 + 1e-6


@cuda
def test_gpu_busy_with_real_cuda_events():
    busy = GpuBusy(torch.device("cuda"))
    x = torch.randn(2048, 2048, device="cuda")
    with busy.span():
        for _ in range(10):
            x = x @ x / 2048
    assert busy.available and busy.seconds() > 0


def test_an_injected_pool_does_the_work_and_stays_open(tmp_path, photos):
    """The scheduling helper's pool is injectable: the runner prepares and writes in it, and leaves
    it to its owner."""
    from concurrent.futures import ThreadPoolExecutor

    det = SlowDetector(0)
    with ThreadPoolExecutor(2, thread_name_prefix="injected") as pool:
        runner = DemoRunner(SlowNetwork(0), det, TETRA, tmp_path / "inj" / "meshes", tmp_path / "inj" / "arcface",
                            render=False, batch_size=4, workers=2, pool=pool)
        runner.run(photos)
        assert pool.submit(lambda: 1).result() == 1  # still open
    assert {name.split("_")[0] for name, _, _ in det.clock.calls} == {"injected"}
    DemoRunner(SlowNetwork(0), SlowDetector(0), TETRA, tmp_path / "one" / "meshes", tmp_path / "one" / "arcface",
               render=False, batch_size=4, workers=1).run(photos)
    assert _files(tmp_path / "inj") == _files(tmp_path / "one")
