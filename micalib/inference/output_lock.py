"""One demo run per output folder: ``OUTPUT/.mica/lock``, holding the owner's host and PID (and one
track.py run per ``OUT/NAME``: ``OUT/NAME/.track_lock``, ``micalib.tracking.layout.TrackLayout.lock``).

The lock is an ``flock`` on that file, so the kernel releases it when its owner dies, however it
dies (``kill -9`` included): a dead owner's lock is simply taken over. Where ``flock`` is not
available (Windows, some network file systems) the file's host and PID decide: a lock of this host
whose PID is dead is taken over; a live one, or one from another host, refuses the run.

Taking the lock again in the same process nests (``demo.py`` holds it from the start, the runner
takes it again). The shards of one sharded run do not take it: each writes only its own records
(``DemoRunner(lock=False, summary=False)``), and the summary is rebuilt from the records.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

from utils.errors import MICAError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".mica/lock"

_held: Dict[Path, Tuple[int, int]] = {}  # lock path -> (descriptor, depth), this process
_guard = threading.Lock()


def _owner_text(owner: Optional[dict]) -> str:
    if not owner:
        return "another process"
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started', '?')}"


def _read_owner(fd: int) -> Optional[dict]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode("utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _flock(fd: int) -> Optional[bool]:
    """True: locked; False: held by another process; None: flock unavailable here."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
            return None
        raise


def _refusal(output_dir: Path, owner: Optional[dict], path: Path, what: str) -> MICAError:
    return MICAError(f"{output_dir} is in use by another {what} ({_owner_text(owner)}); wait for it to "
                     f"finish or pass another -o (if no such run exists, delete {path})")


def _acquire(output_dir: Path, path: Path, what: str, shown: Path) -> int:
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(5):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            locked = _flock(fd)
            if locked is False:
                raise _refusal(output_dir, _read_owner(fd), shown, what)
            if locked is None:  # no flock: judge the owner by host and PID
                owner = _read_owner(fd)
                if owner and (owner.get("host") != me["host"] or _pid_alive(int(owner.get("pid", 0)))) \
                        and owner.get("pid") != me["pid"]:
                    raise _refusal(output_dir, owner, shown, what)
            # the file may have been removed (by its previous owner's release) while we waited
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, json.dumps(me).encode("utf-8"))
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise _refusal(output_dir, None, shown, what)


def _release(path: Path, fd: int) -> None:
    try:
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            path.unlink()  # while still holding it: a waiter then sees the file is gone and retries
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def output_lock(output_dir: Path, enabled: bool = True, lock_file: str = LOCK_FILE,
                what: str = "demo run") -> Iterator[None]:
    """Hold ``OUTPUT/.mica/lock`` (``OUTPUT/lock_file``) for the duration (see the module docstring);
    ``what`` names the other run in the refusal (track.py: ``OUT/NAME/.track_lock``, "track.py run").

    Raises:
        MICAError: another live run holds it (one line: its PID and host, and the fix).
    """
    if not enabled:
        yield
        return
    output_dir = Path(output_dir)
    path = (output_dir / lock_file).absolute()
    with _guard:
        if path in _held:
            fd, depth = _held[path]
            _held[path] = (fd, depth + 1)
        else:
            try:
                fd = _acquire(output_dir, path, what, output_dir / lock_file)
            except OSError as e:
                raise MICAError(f"cannot create the lock file {output_dir / lock_file} "
                                f"({e.strerror or e}); check that -o {output_dir} is a writable folder") from None
            _held[path] = (fd, 1)
    try:
        yield
    finally:
        with _guard:
            fd, depth = _held[path]
            if depth > 1:
                _held[path] = (fd, depth - 1)
            else:
                del _held[path]
                _release(path, fd)
