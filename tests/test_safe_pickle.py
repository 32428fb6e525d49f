"""Restricted loading of pickled .npy dicts: plain data loads, code is refused and never runs."""
from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from numpy.lib import format as npy_format

from utils.safe_pickle import load_object_npy


def _npy_with_payload(payload: bytes) -> bytes:
    header = io.BytesIO()
    npy_format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": ()})
    return header.getvalue() + payload


def test_plain_dict_round_trip(tmp_path):
    data = {"left": 10.5, "top": np.float32(3.0), "names": ["a", "b"]}
    np.save(tmp_path / "d.npy", np.array(data, dtype=object), allow_pickle=True)
    out = load_object_npy(tmp_path / "d.npy")
    assert out["left"] == 10.5 and out["top"] == 3.0 and out["names"] == ["a", "b"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (__import__("os").system, (f"touch {self.marker}",))


def test_code_in_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    path.write_bytes(_npy_with_payload(pickle.dumps(_Evil(marker), protocol=3)))
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_object_npy(path)
    assert not marker.exists()
    # the same bytes through an unrestricted loader do run the command: the test is meaningful
    np.load(path, allow_pickle=True)
    assert marker.exists()


def test_numeric_npy_is_rejected(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="float64"):
        load_object_npy(tmp_path / "x.npy")
