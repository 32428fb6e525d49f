"""utils/errors: user errors are one line and exit 1, in every command; bugs keep their traceback."""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from loguru import logger

from configs.config import PROJECT_ROOT, load_cfg
from utils.errors import MICAError, UserError, UserFileNotFound, check_range, run_main


@pytest.fixture
def error_lines():
    """The messages loguru logs at ERROR while the test runs."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="ERROR")
    yield lines
    logger.remove(sink)


def test_user_types_are_also_the_builtin_ones():
    # code and tests that catch ValueError / FileNotFoundError keep catching the user errors
    assert issubclass(UserError, ValueError) and issubclass(UserError, MICAError)
    assert issubclass(UserFileNotFound, FileNotFoundError) and issubclass(UserFileNotFound, MICAError)
    with pytest.raises(ValueError, match="x must be in 0..1, not 2"):
        check_range("x", 2, 0, 1)


def _exit_code(fn) -> int:
    with pytest.raises(SystemExit) as e:
        run_main(fn)
    return e.value.code


def _cases(tmp):
    """(command module, argv, what the one line must say) of each entry point's user errors."""
    photos = tmp / "photos"
    photos.mkdir()
    return [
        ("demo", ["-i", str(tmp / "nowhere"), "-o", str(tmp / "o"), "-a", str(tmp / "a")], "does not exist"),
        ("demo", ["-i", str(photos), "-o", str(tmp / "o"), "-a", str(tmp / "a"), "model.arch", "bogus"],
         "model.arch must be one of"),
        ("train", ["--cfg", str(tmp / "none.yml")], "config file"),
        ("train", ["model.n_shape", "0"], "model.n_shape must be in 1..300"),
        ("test", ["model.n_shape", "0"], "model.n_shape must be in 1..300"),
        ("test", ["--cfg", str(tmp / "none.yml")], "does not exist"),
        ("track", ["-i", str(tmp / "none.mp4"), "-o", str(tmp / "t")], "does not exist"),
        ("track", ["-i", str(photos), "-o", str(tmp / "t"), "--image-size", "32"], "--image-size must be in 64..4096"),
        ("micalib.export.cli", ["--onnx", str(tmp / "x.onnx"), "-m", str(tmp / "none.tar")], "not found"),
        ("micalib.inference.merge_summaries", [str(tmp / "nothing")], "no completion records"),
        ("micalib.export.gltf", [str(tmp / "nothing")], "is not a folder"),
        ("micalib.viewer.__main__", [str(tmp / "nothing")], "is not a folder"),
        ("datasets.build_lists", [str(photos), "-o", str(tmp / "list.txt")], "must end in .npy"),
    ]


@pytest.mark.parametrize("k", range(13))
def test_every_command_prints_one_line_for_user_errors(k, tmp_path, error_lines, monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    module, argv, says = _cases(tmp_path)[k]
    main = importlib.import_module(module).main
    assert _exit_code(lambda: main(argv)) == 1
    assert len(error_lines) == 1 and "\n" not in error_lines[0] and says in error_lines[0], error_lines


def test_config_errors_are_user_errors(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("model: [unclosed\n")
    for cfg, opts in ((str(bad), []), (None, ["model.nope", "1"]), (None, ["device", "tpu"]), (None, ["odd"]),
                      (str(tmp_path / "missing.yml"), [])):
        with pytest.raises(MICAError) as e:
            load_cfg(cfg, opts)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("error", [ValueError("a bug"), FileNotFoundError(2, "No such file", "/internal/path")])
def test_plain_errors_keep_their_traceback(error):
    def main():
        raise error

    with pytest.raises(type(error)):
        run_main(main)


@pytest.mark.parametrize("error, code", [("ValueError('a bug deep inside')", 1), ("UserError('bad -x: use 1..3')", 1)])
def test_processes_show_a_traceback_only_for_bugs(error, code):
    script = ("import sys; sys.path.insert(0, '.'); from utils.errors import UserError, run_main\n"
              f"def main():\n    raise {error}\nrun_main(main)\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == code
    if error.startswith("ValueError"):
        assert "Traceback" in res.stderr and "a bug deep inside" in res.stderr
    else:
        assert "Traceback" not in res.stderr and res.stderr.count("bad -x: use 1..3") == 1
