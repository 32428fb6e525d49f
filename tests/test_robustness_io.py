"""Regression tests of issue 14's file-system defects: temporary files of killed runs (3, 9),
unwritable outputs found only at the end (3), decompression bombs through any decoder (4),
misleading read errors (11), silent skips when listing inputs (12) and option ranges (13).

Sessions run as root, so permissions cannot make a folder unreadable or read-only: the OSErrors
are injected with monkeypatch at the write layer (``os.write``, ``tempfile.mkstemp``) and at the
directory listing (``os.scandir``); a real file given as ``-o`` is tested for real.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from loguru import logger
from PIL import Image

from configs.config import PROJECT_ROOT, load_cfg
from utils.errors import MICAError, OutputError, os_error_message, run_main
from utils.image_io import list_images, read_image
from utils.io import (
    STALE_AGE_S,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    prepare_output_dir,
    remove_stale_temps,
)

HOST = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())


@pytest.fixture()
def log_lines():
    """Messages loguru logs while the test runs."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="DEBUG")
    yield lines
    logger.remove(sink)


def _dead_pid() -> int:
    """The id of a process of this host that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------------------------------
# Temporary files (defect 9 and the "Temp files" rule)
# ---------------------------------------------------------------------------------------------
def test_temporary_name_holds_host_and_pid_and_keeps_the_suffix(tmp_path):
    with atomic_path(tmp_path / "mesh.ply") as tmp:
        name = tmp.name
        tmp.write_bytes(b"x")
    parts = name.split(".")
    assert name.startswith(".mesh.") and name.endswith(".tmp.ply")
    assert parts[2] == HOST and parts[3] == str(os.getpid())
    assert (tmp_path / "mesh.ply").read_bytes() == b"x"


def _temp_files(tmp_path: Path, dead: int, live: int) -> dict[str, Path]:
    sub = tmp_path / "NAME"
    sub.mkdir(exist_ok=True)
    files = {
        "dead demo writer": sub / f".mesh.{HOST}.{dead}.abcd1234.tmp.ply",
        "dead checkpoint writer": tmp_path / f".model_00001000.{HOST}.{dead}.k2_x9zzz.tmp.tar",
        "running process": sub / f".mesh.{HOST}.{live}.abcd1234.tmp.ply",
        "this process": sub / f".mesh.{HOST}.{os.getpid()}.abcd1234.tmp.obj",
        "other host": tmp_path / f".kpt7.otherhost.{dead}.abcd1234.tmp.npy",
        "old version's name": tmp_path / ".model_00002000.q1w2e3r4.tmp.tar",
        "not ours (hidden)": tmp_path / ".notes.tmp",
        "not ours": sub / "mesh.ply",
    }
    for path in files.values():
        path.write_bytes(b"data")
    return files


@pytest.fixture()
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_stale_temps_of_dead_processes_are_removed_and_live_ones_kept(tmp_path, live_pid):
    files = _temp_files(tmp_path, _dead_pid(), live_pid)
    removed = remove_stale_temps(tmp_path)
    gone = {"dead demo writer", "dead checkpoint writer"}
    assert sorted(removed) == sorted(files[k] for k in gone)
    for kind, path in files.items():
        assert path.exists() == (kind not in gone), kind
    assert remove_stale_temps(tmp_path) == []  # nothing left to remove


def test_temps_older_than_a_day_are_removed_whoever_wrote_them(tmp_path, live_pid, monkeypatch):
    """A day later: also other hosts' files, an old version's names and a PID in use again; the age
    counts from the last change of the file (its ctime too, which no writer can set back)."""
    import utils.io as io_module

    dead = _dead_pid()
    files = _temp_files(tmp_path, dead, live_pid)
    os.utime(files["other host"], (0, 0))  # an old modification time alone does not make it stale
    dead_ones = {"dead demo writer", "dead checkpoint writer"}
    assert sorted(remove_stale_temps(tmp_path)) == sorted(files[k] for k in dead_ones)
    later = time.time() + STALE_AGE_S + 60
    monkeypatch.setattr(io_module, "time", type("Clock", (), {"time": staticmethod(lambda: later)}))
    removed = remove_stale_temps(tmp_path)
    kept = {"this process", "not ours (hidden)", "not ours"}
    assert sorted(removed) == sorted(p for k, p in files.items() if k not in kept | dead_ones)
    for kind, path in files.items():
        assert path.exists() == (kind in kept), kind


_HOLDER = """
import sys
from utils.io import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"held " * 1000)
    print(tmp, flush=True)
    sys.stdin.readline()
"""


def test_a_starting_command_leaves_a_running_writers_temp_file_alone(tmp_path):
    """A second command starting on the same folder (probe + cleanup) while the first is in the
    middle of a write: the first's file still arrives whole."""
    target = tmp_path / "NAME" / "mesh.ply"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(target)], cwd=PROJECT_ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        tmp = Path(proc.stdout.readline().strip())
        assert tmp.exists() and tmp.parent == target.parent
        prepare_output_dir(tmp_path, "output folder (-o)")
        assert tmp.exists()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert target.read_bytes() == b"held " * 1000
    assert sorted(p.name for p in target.parent.iterdir()) == ["mesh.ply"]


_WRITER = """
import sys
from pathlib import Path
from utils.io import atomic_write_bytes, remove_stale_temps
folder, tag = Path(sys.argv[1]), sys.argv[2]
for i in range(int(sys.argv[3])):
    remove_stale_temps(folder)  # what every start does, here as often as possible
    atomic_write_bytes(folder / f"{tag}_{i:03d}.bin", (f"{tag} {i} " * 2000).encode(), fsync=False)
"""


def test_two_writers_at_once_lose_nothing(tmp_path):
    n = 150
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), tag, str(n)], cwd=PROJECT_ROOT,
                              stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for tag in ("a", "b"):
        for i in range(n):
            assert (tmp_path / f"{tag}_{i:03d}.bin").read_bytes() == (f"{tag} {i} " * 2000).encode()
    assert len(list(tmp_path.iterdir())) == 2 * n  # no temporary file left either


def test_commands_clean_their_output_folders_on_start(tmp_path, monkeypatch):
    """demo.py (output and crop folders), train.py (its output folder with checkpoints/) and
    test.py (the export folder) remove a killed run's temp files before any work."""
    import demo
    import test as test_cli
    import train

    dead = _dead_pid()
    orphans = [tmp_path / "out" / "NAME" / f".mesh.{HOST}.{dead}.abcd1234.tmp.ply",
               tmp_path / "arc" / f".NAME.{HOST}.{dead}.abcd1234.tmp.npy",
               tmp_path / "train" / "checkpoints" / f".model_00001000.{HOST}.{dead}.abcd1234.tmp.tar",
               tmp_path / "now" / "predicted_meshes" / f".x.{HOST}.{dead}.abcd1234.tmp.ply"]
    keep = tmp_path / "out" / "NAME" / f".mesh.{HOST}.{os.getpid()}.abcd1234.tmp.ply"
    for p in [*orphans, keep]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    (tmp_path / "in").mkdir()

    class Loaded(Exception):
        pass

    def no_loading(*a, **k):
        raise Loaded

    monkeypatch.setattr(demo, "build_runner", no_loading)
    with pytest.raises(Loaded):
        demo.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-a", str(tmp_path / "arc")])
    import micalib.engine.builder

    monkeypatch.setattr(micalib.engine.builder, "build_trainer", no_loading)
    with pytest.raises(Loaded):
        train.main(["--cfg", str(PROJECT_ROOT / "configs" / "mica.yml"), "output_dir", str(tmp_path / "train"),
                    "device", "cpu"])
    with pytest.raises(MICAError, match="now_root"):  # cleaned, then refused for the missing benchmark
        test_cli.main(["--benchmark", "now", "-o", str(tmp_path / "now")])
    assert [p for p in orphans if p.exists()] == []
    assert keep.exists()


# ---------------------------------------------------------------------------------------------
# Unwritable outputs (defect 3)
# ---------------------------------------------------------------------------------------------
def _one_line_run(script: str, *args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, *script.split(), *args], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    return res


def test_output_that_is_a_file_is_refused_at_start_by_every_command(tmp_path):
    """Real files in the way (no injection): each of the five commands stops at once with one line
    naming the path, before loading a network or reading data."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    (tmp_path / "in").mkdir()
    cases = [
        ("demo.py", "-i", str(tmp_path / "in"), "-o", str(blocker)),
        ("demo.py", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-a", str(blocker / "sub")),
        ("test.py", "--benchmark", "now", "--now-root", str(tmp_path), "-o", str(blocker)),
        ("train.py", "--cfg", "configs/mica.yml", "output_dir", str(blocker), "device", "cpu"),
        ("-m micalib.export", "--onnx", str(blocker / "mica.onnx"), "--checkpoint", str(tmp_path / "none.tar")),
        ("-m datasets.creation.generate", "--dataset", "LYHM", "--raw", str(tmp_path / "in"), "--fits",
         str(tmp_path / "in"), "--out", str(blocker)),
    ]
    for script, *args in cases:
        res = _one_line_run(script, *args)
        assert str(blocker) in res.stderr and "is a file, not a folder" in res.stderr, (script, res.stderr)


@pytest.mark.parametrize("code, words", [
    (errno.EROFS, "read-only"), (errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied"),
])
def test_probe_refuses_unwritable_folder_in_one_line(tmp_path, monkeypatch, code, words):
    def failing_mkstemp(*a, **k):
        raise OSError(code, os.strerror(code), str(tmp_path / "o" / ".x.tmp"))

    monkeypatch.setattr("tempfile.mkstemp", failing_mkstemp)
    with pytest.raises(OutputError) as e:
        prepare_output_dir(tmp_path / "o", "output folder (-o)")
    msg = str(e.value)
    assert words in msg and str(tmp_path / "o") in msg and "-o" in msg and "\n" not in msg
    assert ".x.tmp" not in msg  # the user's path, not our temporary name
    assert e.value.errno == code


def test_demo_refuses_read_only_output_before_loading(tmp_path, monkeypatch):
    import demo

    loaded = []
    monkeypatch.setattr(demo, "build_runner", lambda *a: loaded.append(1))
    real = os.write

    def read_only(fd, data):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "write", read_only)
    (tmp_path / "in").mkdir()
    with pytest.raises(OutputError, match="read-only"):
        demo.main(["-i", str(tmp_path / "in"), "-o", str(tmp_path / "o"), "-a", str(tmp_path / "a")])
    monkeypatch.setattr(os, "write", real)
    assert loaded == []
    assert list((tmp_path / "o").iterdir()) == []  # the probe left nothing behind


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
    (errno.EDQUOT, "quota"),
])
def test_atomic_writers_turn_fixable_errors_into_one_line(tmp_path, monkeypatch, code, words):
    def failing_write(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", failing_write)
    target = tmp_path / "summary.json"
    with pytest.raises(OutputError) as e:
        atomic_write_text(target, "{}")
    msg = str(e.value)
    assert msg.startswith(f"cannot write {target}: ") and words in msg and "\n" not in msg
    assert isinstance(e.value, OSError) and isinstance(e.value, MICAError)  # batch code catching OSError still works
    assert list(tmp_path.iterdir()) == []


def test_writer_errors_inside_atomic_path_are_mapped_too(tmp_path):
    """A library writing the temporary file itself (trimesh, np.save) into a full disk."""
    with pytest.raises(OutputError, match="no space left"):
        with atomic_path(tmp_path / "m.ply"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError) as e:  # not one of the fixable causes: left as it is
        with atomic_path(tmp_path / "m.ply"):
            raise OSError(errno.EIO, "Input/output error")
    assert not isinstance(e.value, MICAError)


def test_real_file_in_the_path_of_an_atomic_write(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError) as e:
        atomic_write_bytes(tmp_path / "f" / "sub" / "x.bin", b"1")
    assert f"{tmp_path / 'f'} is a file, not a folder" in str(e.value)
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError, match="it is a folder"):
        atomic_write_bytes(tmp_path / "d", b"1")


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES, errno.ENOTDIR, errno.EEXIST])
def test_run_main_prints_one_line_for_raw_os_errors(code, log_lines):
    def main():
        raise OSError(code, os.strerror(code), "/data/out/summary.csv")

    with pytest.raises(SystemExit) as e:
        run_main(main)
    assert e.value.code == 1
    errors = [m for m in log_lines if "/data/out/summary.csv" in m]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert errors[0] == os_error_message(OSError(code, os.strerror(code), "/data/out/summary.csv"), action="access")


def test_run_main_keeps_tracebacks_for_other_os_errors():
    def main():
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError):
        run_main(main)


# ---------------------------------------------------------------------------------------------
# One pixel limit for every decoder (defect 4) and distinct read errors (defect 11)
# ---------------------------------------------------------------------------------------------
@pytest.fixture()
def decoder_spy(monkeypatch):
    """Records every OpenCV decode call (still performing them)."""
    calls = []
    for name in ("imdecode", "imread"):
        real = getattr(cv2, name)

        def spy(*a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(*a, **k)

        monkeypatch.setattr(cv2, name, spy)
    return calls


def test_radiance_hdr_named_jpg_is_refused_before_decoding(tmp_path, decoder_spy):
    """Issue 14's bomb: a small Radiance file that claims 80000 x 100000 pixels (8 Gpx)."""
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\nEXPOSURE=1.0\n\n-Y 100000 +X 80000\n" + bytes(4096))
    with pytest.raises(MICAError) as e:
        read_image(path)
    msg = str(e.value)
    assert str(path) in msg and "80000x100000" in msg and "image.max_pixels" in msg and "\n" not in msg
    assert "corrupt" not in msg
    assert decoder_spy == []


@pytest.mark.parametrize("suffix", [".hdr", ".pam"])
def test_opencv_only_formats_are_read_within_the_limit(tmp_path, decoder_spy, suffix):
    """Real Radiance and PAM files (OpenCV's writers; Pillow identifies neither), named .jpg: read
    through the fallback when they fit, refused from the header when the limit is one pixel smaller."""
    h, w = 40, 56
    pixels = np.random.default_rng(0).random((h, w, 3))
    pixels = pixels.astype(np.float32) * 0.9 if suffix == ".hdr" else (pixels * 255).astype(np.uint8)
    assert cv2.imwrite(str(tmp_path / f"x{suffix}"), pixels)
    path = tmp_path / "x.jpg"
    path.write_bytes((tmp_path / f"x{suffix}").read_bytes())
    decoder_spy.clear()
    rgb = read_image(path, max_pixels=h * w)
    assert rgb.shape == (h, w, 3) and decoder_spy == ["imdecode"]
    decoder_spy.clear()
    with pytest.raises(MICAError, match=f"{w}x{h} pixels"):
        read_image(path, max_pixels=h * w - 1)
    assert decoder_spy == []


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """An RGB PNG of ``width`` x ``height`` by its header (PNG spec layout), with a few bytes of
    pixel data only (a bomb's pixels would decompress to the full size)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(bytes(1000)))
            + _png_chunk(b"IEND", b""))


def test_pillow_formats_use_the_same_limit_and_message(tmp_path, monkeypatch, decoder_spy):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30000, 30000))  # 900 Mpx: over ours, and over Pillow's own limit
    with pytest.raises(MICAError) as e:
        read_image(path)
    msg = str(e.value)
    assert "30000x30000" in msg and "image.max_pixels = 100000000" in msg and "corrupt" not in msg
    # a real PNG: refused from the header (nothing decoded) when over the limit, read at the limit
    Image.new("RGB", (50, 40), (10, 20, 30)).save(tmp_path / "ok.png")
    loads = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(1))
    with pytest.raises(MICAError, match="50x40"):
        read_image(tmp_path / "ok.png", max_pixels=1999)
    assert loads == [] and decoder_spy == []
    monkeypatch.undo()
    assert read_image(tmp_path / "ok.png", max_pixels=2000).shape == (40, 50, 3)
    assert read_image(tmp_path / "ok.png", max_pixels=0).shape == (40, 50, 3)  # 0 = no limit


def test_the_limit_comes_from_the_config(tmp_path):
    import utils.image_io as image_io

    assert load_cfg().image.max_pixels == 100 * 10**6  # the default
    Image.new("RGB", (50, 40)).save(tmp_path / "a.png")
    try:
        image_io.set_max_pixels(load_cfg(None, ["image.max_pixels", "1000"]).image.max_pixels)
        with pytest.raises(MICAError, match="image.max_pixels = 1000"):
            read_image(tmp_path / "a.png")
    finally:
        image_io.set_max_pixels(image_io.DEFAULT_MAX_PIXELS)
    assert read_image(tmp_path / "a.png").shape == (40, 50, 3)
    with pytest.raises(ValueError, match="image.max_pixels"):
        load_cfg(None, ["image.max_pixels", "-1"])


def test_permission_denied_is_not_called_corrupt(tmp_path, monkeypatch):
    path = tmp_path / "locked.jpg"
    Image.new("RGB", (64, 64)).save(path)

    def denied(fp, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(fp))

    monkeypatch.setattr("utils.image_io.Image.open", denied)
    with pytest.raises(MICAError) as e:
        read_image(path)
    msg = str(e.value)
    assert str(path) in msg and "permission denied" in msg and "corrupt" not in msg and "re-save" not in msg


def test_truncated_and_unsupported_files_keep_their_own_messages(tmp_path):
    Image.new("RGB", (200, 200), (1, 2, 3)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "fake.gif").write_bytes(b"GIF? not really " * 20)
    assert "corrupt or truncated" in str(pytest.raises(MICAError, read_image, tmp_path / "cut.png").value)
    msg = str(pytest.raises(MICAError, read_image, tmp_path / "fake.gif").value)
    assert "unsupported" in msg and "fake.gif" in msg


# ---------------------------------------------------------------------------------------------
# Listing inputs (defect 12)
# ---------------------------------------------------------------------------------------------
def test_every_image_extension_gets_listed_and_the_rest_counted(tmp_path, log_lines):
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "anim.gif")
    (tmp_path / "broken.gif").write_bytes(b"\x00" * 100)
    (tmp_path / "scan.hdr").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "data.csv").write_text("x")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    got = list_images(tmp_path)
    assert [p.name for p in got] == ["anim.gif", "broken.gif", "scan.hdr"]
    assert got.ignored == 3 and got.failures == []
    counted = [m for m in log_lines if "ignored 3" in m]
    assert len(counted) == 1 and ".txt" in counted[0]
    assert read_image(tmp_path / "anim.gif")[0, 0].tolist() == [200, 10, 10]  # Pillow reads GIF
    assert "unsupported" in str(pytest.raises(MICAError, read_image, tmp_path / "broken.gif").value)


def test_unlistable_sub_folder_is_reported_not_skipped(tmp_path, monkeypatch):
    for rel in ["a.jpg", "locked/b.jpg", "open/c.jpg"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40)).save(tmp_path / rel)
    real = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    got = list_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["a.jpg", "open/c.jpg"]
    assert len(got.failures) == 1
    folder, msg = got.failures[0]
    assert folder == tmp_path / "locked" and "cannot be listed" in msg and "Permission denied" in msg
    monkeypatch.setattr(os, "scandir", lambda path=".": (_ for _ in ()).throw(
        PermissionError(errno.EACCES, "Permission denied", str(path))))
    with pytest.raises(MICAError, match="cannot be listed"):
        list_images(tmp_path)


def test_symlinked_folders_are_followed_once_and_cycles_stop(tmp_path, log_lines):
    root, outside = tmp_path / "in", tmp_path / "elsewhere"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (40, 40)).save(root / "a" / "1.png")
    Image.new("RGB", (40, 40)).save(outside / "2.png")
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # a cycle
    (root / "b_link").symlink_to(root / "a", target_is_directory=True)  # the same folder again
    (root / "c_link").symlink_to(outside, target_is_directory=True)  # a folder outside: followed
    got = list_images(root)
    assert [p.relative_to(root).as_posix() for p in got] == ["a/1.png", "c_link/2.png"]
    assert any("cycle" in m for m in log_lines)


def test_demo_runner_gives_unlistable_folders_and_unreadable_files_a_row(tmp_path, monkeypatch):
    from micalib.inference.demo_runner import DemoRunner

    inp = tmp_path / "in"
    (inp / "locked").mkdir(parents=True)
    (inp / "clip.gif").write_bytes(b"not a gif")
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": (_ for _ in ()).throw(PermissionError(
        errno.EACCES, "Permission denied", str(path))) if Path(path).name == "locked" else real(path))
    runner = DemoRunner(None, None, np.zeros((1, 3), int), tmp_path / "out", tmp_path / "arc", aligned=True,
                        render=False)
    rows = {r.input: r for r in runner.run(inp)}
    assert set(rows) == {"locked", "clip.gif"}
    assert rows["locked"].status == "failed" and "cannot be listed" in rows["locked"].message
    assert rows["clip.gif"].status == "failed" and "unsupported" in rows["clip.gif"].message
    assert (tmp_path / "out" / "summary.csv").read_text().count("failed") == 2


# ---------------------------------------------------------------------------------------------
# Option ranges (defect 13)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, bad", [
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-5"], "--batch-size"),
    (["--batch-size", "4097"], "--batch-size"), (["--prefetch", "-3"], "--prefetch"),
    (["--prefetch", "65"], "--prefetch"), (["--workers", "0"], "--workers"), (["--workers", "65"], "--workers"),
])
def test_demo_flags_out_of_range_are_refused(flags, bad):
    import demo

    with pytest.raises(ValueError) as e:
        demo.check_args(demo.parse_args(["-i", "x", *flags]))
    assert str(e.value).startswith(bad) and "\n" not in str(e.value)


def test_demo_flags_at_the_bounds_are_accepted():
    import demo

    for flags in (["--batch-size", "1", "--prefetch", "0", "--workers", "1"],
                  ["--batch-size", "4096", "--prefetch", "64", "--workers", "64"]):
        demo.check_args(demo.parse_args(["-i", "x", *flags]))


@pytest.mark.parametrize("flags, bad", [
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "5000"], "--batch-size"),
    (["--threshold", "7.0"], "--threshold"), (["--threshold", "0"], "--threshold"),
])
def test_benchmark_export_flags_out_of_range_are_refused(tmp_path, flags, bad):
    import test as test_cli

    with pytest.raises(ValueError, match=f"^{bad} must be in"):
        test_cli.main(["--benchmark", "now", "--now-root", str(tmp_path), "-o", str(tmp_path / "o"), *flags])
    assert not (tmp_path / "o").exists()  # refused before anything was created


@pytest.mark.parametrize("value", ["0", "1.5"])
def test_dataset_creation_threshold_range(tmp_path, value):
    from datasets.creation import generate

    with pytest.raises(ValueError, match=r"--threshold must be in \(0, 1\]"):
        generate.main(["--dataset", "LYHM", "--raw", str(tmp_path), "--fits", str(tmp_path), "--out",
                       str(tmp_path / "o"), "--threshold", value])


@pytest.mark.parametrize("key, value", [
    ("detector.threshold", "7.0"), ("detector.threshold", "0.0"), ("detector.threshold", "-0.5"),
    ("dataset.batch_size", "0"), ("dataset.batch_size", "4097"), ("dataset.num_workers", "-1"),
    ("dataset.num_workers", "65"),
])
def test_config_keys_out_of_range_are_refused(key, value):
    with pytest.raises(ValueError) as e:
        load_cfg(None, [key, value])
    assert str(e.value).startswith(f"{key} must be in") and value.lstrip("-") in str(e.value)


def test_config_keys_at_the_bounds_are_accepted():
    cfg = load_cfg(None, ["detector.threshold", "1.0", "dataset.batch_size", "4096", "dataset.num_workers", "64"])
    assert cfg.detector.threshold == 1.0 and cfg.dataset.batch_size == 4096
    assert load_cfg(None, ["detector.threshold", "0.01", "dataset.num_workers", "0"]).dataset.num_workers == 0


def test_sigterm_as_interrupt_raises_keyboardinterrupt_and_restores_the_handler():
    """utils.errors.sigterm_as_interrupt: the one SIGTERM handling of demo.py (and track.py)."""
    import signal

    from utils.errors import sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at once
    assert signal.getsignal(signal.SIGTERM) is before
