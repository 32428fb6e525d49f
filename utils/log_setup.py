"""The entry scripts' one logger set-up: loguru to stderr as ``LEVEL    message`` (no time stamps or
code locations: the one-line errors of ``utils.errors.run_main`` read as plain sentences), plus an
optional log file with loguru's full format."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from loguru import logger

__all__ = ["CONSOLE_FORMAT", "setup_logging"]

CONSOLE_FORMAT = "<level>{level: <8}</level> {message}"


def setup_logging(level: str = "INFO", log_file: str | os.PathLike | None = None,
                  file_level: str = "DEBUG") -> None:
    """Replace loguru's handlers: stderr at ``level`` in ``CONSOLE_FORMAT``; with ``log_file``, also
    that file (its folder created) at ``file_level``."""
    logger.remove()
    logger.add(sys.stderr, format=CONSOLE_FORMAT, level=level)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        logger.add(str(log_file), level=file_level)
