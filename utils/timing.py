"""``StageTimer``: seconds spent per named stage, the one stage timer of the demo, the benchmark
exports and the tracker (their ``timings``, which bench/ reports)."""
from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Iterator

__all__ = ["StageTimer"]


class StageTimer:
    """Seconds spent per named stage: ``with timer("network"): ...`` or ``timer.add(stage, seconds)``
    (thread-safe; time spent in worker threads at once is summed, so the stages can add up to more
    than the wall time). ``seconds`` maps each stage to its wall-clock total, in the order first
    seen; ``cpu_seconds`` (stages timed with ``with``) to the CPU time of the thread that ran it
    (``time.thread_time``), which other processes on a shared machine do not inflate as they do the
    wall time (threads a stage starts itself, e.g. a network's OpenMP team, are not in it)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float, cpu_seconds: float | None = None) -> None:
        """Count ``seconds`` (and ``cpu_seconds`` when given) more for ``stage``."""
        with self._lock:
            self.seconds[stage] += float(seconds)
            if cpu_seconds is not None:
                self.cpu_seconds[stage] += float(cpu_seconds)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start, time.thread_time() - cpu)
