"""utils/timing.py StageTimer: wall seconds and the thread's own CPU seconds per stage."""
from __future__ import annotations

import threading
import time

from utils.timing import StageTimer


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_cpu_seconds_count_work_not_waiting() -> None:
    """A stage that sleeps costs wall time but (almost) no CPU time; one that computes costs CPU time
    no larger than its wall time (one thread); the oracle is what each stage does, not a timing."""
    timer = StageTimer()
    with timer("wait"):
        time.sleep(0.05)
    with timer("work"):
        _spin(0.02)
    assert timer.seconds["wait"] >= 0.05 and timer.cpu_seconds["wait"] < 0.02
    assert 0.02 <= timer.cpu_seconds["work"] <= timer.seconds["work"] + 1e-3


def test_cpu_seconds_summed_over_threads() -> None:
    """Two threads in the same stage at once: their CPU times add up (each thread's own)."""
    timer = StageTimer()

    def run() -> None:
        with timer("work"):
            _spin(0.02)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert timer.cpu_seconds["work"] >= 0.04
