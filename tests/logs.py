"""Capturing what loguru logs, for tests that check a warning is (or is not) given."""
from __future__ import annotations

from collections.abc import Callable

from loguru import logger


def warnings_during(fn: Callable[[], object]) -> list[str]:
    """Run ``fn`` and return the messages of the warnings (and worse) it logged."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    try:
        fn()
    finally:
        logger.remove(sink)
    return lines
