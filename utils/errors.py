"""User-facing errors and the command-line wrapper that prints them as one line.

Anything a user can cause (missing file, bad checkpoint, unusable image, bad option) raises
``MICAError`` (or ``FileNotFoundError`` / ``ValueError`` with a full message). Entry scripts wrap
``main`` in ``run_main`` so such errors end the program with one clear line and exit code 1, never
a traceback. Internal bugs still show their traceback.

Failed writes the user can fix (disk full, read-only file system, no permission, a file where a
folder should be) become ``OutputError`` in ``utils.io``'s writers, with ``os_error_message`` as the
one line; ``run_main`` formats such an ``OSError`` the same way when it comes from anywhere else.
"""
from __future__ import annotations

import contextlib
import errno as errno_codes
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Optional, Union

from loguru import logger


class MICAError(RuntimeError):
    """An error caused by the user's input or files; its message says what and how to fix it."""


class OutputError(MICAError, OSError):
    """A write failed for a reason the user can fix; ``errno`` is the original error's. Also an
    ``OSError``, so code that catches ``OSError`` around a write (one failed item of a batch) still
    does."""

    def __init__(self, message: str, errno: Optional[int] = None):
        super().__init__(message)
        self.errno = errno


USER_ERRORS = (MICAError, FileNotFoundError, ValueError, PermissionError, IsADirectoryError)

# OSErrors of file system operations that the user can fix, and how.
_REASONS = {
    errno_codes.ENOSPC: ("no space left on the device", "free some space or choose another output folder"),
    errno_codes.EDQUOT: ("disk quota exceeded", "free some space or choose another output folder"),
    errno_codes.EFBIG: ("the file is too large for this file system", "choose another output folder"),
    errno_codes.EROFS: ("the file system is read-only", "choose a writable output folder"),
    errno_codes.EACCES: ("permission denied", "fix the permissions, or choose a folder you may write to"),
    errno_codes.EPERM: ("operation not permitted", "fix the permissions, or choose a folder you may write to"),
    errno_codes.ENOTDIR: ("a part of the path is a file, not a folder", "choose another output path"),
    errno_codes.EEXIST: ("it is a file, not a folder", "choose another path, or move that file"),
    errno_codes.EISDIR: ("it is a folder", "choose a file name, not a folder"),
    errno_codes.ENAMETOOLONG: ("the name is too long", "choose a shorter output path"),
}
WRITE_ERRNOS = frozenset(_REASONS)


def _file_in_the_way(path: Union[str, os.PathLike]) -> Optional[str]:
    """The path itself or its nearest parent that exists and is not a folder, if any."""
    p = os.path.abspath(os.fspath(path))
    while True:
        if os.path.lexists(p) and not os.path.isdir(p):
            return p
        parent = os.path.dirname(p)
        if parent == p:
            return None
        p = parent


def os_error_message(e: OSError, path: Union[str, os.PathLike, None] = None, action: str = "write") -> str:
    """One line for an ``OSError`` from a file system operation on ``path`` (default: the error's
    own file name): what failed, why, and the fix when the cause is in ``WRITE_ERRNOS``."""
    target = path if path is not None else (e.filename if e.filename is not None else "a file")
    reason, fix = _REASONS.get(e.errno, (e.strerror or str(e), ""))
    if e.errno in (errno_codes.EEXIST, errno_codes.ENOTDIR) and path is not None:
        culprit = _file_in_the_way(e.filename if e.filename is not None else path) or _file_in_the_way(path)
        if culprit is not None and culprit != os.path.abspath(os.fspath(path)):
            reason = f"{culprit} is a file, not a folder"
    line = f"cannot {action} {target}: {reason}" + (f"; {fix}" if fix else "")
    return " ".join(line.split())


def check_range(name: str, value, low, high, low_open: bool = False, hint: str = "") -> None:
    """Raise a one-line ``ValueError`` unless ``low <= value <= high`` (``low < value`` with
    ``low_open``); ``name`` is the flag or config key, ``hint`` an optional explanation."""
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        interval = f"({low}, {high}]" if low_open else f"{low}..{high}"
        raise ValueError(f"{name} must be in {interval}, not {value}" + (f" ({hint})" if hint else ""))


def run_main(main: Callable[[], int | None]) -> None:
    """Run ``main`` and exit with its return code; user errors, and ``OSError``s of ``WRITE_ERRNOS``
    from anywhere, print one line and exit 1; Ctrl-C exits 130."""
    try:
        code = main()
    except OSError as e:
        if not isinstance(e, MICAError) and e.errno in WRITE_ERRNOS:
            logger.error(os_error_message(e, action="access"))
        elif isinstance(e, USER_ERRORS):
            logger.error(f"{e}")
        else:
            raise
        sys.exit(1)
    except USER_ERRORS as e:
        logger.error(f"{e}")
        sys.exit(1)
    except KeyboardInterrupt:
        logger.error("interrupted")
        sys.exit(130)
    sys.exit(int(code or 0))


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a job scheduler, a lost session's cleanup) stops the command like Ctrl-C:
    a ``KeyboardInterrupt`` in the main thread, so the command finishes what it must write (the
    demo's summary with ``pending`` rows) and ``run_main`` exits with 130. Outside the main thread
    (where no handler can be set) it does nothing; the previous handler is restored on exit."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
