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
    than the wall time). ``seconds`` maps each stage to its total, in the order first seen."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        """Count ``seconds`` more for ``stage``."""
        with self._lock:
            self.seconds[stage] += float(seconds)

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)
