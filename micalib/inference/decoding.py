"""Decoding photos in worker processes (the GPU pipeline of ``micalib.inference.demo_runner``).

Threads decoding JPEGs hold each other up on the GIL; processes do not (bench/README.md, Demo).
The functions here are what a worker process runs: this module imports only the image reader, so a
spawned worker starts in well under a second (no torch).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from utils.errors import MICAError
from utils.image_io import read_image

__all__ = ["decoder_init", "read_or_error"]


def decoder_init() -> None:
    """Worker process initializer: one OpenCV thread (the processes share the cores out)."""
    import cv2

    cv2.setNumThreads(1)


def read_or_error(path: Path) -> np.ndarray | MICAError:
    """``read_image(path)``, or its one-line error as a value (errors cross the process boundary as
    results, so one bad photo never stops the pool)."""
    try:
        return read_image(path)
    except (MICAError, OSError, ValueError) as e:
        return e if isinstance(e, MICAError) else MICAError(f"{path}: {e}")
