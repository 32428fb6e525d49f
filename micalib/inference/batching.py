"""Predict a batch, then write the files: the one loop of the demo (``micalib.inference.demo_runner``) and the
benchmark exports (``testing.now_export.ExportWriter``).

``BatchLoop.run(work, prepare, write, finish, fail)``: each entry of ``work`` is prepared (read,
detect, align: ``prepare(*entry) -> [Job, ...]`` or an exception value), scheduled by a
``micalib.inference.scheduling.Schedule``; the jobs are gathered into batches of ``batch_size``; per batch the
network runs once (``predictor.predict_identity``) and FLAME decodes once (``predictor.decode``);
then ``write(job, decoded, i)`` writes each face (spread over the pool when it is idle) and
``finish(job, error, decoded, i)`` does the caller's bookkeeping, in input order. A face whose
prediction is not finite (NaN or inf), or whose mesh is not head-sized (``implausible_mesh``), is not
written: ``finish`` gets the reason instead.
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import numpy as np
from tqdm import tqdm

from micalib.inference.scheduling import Schedule
from models.face_prep import AlignedFace

__all__ = ["BatchLoop", "GpuBusy", "Job", "StageTimer", "NON_FINITE_MESSAGE", "implausible_mesh"]

NON_FINITE_MESSAGE = ("the network predicted non-finite numbers (NaN or inf) for this face, nothing was "
                      "written; check the checkpoint (-m) and the photo")
# A head mesh's bounding-box diagonal (FLAME's template: ~330 mm); outside, the prediction is absurd
# though finite (a damaged checkpoint: issue 21, D21) and that face fails.
HEAD_DIAGONAL_MM = (50.0, 500.0)


def implausible_mesh(vertices_m: np.ndarray) -> Optional[str]:
    """Why the (V, 3) mesh in metres is not a head (its bounding-box diagonal outside
    ``HEAD_DIAGONAL_MM``), or None."""
    v = np.asarray(vertices_m, dtype=np.float64).reshape(-1, 3)
    diag = float(np.linalg.norm(v.max(0) - v.min(0))) * 1000.0
    low, high = HEAD_DIAGONAL_MM
    if low <= diag <= high:
        return None
    return (f"the predicted mesh is {diag:.3g} mm across (bounding-box diagonal), not a head ({low:.0f}-{high:.0f} mm); "
            "nothing was written; check the checkpoint (-m) and the photo")


@dataclass
class Job:
    """One aligned face waiting for the network: its output ``name``, the caller's ``item``."""

    name: str
    item: Any
    aligned: AlignedFace


class StageTimer:
    """Seconds spent per named stage: ``with timer("network"): ...`` (thread-safe; time spent in
    worker threads at once is summed, so the stages can add up to more than the wall time)."""

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            with self._lock:
                self.seconds[stage] += elapsed


class GpuBusy:
    """How long the GPU had work: CUDA events recorded around each batch's GPU calls (``span()``),
    summed when asked (``seconds()``, which waits for the GPU). On a CPU (or MPS) there are no events:
    ``span()`` does nothing and ``seconds()`` is None. ``event`` makes an event (``record()``,
    ``elapsed_time(other)`` in ms); default ``torch.cuda.Event(enable_timing=True)`` on CUDA."""

    def __init__(self, device=None, event: Optional[Callable[[], Any]] = None) -> None:
        if event is None and device is not None and getattr(device, "type", str(device)) == "cuda":
            import torch

            def event():
                return torch.cuda.Event(enable_timing=True)
        self._event = event
        self._spans: List[tuple] = []
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self._event is not None

    @contextlib.contextmanager
    def span(self) -> Iterator[None]:
        if self._event is None:
            yield
            return
        start, end = self._event(), self._event()
        start.record()
        try:
            yield
        finally:
            end.record()
            with self._lock:
                self._spans.append((start, end))

    def seconds(self) -> Optional[float]:
        """Sum of the recorded spans in seconds (overlapping spans count once each), None without events."""
        if self._event is None:
            return None
        self.synchronize()
        with self._lock:
            return sum(start.elapsed_time(end) for start, end in self._spans) / 1000.0

    def synchronize(self) -> None:
        if self._spans and hasattr(self._spans[-1][1], "synchronize"):
            self._spans[-1][1].synchronize()


class BatchLoop:
    """See the module docstring. ``predictor``: ``predict_identity(inputs) -> (B, n)`` and
    ``decode(identity) -> {identity, vertices, landmarks68, landmarks7}``."""

    def __init__(self, predictor, batch_size: int, schedule: Optional[Schedule] = None,
                 timings: Optional[StageTimer] = None, gpu_busy: Optional[GpuBusy] = None,
                 writes: Optional[Schedule] = None) -> None:
        self.predictor = predictor
        self.batch_size = max(1, int(batch_size))
        self.schedule = schedule or Schedule()
        self.writes = writes or self.schedule  # where the writes of a batch are spread (default: the same pool)
        self.timings = timings or StageTimer()
        self.gpu_busy = gpu_busy or GpuBusy()

    def run(self, work: Iterable[tuple], prepare: Callable[..., Any], write: Callable[[Job, dict, int], Optional[str]],
            finish: Callable[[Job, Optional[str], dict, int], None], fail: Optional[Callable[[tuple, Exception], None]],
            desc: str = "faces", total: Optional[int] = None) -> None:
        """Prepare, predict and write everything in ``work`` (see the module docstring); ``total``:
        the number of entries for the progress bar (default ``len(work)``)."""
        pending: List[Job] = []
        prepared = self.schedule.imap(prepare, work, wanted=lambda: self.batch_size - len(pending))
        total = len(work) if total is None else total
        for entry, jobs in tqdm(prepared, total=total, desc=desc, unit="img" if desc == "faces" else "it"):
            if isinstance(jobs, Exception):
                fail(entry, jobs)
                continue
            pending.extend(jobs)
            if len(pending) >= self.batch_size:
                self.flush(pending[: self.batch_size], write, finish)
                pending = pending[self.batch_size:]
        while pending:
            self.flush(pending[: self.batch_size], write, finish)
            pending = pending[self.batch_size:]

    def flush(self, jobs: List[Job], write: Callable, finish: Callable) -> None:
        """One network call and one decode for ``jobs``, then their writes and bookkeeping."""
        if not jobs:
            return
        batch = np.stack([j.aligned.input112 for j in jobs]).astype(np.float32)
        with self.gpu_busy.span():
            with self.timings("network"):
                identity = self.predictor.predict_identity(batch)
            with self.timings("flame"):
                decoded = self.predictor.decode(identity)
        decoded = {**decoded, "identity": identity}
        finite = np.isfinite(np.asarray(identity, dtype=np.float64).reshape(len(jobs), -1)).all(1)
        for key in ("vertices", "landmarks68", "landmarks7"):
            finite &= np.isfinite(np.asarray(decoded[key], dtype=np.float64).reshape(len(jobs), -1)).all(1)

        def write_one(i: int) -> Optional[str]:
            if not finite[i]:
                return NON_FINITE_MESSAGE
            return implausible_mesh(decoded["vertices"][i]) or write(jobs[i], decoded, i)

        errors = self.writes.map_idle(write_one, range(len(jobs)))  # with prefetch the pool is busy preparing
        for i, (job, error) in enumerate(zip(jobs, errors)):  # bookkeeping in input order
            finish(job, error, decoded, i)
