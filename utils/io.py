"""Atomic file writing: everything goes to a temporary file in the target folder, then is renamed
into place, so a crash never leaves a half-written file under the final name.

By default the data is also fsync'ed before the rename, so that the file survives a power failure
too (checkpoints, configs, summaries). Bulk outputs written many times per second (the demo's and
the benchmark exports' meshes, landmarks and crops) pass ``fsync=False``: an fsync is cheap on a fast SSD but
costs milliseconds per file on a hard disk or network file system (bench/README.md, Demo). The rename still keeps them
atomic for readers and after a crash of the program; after a power failure such a file can at worst
be empty, which ``micalib.inference.outputs.outputs_done`` treats as not done.

Temporary files are named ``.STEM.HOST.PID.RANDOM.tmp.SUFFIX`` (host and process id of the writer).
A process killed while writing leaves its temporary file behind; ``remove_stale_temps``, called on
start by every command for the folders it writes into, removes those of a process of this host that
is no longer running, and any older than a day (``STALE_AGE_S``). A running process's temporary
files are never touched, so two commands can write into one folder at the same time.

A write that fails for a reason the user can fix (disk full, read-only file system, no permission,
a file where a folder should be: ``utils.errors.WRITE_ERRNOS``) raises ``utils.errors.OutputError``,
one line naming the file and the fix. ``prepare_output_dir`` creates and test-writes an output
folder, so commands refuse an unusable one before any slow work.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Union

import numpy as np
from loguru import logger

from utils.errors import WRITE_ERRNOS, MICAError, OutputError, os_error_message

PathLike = Union[str, os.PathLike]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which must not race with other
# threads writing files (the demo prepares images in a worker thread).
_UMASK = _read_umask()


# Temporary files older than this are removed whoever wrote them (a write takes seconds).
STALE_AGE_S = 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:64] or "host"
# .STEM.HOST.PID.RANDOM.tmp[.SUFFIX]: the host has no dots, mkstemp's RANDOM is 8 of [a-z0-9_]
_TEMP_NAME = re.compile(r"^\.(?:.*)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>[0-9]+)\.[A-Za-z0-9_]{8}\.tmp(?:\.[^.]*)?$")
# what versions before host/PID naming wrote: .STEM.RANDOM.tmp[.SUFFIX] (removed after a day)
_OLD_TEMP_NAME = re.compile(r"^\.(?:.+)\.[A-Za-z0-9_]{8}\.tmp(?:\.[^.]*)?$")


@contextlib.contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """Turn a fixable ``OSError`` of writing ``path`` into a one-line ``OutputError``."""
    try:
        yield
    except OSError as e:
        if isinstance(e, MICAError) or e.errno not in WRITE_ERRNOS:
            raise
        raise OutputError(os_error_message(e, path), e.errno) from e


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[tuple[int, Path]]:
    """A new, open, empty temporary file in the folder of ``path`` (created if needed): its
    descriptor, which the caller closes, and its path, removed at the end unless renamed away. Its
    name keeps the suffix of ``path`` so libraries that pick a format by extension (trimesh,
    OpenCV) still work, and holds this host and process id (see ``remove_stale_temps``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem[:80]}.{_HOST}.{os.getpid()}.", suffix=f".tmp{path.suffix}",
                                dir=path.parent)
    tmp = Path(name)
    try:
        yield fd, tmp
    finally:
        if tmp.exists():
            tmp.unlink()


def _publish(tmp: Path, path: Path) -> None:
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_path(path: PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success it is renamed to ``path``.

    Args:
        fsync: flush the data to the disk before the rename (see the module docstring).
    On an exception the temporary file is removed.
    """
    path = Path(path)
    with _write_errors(path), _temporary_beside(path) as (fd, tmp):
        os.close(fd)
        yield tmp
        if fsync:  # by name: the writer may have replaced the file
            fd = os.open(tmp, os.O_RDWR)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _publish(tmp, path)


def atomic_write_bytes(path: PathLike, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` (bytes or any buffer) to ``path`` atomically."""
    path = Path(path)
    with _write_errors(path), _temporary_beside(path) as (fd, tmp):
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        _publish(tmp, path)


def written_file(path: PathLike) -> bool:
    """True when ``path`` is a regular file that is not empty: what an atomic write leaves behind,
    also after a power failure cut a write made with ``fsync=False`` (which can leave it empty)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 0


def atomic_write_text(path: PathLike, text: str, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_save_npy(path: PathLike, array, fsync: bool = True) -> None:
    """``np.save`` to ``path`` atomically (no pickles: plain arrays only)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    atomic_write_bytes(path, buf.getbuffer(), fsync=fsync)


def atomic_save(path: PathLike, writer: Callable[[Path], None], fsync: bool = True) -> None:
    """Call ``writer(tmp_path)`` and rename the result to ``path``."""
    with atomic_path(path, fsync=fsync) as tmp:
        writer(tmp)


def _pid_running(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (unknown counts as running)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs under another user
        return True
    return True


def _stale(name: str, st: os.stat_result, now: float) -> bool:
    """Whether ``name`` is one of our temporary files whose writer is gone."""
    m = _TEMP_NAME.match(name)
    # age since the last change: a writer may have copied an old modification time into the file,
    # but that changes its ctime (the time of creation on Windows)
    old = now - max(st.st_mtime, st.st_ctime) > STALE_AGE_S
    if m is None:
        return old and _OLD_TEMP_NAME.match(name) is not None
    if m["host"] == _HOST and int(m["pid"]) == os.getpid():
        return False  # this process's own (another thread may be writing it)
    return old or (m["host"] == _HOST and not _pid_running(int(m["pid"])))


def remove_stale_temps(folder: PathLike, recursive: bool = True) -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder`` (and its sub-folders,
    symbolic links not followed): those named by this module whose process on this host has ended,
    and any not changed for ``STALE_AGE_S`` (other hosts' too), except this process's own. Files
    of running processes and all other files stay.
    Folders that cannot be listed are passed over. Returns the removed paths.

    Limit: "this host" is the host name; containers that share a folder and a host name but not a
    process-ID namespace cannot see each other's processes, so give such containers distinct host
    names (a running writer of another one could otherwise look dead)."""
    removed: list[Path] = []
    now = time.time()
    stack = [Path(folder)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if recursive:
                                stack.append(Path(entry.path))
                        elif entry.name.startswith(".") and entry.is_file(follow_symlinks=False) \
                                and _stale(entry.name, entry.stat(follow_symlinks=False), now):
                            os.unlink(entry.path)
                            removed.append(Path(entry.path))
                    except OSError:  # gone meanwhile, or not ours to remove
                        continue
        except OSError:
            continue
    if removed:
        logger.info(f"removed {len(removed)} temporary file(s) left by interrupted runs in {folder}")
    return removed


def prepare_output_dir(folder: PathLike, what: str = "output folder", clean: bool = True,
                       recursive: bool = True) -> Path:
    """Create ``folder`` (with its parents) and test-write a file in it, so that an unusable output
    (a file, a read-only or full disk, no permission) is refused at start in one line instead of
    after the work; with ``clean`` also ``remove_stale_temps(folder, recursive)``.

    Args:
        what: how the message names the folder, e.g. ``"output folder (-o)"``.

    Raises:
        OutputError: the folder cannot be created or written to.
    """
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _temporary_beside(folder / ".write-test") as (fd, _):
            try:
                os.write(fd, b"MICA write test\n")
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise OutputError(os_error_message(e, folder, action=f"write to the {what}"), e.errno) from e
    if clean:
        remove_stale_temps(folder, recursive=recursive)
    return folder


# ---------------------------------------------------------------------------------------------
# Paths named by a file (image lists, records); folders that must not overlap
# ---------------------------------------------------------------------------------------------
def path_inside(root: PathLike, relative: str, what: str) -> Path:
    """``root / relative`` for a relative path read from a file (an image-list line, a record's
    file list), refused with one line (``MICAError`` naming ``what``) when it could leave ``root``
    or cannot be a file name: empty, absolute, a ``..`` component, or a NUL byte. Lexical only:
    a symbolic link inside ``root`` placed by the user is followed as the user meant it."""
    text = str(relative)
    if "\x00" in text:
        raise MICAError(f"{what} {text!r} holds a NUL byte, which no file name can hold; fix that line")
    rel = Path(text)
    if not text.strip() or not rel.parts or rel.is_absolute() or ".." in rel.parts:
        raise MICAError(f"{what} {text!r} points outside {root} (an absolute path or '..'); "
                        "give a path relative to it, without '..'")
    return Path(root) / rel


# how ``folder_relation``'s answers read in a message: "OUTPUT ... the input folder"
RELATION_WORDS = {"same": "is", "inside": "lies inside", "contains": "contains"}


def folder_relation(folder: PathLike, other: PathLike) -> str | None:
    """Where ``other`` lies relative to ``folder`` (both resolved, symbolic links followed; neither
    needs to exist): ``"same"``, ``"inside"`` (``other`` is below ``folder``), ``"contains"``
    (``other`` holds ``folder``), or None (apart). The one overlap check of the entry scripts'
    outputs against their inputs (track.py's ``TrackLayout.check_input``, demo.py's output folders)."""
    a, b = Path(folder).expanduser().resolve(), Path(other).expanduser().resolve()
    if a == b:
        return "same"
    if b.is_relative_to(a):
        return "inside"
    if a.is_relative_to(b):
        return "contains"
    return None
