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


# ---------------------------------------------------------------------------------------------
# One unpickler for every plain pickle, numpy-1 and numpy-2 names
# ---------------------------------------------------------------------------------------------
def _pickle_part(raw: bytes) -> bytes:
    f = io.BytesIO(raw)
    npy_format.read_magic(f)
    npy_format.read_array_header_1_0(f)
    return raw[f.tell():]


UNSAFE_READ = r"pickle\.Unpickler\)|np\.load\([^)]+,\s*allow_pickle=True|pickle\.loads?\("


def test_numpy1_and_numpy2_names_both_load(tmp_path):
    """A list written by numpy 1.x (the originals) and one written by numpy 2 give the same object."""
    from tests.legacy_pickle import npy_object_bytes, pickle_globals

    data = {"00001": (["00001/2C.png", "00001/1C.png"], "00001/x.npz"), "k": np.arange(3.0), "s": np.float32(1.5)}
    (tmp_path / "np1.npy").write_bytes(npy_object_bytes(data))
    np.save(tmp_path / "np2.npy", np.array(data, dtype=object), allow_pickle=True)
    names = pickle_globals(_pickle_part((tmp_path / "np1.npy").read_bytes()))
    assert {"numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar"} <= names
    assert not any("_core" in n for n in names)
    for name in ("np1.npy", "np2.npy"):
        out = load_object_npy(tmp_path / name)
        assert out["00001"] == data["00001"] and out["s"] == np.float32(1.5)
        np.testing.assert_array_equal(out["k"], data["k"])


def test_now_box_writer_follows_numpy1_and_reads(tmp_path):
    from testing.now_export import read_now_box
    from tests.legacy_pickle import pickle_globals
    from tests.synthetic_now import write_box

    write_box(tmp_path / "b.npy", 10.5, 20.0, 110.25, 140.0)
    raw = (tmp_path / "b.npy").read_bytes()
    assert pickle_globals(_pickle_part(raw)) == {"numpy.core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype"}
    np.testing.assert_array_equal(read_now_box(tmp_path / "b.npy"), [10.5, 20.0, 110.25, 140.0])


def test_now_result_file_through_the_allow_list(tmp_path):
    """read_official_outputs: the official scorer's file (numpy 1.x names) loads; code is refused unrun."""
    from testing.now_eval import read_official_outputs
    from tests.legacy_pickle import npy_object_bytes
    from utils.errors import MICAError

    payload = {"computed_distances": [np.array([0.5, 1.5]), np.array([2.0])], "num_missing_files": 1,
               "input_files": ["FaMoS_180424_03335_TA/multiview_neutral/IMG_0101.jpg"]}
    (tmp_path / "m_computed_distances.npy").write_bytes(npy_object_bytes(payload))
    out = read_official_outputs(tmp_path / "m_computed_distances.npy")
    assert out["num_missing_files"] == 1 and out["input_files"] == payload["input_files"]
    np.testing.assert_array_equal(out["computed_distances"][0], [0.5, 1.5])
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil_computed_distances.npy"
    evil.write_bytes(_npy_with_payload(pickle.dumps({"computed_distances": _Evil(marker)}, protocol=3)))
    with pytest.raises(MICAError) as e:
        read_official_outputs(evil)
    assert str(evil) in str(e.value) and "system" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_every_plain_pickle_reader_uses_the_one_unpickler():
    """No other module subclasses pickle.Unpickler or calls np.load with allow_pickle=True."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0].startswith(".venv") or rel.parts[0] == "tests" or rel == Path("utils/safe_pickle.py"):
            continue
        text = path.read_text(encoding="utf-8")
        if re.search(UNSAFE_READ, text):
            offenders.append(str(rel))
    assert offenders == []
    # the pattern finds the readers this replaced
    assert re.search(UNSAFE_READ, "return np.load(path, allow_pickle=True)[()]")
    assert re.search(UNSAFE_READ, "class RestrictedUnpickler(pickle.Unpickler):")


def test_a_pickle_whose_dtype_became_a_timedelta_is_refused_not_a_crash():
    """One flipped bit ('i8' -> 'm8') makes a pickle build numpy's timedelta dtype and set an int
    dtype's state on it, on which numpy 2 segfaults (numpy's bug); the allow-list unpickler (FLAME
    .pkl, object .npy files) must refuse it as an error. Run in a child process, so a crash fails
    this test instead of ending the run; an intact datetime-free array still loads there."""
    import subprocess
    import sys
    from pathlib import Path

    good = pickle.dumps({"f": np.arange(3)}, protocol=2)
    assert good.count(b"i8") == 1
    code = ("import pickle, sys; from utils.safe_pickle import unpickle\n"
            "print(unpickle(bytes.fromhex(sys.argv[1]))['f'].tolist())\n"
            "try:\n    unpickle(bytes.fromhex(sys.argv[2]))\nexcept (pickle.UnpicklingError, ValueError) as e:\n"
            "    print('refused', type(e).__name__)\n")
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", code, good.hex(), good.replace(b"i8", b"m8").hex()], cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-500:])
    assert run.stdout.split("\n")[:2] == ["[0, 1, 2]", "refused UnpicklingError"], run.stdout
