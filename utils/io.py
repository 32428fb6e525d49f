"""Atomic file writing: everything goes to a temporary file in the target folder, then is renamed
into place, so a crash never leaves a half-written file under the final name.

By default the data is also fsync'ed before the rename, so that the file survives a power failure
too (checkpoints, configs, summaries). Bulk outputs written many times per second (the demo's and
the benchmark exports' meshes, landmarks and crops) pass ``fsync=False``: an fsync costs ~0.2 ms on
a fast SSD but 5-30 ms on a hard disk or network file system, per file. The rename still keeps them
atomic for readers and after a crash of the program; after a power failure such a file can at worst
be empty, which ``micalib.outputs.outputs_done`` treats as not done.
"""
from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Union

import numpy as np

PathLike = Union[str, os.PathLike]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which must not race with other
# threads writing files (the demo prepares images in a worker thread).
_UMASK = _read_umask()


@contextlib.contextmanager
def _temporary_beside(path: Path) -> Iterator[tuple[int, Path]]:
    """A new, open, empty temporary file in the folder of ``path`` (created if needed): its
    descriptor, which the caller closes, and its path, removed at the end unless renamed away. Its
    name keeps the suffix of ``path`` so libraries that pick a format by extension (trimesh,
    OpenCV) still work."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
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
    with _temporary_beside(path) as (fd, tmp):
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
    with _temporary_beside(path) as (fd, tmp):
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
