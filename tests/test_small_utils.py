"""utils/timing (StageTimer), utils/arrays (to_numpy), utils/log_setup (setup_logging)."""
from __future__ import annotations

import threading
import time

import numpy as np
import torch
from loguru import logger

from utils.arrays import to_numpy
from utils.log_setup import setup_logging
from utils.timing import StageTimer


def test_stage_timer_sums_per_stage_across_threads():
    timer = StageTimer()
    timer.add("write", 0.25)

    def work():
        for _ in range(100):
            timer.add("write", 0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert timer.seconds["write"] == 0.25 + 4 * 100 * 0.5  # exact in binary floating point: no lost update
    before = time.perf_counter()
    with timer("sleep"):
        time.sleep(0.01)
    assert 0.01 <= timer.seconds["sleep"] <= time.perf_counter() - before
    assert list(timer.seconds) == ["write", "sleep"]


def test_to_numpy_from_tensor_with_grad_and_from_lists():
    t = torch.arange(6, dtype=torch.float64, requires_grad=True).reshape(2, 3) * 1.5
    a = to_numpy(t.t())
    assert a.dtype == np.float32 and a.flags.c_contiguous
    np.testing.assert_array_equal(a, (np.arange(6).reshape(2, 3) * 1.5).T)
    b = to_numpy([[1, 2], [3, 4]], dtype=np.int64)
    assert b.dtype == np.int64 and b.tolist() == [[1, 2], [3, 4]]
    c = np.zeros((2, 2), np.float32)
    assert to_numpy(c) is c


def test_setup_logging_writes_level_and_message_and_the_file(tmp_path, capsys):
    log = tmp_path / "logs" / "run.log"
    try:
        setup_logging("INFO", log_file=log)
        logger.debug("only in the file")
        logger.error("one line")
        err = capsys.readouterr().err
    finally:
        logger.remove()
        logger.add(__import__("sys").stderr)
    assert err == "ERROR    one line\n"
    text = log.read_text()
    assert "only in the file" in text and "one line" in text
