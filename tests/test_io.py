"""Atomic writes: the final file appears whole or not at all, with normal permissions."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from utils.errors import MICAError
from utils.io import atomic_path, atomic_save_npy, atomic_write_bytes, atomic_write_text, written_file


def test_written_files_have_umask_permissions(tmp_path):
    """mkstemp creates 0600 files; ours get the usual 0666 minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o666 & ~umask
    assert 0o666 & ~umask != 0o600  # with a usual umask the check is not vacuous


def test_failure_leaves_nothing_behind(tmp_path):
    target = tmp_path / "sub" / "x.npy"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_existing_file_is_replaced_whole(tmp_path):
    target = tmp_path / "x.npy"
    atomic_save_npy(target, np.arange(3))
    atomic_save_npy(target, np.arange(5.0))
    np.testing.assert_array_equal(np.load(target), np.arange(5.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


@pytest.fixture()
def fsyncs(monkeypatch):
    """Counts os.fsync calls (still performing them)."""
    calls = []
    real = os.fsync

    def counting(fd):
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_fsync_by_default_and_not_when_switched_off(tmp_path, fsyncs):
    atomic_write_bytes(tmp_path / "a.bin", b"abc")
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"def")
    assert len(fsyncs) == 2
    atomic_write_bytes(tmp_path / "c.bin", memoryview(np.arange(4, dtype=np.int32)), fsync=False)
    with atomic_path(tmp_path / "d.bin", fsync=False) as tmp:
        tmp.write_bytes(b"ghi")
    assert len(fsyncs) == 2
    assert np.frombuffer((tmp_path / "c.bin").read_bytes(), np.int32).tolist() == [0, 1, 2, 3]
    assert (tmp_path / "d.bin").read_bytes() == b"ghi"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin", "c.bin", "d.bin"]


def test_failed_write_of_bytes_leaves_nothing_behind(tmp_path, monkeypatch):
    def disk_full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="no space left"):  # an OutputError: one line naming the file
        atomic_write_bytes(tmp_path / "x.bin", b"data")
    assert list(tmp_path.iterdir()) == []


def test_written_file(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "full").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    assert written_file(tmp_path / "full")
    assert not written_file(tmp_path / "empty")
    assert not written_file(tmp_path / "dir")
    assert not written_file(tmp_path / "missing")


def test_reconstruction_outputs_skip_fsync_and_empty_files_are_not_done(tmp_path, fsyncs):
    from micalib.inference.outputs import OUTPUT_FILES, outputs_done, write_reconstruction

    verts = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])
    write_reconstruction(tmp_path / "r", verts, faces, np.zeros(300), np.zeros((68, 3)), np.zeros((7, 3)))
    assert fsyncs == []  # bulk outputs: atomic, not flushed one by one
    assert outputs_done(tmp_path / "r", render=False)
    assert not outputs_done(tmp_path / "r", render=True)  # no render.png
    (tmp_path / "r" / OUTPUT_FILES[2]).write_bytes(b"")  # what a power failure can leave
    assert not outputs_done(tmp_path / "r", render=False)


def test_path_inside_keeps_list_lines_under_their_root(tmp_path):
    from utils.io import path_inside

    assert path_inside(tmp_path, "S1/selfie/a.jpg", "line") == tmp_path / "S1" / "selfie" / "a.jpg"
    for bad, why in (("../x.jpg", "outside"), ("a/../../x", "outside"), ("/etc/passwd", "outside"),
                     ("", "outside"), (".", "outside"), ("a/\x00b.jpg", "NUL")):
        with pytest.raises(MICAError, match=why) as e:
            path_inside(tmp_path, bad, "image list line")
        assert "\n" not in str(e.value) and "image list line" in str(e.value)

