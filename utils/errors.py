"""User-facing errors and the command-line wrapper that prints them as one line.

Anything a user can cause (missing file, bad checkpoint, unusable image, bad option) raises
``MICAError`` (or ``FileNotFoundError`` / ``ValueError`` with a full message). Entry scripts wrap
``main`` in ``run_main`` so such errors end the program with one clear line and exit code 1, never
a traceback. Internal bugs still show their traceback.
"""
from __future__ import annotations

import sys
from typing import Callable

from loguru import logger


class MICAError(RuntimeError):
    """An error caused by the user's input or files; its message says what and how to fix it."""


USER_ERRORS = (MICAError, FileNotFoundError, ValueError, PermissionError, IsADirectoryError)


def run_main(main: Callable[[], int | None]) -> None:
    """Run ``main`` and exit with its return code; user errors print one line and exit 1."""
    try:
        code = main()
    except USER_ERRORS as e:
        logger.error(f"{e}")
        sys.exit(1)
    except KeyboardInterrupt:
        logger.error("interrupted")
        sys.exit(130)
    sys.exit(int(code or 0))
