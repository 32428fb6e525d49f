"""``.frame`` files open in a numpy-1 client (numpy 1.23-1.25: "No module named 'numpy._core'").

Oracles: the pickled globals of a file written as the original wrote it (``torch.save`` under numpy 1:
``tests/legacy_pickle.torch_save_numpy1``, and numpy 1.25 itself in ``.venv-numpy1``), and loading
our file in ``.venv-numpy1`` (built by ``scripts/numpy1_env.sh``; those tests skip without it) with
``zipfile`` + ``pickle``, as a numpy-1 client without torch reads it.
"""
from __future__ import annotations

import io
import json
import pickletools
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from micalib.tracking.outputs import frame_dict, read_frame, save_frame
from tests.legacy_pickle import torch_save_numpy1 as original_torch_save
from utils.numpy1_pickle import numpy1_names

ROOT = Path(__file__).resolve().parent.parent
NUMPY1_PYTHON = ROOT / ".venv-numpy1" / "bin" / "python"


def _numpy1_python() -> Path:
    if not NUMPY1_PYTHON.is_file():
        pytest.skip(".venv-numpy1 absent (bash scripts/numpy1_env.sh builds it)")
    return NUMPY1_PYTHON


def _frame() -> dict:
    k = np.array([[1000.0, 0, 255.5], [0, 1000.0, 255.5], [0, 0, 1]])
    return frame_dict(np.linspace(-1, 1, 100), np.full(9, 0.1), [0.2, 0.3], np.linspace(0, 1, 300), np.diag([1.0, -1, -1]),
                      np.array([0.01, 0.02, 0.9]), k, (512, 512), 7, 7)


def _data_pkl(file_bytes: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(file_bytes)) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def _globals(pkl: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(pkl) if op.name in ("GLOBAL", "STACK_GLOBAL", "INST")}


@pytest.fixture()
def written(tmp_path):
    path = tmp_path / "00007.frame"
    save_frame(path, _frame())
    return path


def test_pickled_globals_are_those_of_a_file_written_under_numpy1(written):
    ours = _globals(_data_pkl(written.read_bytes()))
    original = _globals(_data_pkl(original_torch_save(_frame())))
    assert ours == original
    assert "numpy.core.multiarray _reconstruct" in ours
    assert not any("numpy._core" in g for g in ours)
    # and torch's plain save (numpy 2) would not have been
    buf = io.BytesIO()
    torch.save(_frame(), buf)
    assert any("numpy._core" in g for g in _globals(_data_pkl(buf.getvalue())))


def test_frames_read_back_here_unchanged(written):
    got, want = read_frame(written), _frame()
    for block in ("flame", "camera", "opencv"):
        for key, val in want[block].items():
            assert got[block][key].dtype == val.dtype and np.array_equal(got[block][key], val), (block, key)
    assert np.array_equal(got["img_size"], want["img_size"]) and got["img_size"].dtype == np.int64
    assert got["frame_id"] == "00007" and got["global_step"] == 7


def test_rewrite_touches_only_numpy_core_globals():
    import pickle

    data = pickle.dumps({"a": np.arange(3, dtype=np.float32), "numpy._core": "numpy._core text"}, protocol=2)
    out = numpy1_names(data)
    assert pickle.loads(out)["numpy._core"] == "numpy._core text"  # strings are not globals
    assert np.array_equal(pickle.loads(out)["a"], np.arange(3, dtype=np.float32))
    with pytest.raises(ValueError, match="STACK_GLOBAL"):
        numpy1_names(pickle.dumps(np.arange(3), protocol=4))


_NUMPY1_READER = r"""
import json, pickle, pickletools, sys, zipfile
import numpy as np
assert np.__version__.startswith("1."), np.__version__
with zipfile.ZipFile(sys.argv[1]) as z:
    pkl = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
d = pickle.loads(pkl)  # no torch: a .frame holds numpy arrays only (no persistent ids)
ref = pickle.dumps(d, protocol=2)  # how numpy 1 pickles the same dict
g = lambda b: sorted({a for o, a, _ in pickletools.genops(b) if o.name in ("GLOBAL", "STACK_GLOBAL")})
print(json.dumps({"numpy": np.__version__, "K": d["opencv"]["K"].tolist(), "exp": d["flame"]["exp"].tolist(),
                  "img_size": d["img_size"].tolist(), "dtype": str(d["img_size"].dtype), "frame_id": d["frame_id"],
                  "ours": g(pkl), "numpy1": g(ref)}))
"""


def test_a_numpy1_client_loads_the_frame(written):
    res = subprocess.run([str(_numpy1_python()), "-c", _NUMPY1_READER, str(written)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    want = _frame()
    assert got["numpy"].startswith("1.2") and not got["numpy"].startswith("1.26")
    assert np.array_equal(np.asarray(got["K"], np.float32), want["opencv"]["K"])
    assert np.array_equal(np.asarray(got["exp"], np.float32), want["flame"]["exp"])
    assert got["img_size"] == [512, 512] and got["dtype"] == "int64" and got["frame_id"] == "00007"
    assert got["ours"] == got["numpy1"]  # the globals numpy 1 itself writes


def test_numpy2_names_fail_in_the_numpy1_env(tmp_path):
    """The check above can fail: the same dict saved by plain torch.save under numpy 2 does not load."""
    path = tmp_path / "plain.frame"
    torch.save(_frame(), path)
    res = subprocess.run([str(_numpy1_python()), "-c", _NUMPY1_READER, str(path)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode != 0 and "numpy._core" in res.stderr


