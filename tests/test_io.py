"""Atomic writes: the final file appears whole or not at all, with normal permissions."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from utils.io import atomic_path, atomic_save_npy, atomic_write_text


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
