"""utils/identity.read_identity, the one reader of identity.npy files (issue 21: T49-T51, T64, T65)."""
from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.errors import MICAError
from utils.identity import MAX_ABS_COEFFICIENT, read_identity


def _good() -> np.ndarray:
    return np.linspace(-3, 3, 300).astype(np.float32)


def _npy(path: Path, arr) -> Path:
    np.save(path, arr)
    return path


def test_reads_mica_identities(tmp_path):
    np.testing.assert_array_equal(read_identity(_npy(tmp_path / "a.npy", _good())), _good())
    np.testing.assert_array_equal(read_identity(_npy(tmp_path / "b.npy", _good()[None])), _good())
    assert read_identity(_npy(tmp_path / "c.npy", _good().astype(np.float64))).dtype == np.float32


def _bad_files(tmp_path: Path) -> dict:
    good = _npy(tmp_path / "good.npy", _good()).read_bytes()
    files = {
        "empty": (b"", "empty file"),
        "truncated": (good[:60], "not a readable"),
        "cut data": (good[:-100], "not a readable"),
        "garbage": (b"not numpy at all", "not a readable"),
    }
    out = {name: (tmp_path / f"{name}.npy", why) for name, (data, why) in files.items()}
    for (path, _), (data, _) in zip(out.values(), files.values()):
        path.write_bytes(data)
    arrays = {
        "pickled objects": (np.array([{"a": 1}], dtype=object), "not a readable"),
        "strings": (np.array(["a"] * 300), "not real numbers"),
        "complex": (_good().astype(np.complex64), "not real numbers"),
        "shape": (np.zeros(5, np.float32), r"shape \(5,\)"),
        "NaN": (np.full(300, np.nan, np.float32), "non-finite"),
        "1e30": (np.full(300, 1e30, np.float32), "beyond"),
        "11": (np.where(np.arange(300) == 7, 11.0, 0.0), "coefficient 7 = 11"),
    }
    for name, (arr, why) in arrays.items():
        path = tmp_path / f"{name}.npy"
        with open(path, "wb") as f:
            np.save(f, arr, allow_pickle=True)
        out[name] = (path, why)
    np.savez(tmp_path / "arch.npz", a=_good())
    (tmp_path / "arch.npz").rename(tmp_path / "npz.npy")
    out["npz"] = (tmp_path / "npz.npy", "npz archive")
    (tmp_path / "raw.npy").write_bytes(pickle.dumps(_good()))
    out["raw pickle"] = (tmp_path / "raw.npy", "not a readable")
    out["folder"] = (tmp_path, "folder")
    out["missing"] = (tmp_path / "nope.npy", "does not exist")
    return out


def test_every_bad_file_is_one_line_naming_it_and_the_fix(tmp_path):
    for name, (path, why) in _bad_files(tmp_path).items():
        with pytest.raises(MICAError, match=why) as e:
            read_identity(path, fix="do this")
        msg = str(e.value)
        assert str(path) in msg and msg.endswith("do this") and "\n" not in msg, (name, msg)
    assert MAX_ABS_COEFFICIENT == 10.0


def _runner(tmp_path: Path, identity_path):
    from micalib.tracking.options import TrackOptions
    from micalib.tracking.runner import TrackRunner

    frames = tmp_path / "clip"
    frames.mkdir(exist_ok=True)
    cv2.imwrite(str(frames / "0.png"), np.zeros((64, 64, 3), np.uint8))
    (tmp_path / "out" / "clip").mkdir(parents=True, exist_ok=True)
    return TrackRunner(TrackOptions(), frames, tmp_path / "out", flame=None, identity_path=identity_path)


def test_the_tracker_reads_identities_through_it(tmp_path):
    """T51: a 0-byte --identity was an EOFError traceback; T65: a truncated cached identity.npy
    blocked the run without naming it. Both one line; the cached one says to delete it."""
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(MICAError, match="empty.npy is an empty file"):
        _runner(tmp_path, tmp_path / "empty.npy")._identity()
    cached = tmp_path / "out" / "clip" / "identity.npy"
    _runner(tmp_path, None)
    cached.write_bytes(_npy(tmp_path / "g.npy", _good()).read_bytes()[:60])
    with pytest.raises(MICAError, match="delete it") as e:
        _runner(tmp_path, None)._identity()
    assert str(cached) in str(e.value)
