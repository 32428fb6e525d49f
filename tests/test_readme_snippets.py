"""README.md's python code blocks run as written, on a ``.frame`` that track.py writes, under numpy 2
(this environment) and numpy 1.25 (``.venv-numpy1``, ``scripts/numpy1_env.sh``; skipped without it;
blocks that import torch are skipped there when it has no torch)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from micalib.tracking.outputs import frame_dict, save_frame

ROOT = Path(__file__).resolve().parent.parent
NUMPY1_PYTHON = ROOT / ".venv-numpy1" / "bin" / "python"
K_OPENCV = np.array([[900.0, 0, 250.0], [0, 900.0, 262.0], [0, 0, 1]])
T = np.array([0.01, -0.02, 0.8])
# after a block: the variables it made, as JSON
_REPORT = """
import json as _json, numpy as _np
print("REPORT" + _json.dumps({k: _np.asarray(v).tolist() for k, v in dict(globals()).items()
                              if k in ("pixels", "K", "R", "t", "height", "width")}))
"""


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_the_frame_reading_blocks():
    blocks = python_blocks()
    assert any("torch.load" in b and "numpy.core.multiarray._reconstruct" in b for b in blocks)
    assert any("zipfile" in b and "import torch" not in b and ", torch" not in b for b in blocks)


@pytest.fixture()
def workdir(tmp_path):
    ck = tmp_path / "OUT" / "NAME" / "checkpoint"
    ck.mkdir(parents=True)
    save_frame(ck / "00012.frame", frame_dict(np.zeros(100), np.zeros(9), [0.0, 0.0], np.zeros(300), np.eye(3), T,
                                              K_OPENCV, (512, 512), 12, 12))
    return tmp_path


def _run(python: str, block: str, cwd: Path) -> dict:
    res = subprocess.run([python, "-c", block + _REPORT], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("REPORT"))
    return json.loads(line[len("REPORT"):])


def _check(got: dict) -> None:
    if "pixels" in got:  # the origin lands where OpenCV's K puts it, plus the half pixel of the convention
        uvw = K_OPENCV @ T
        assert np.allclose(got["pixels"][0], uvw[:2] / uvw[2] + 0.5, atol=1e-3)
    if "height" in got:
        assert (got["height"], got["width"]) == (512, 512)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_block_runs_with_numpy2(workdir, index, monkeypatch):
    """In this process (torch is loaded already; a fresh interpreter spends seconds importing it)."""
    monkeypatch.chdir(workdir)
    ns: dict = {"__name__": "__readme__"}
    exec(compile(python_blocks()[index], "README.md", "exec"), ns)  # noqa: S102 (the README's own code)
    _check({k: np.asarray(v).tolist() for k, v in ns.items() if k in ("pixels", "height", "width")})


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_block_runs_with_numpy1(workdir, index):
    if not NUMPY1_PYTHON.is_file():
        pytest.skip(".venv-numpy1 absent (bash scripts/numpy1_env.sh builds it)")
    block = python_blocks()[index]
    has_torch = subprocess.run([str(NUMPY1_PYTHON), "-c", "import torch"], capture_output=True).returncode == 0
    if ("import torch" in block or ", torch" in block) and not has_torch:
        pytest.skip(".venv-numpy1 has no torch (a numpy-1 client without torch uses the zipfile block)")
    _check(_run(str(NUMPY1_PYTHON), block, workdir))
