"""A damaged ``checkpoint/NNNNN.frame`` (truncated, empty, random bytes, a pickle that is no
``torch.save`` file) is one line naming the file and the fix, not "holds Python objects other than
tensors" (which torch's weights-only reader says of every unpickling failure); a foreign pickle
(a global outside tensors and numpy arrays) keeps that precise message; resuming, a damaged frame
of its recorded size is tracked again."""
from __future__ import annotations

import io
import pathlib
import pickle

import numpy as np
import pytest
import torch

from micalib.tracking.outputs import frame_dict, read_frame, save_frame
from tests.synthetic_tracking import argv_of_last_run, track_synthetic
from utils.errors import MICAError


def _frame() -> dict:
    k = np.array([[900.0, 0, 255.5], [0, 900.0, 255.5], [0, 0, 1]])
    return frame_dict(np.linspace(-1, 1, 100), np.full(9, 0.1), [0.2, 0.3], np.linspace(0, 1, 300), np.eye(3),
                      np.array([0.0, 0.0, 0.8]), k, (512, 512), 3, 3)


def _ours() -> bytes:
    buf = io.BytesIO()
    from utils.numpy1_pickle import torch_save_numpy1

    torch_save_numpy1(_frame(), buf)
    return buf.getvalue()


def _torch_saved() -> bytes:
    buf = io.BytesIO()
    torch.save(_frame(), buf)
    return buf.getvalue()


DAMAGED = {
    "ours_half": lambda: _ours()[: len(_ours()) // 2],
    "ours_minus_10_bytes": lambda: _ours()[:-10],
    "ours_first_100_bytes": lambda: _ours()[:100],
    "ours_minus_1_byte": lambda: _ours()[:-1],
    "torch_save_half": lambda: _torch_saved()[: len(_torch_saved()) // 2],
    "torch_save_minus_22_bytes": lambda: _torch_saved()[:-22],  # the zip's end-of-directory record
    "empty": lambda: b"",
    "random_bytes": lambda: np.random.default_rng(0).bytes(5000),
    "text": lambda: b"frame 7\n",
    "plain_pickle_of_a_dict": lambda: pickle.dumps({"flame": {}, "camera": {}, "opencv": {}}),
    "plain_pickle_of_an_array_protocol_2": lambda: pickle.dumps(np.zeros(3, np.float32), protocol=2),
    # one flipped bit inside data.pkl (the zip's CRC is not checked): numpy's codecs.encode gets an
    # unknown encoding (LookupError), and a 1-byte int opcode read as a 4-byte one (struct.error)
    "ours_latin1_bit_flipped": lambda: _ours().replace(b"latin1", b"matin1", 1),
    "ours_last_int_opcode_bit_flipped": lambda: _flip_last_int_opcode(_ours()),
}


def _flip_last_int_opcode(data: bytes) -> bytes:
    end = data.index(b"u.PK")  # the pickle's last SETITEMS and STOP, then the zip's next header
    assert data[end - 2:end - 1] == b"K"  # BININT1 of the last value (global_step)
    return data[: end - 2] + b"J" + data[end - 1:]  # BININT: wants 4 bytes, the pickle ends first


def _message(path) -> str:
    with pytest.raises(MICAError) as e:
        read_frame(path)
    return str(e.value)


def test_our_writer_and_torch_save_files_read_back(tmp_path):
    """The oracle for the cuts below: the whole files read."""
    save_frame(tmp_path / "00003.frame", _frame())
    (tmp_path / "t.frame").write_bytes(_torch_saved())
    assert (tmp_path / "00003.frame").read_bytes() == _ours()
    for name in ("00003.frame", "t.frame"):
        assert read_frame(tmp_path / name)["frame_id"] == "00003"


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_damaged_frame_is_one_line_naming_file_and_fix(tmp_path, case):
    path = tmp_path / "00003.frame"
    path.write_bytes(DAMAGED[case]())
    msg = _message(path)
    assert "\n" not in msg and str(path) in msg
    assert "is damaged" in msg and "delete it and run track.py again" in msg, msg
    assert "other than tensors" not in msg and "download" not in msg, msg


@pytest.mark.parametrize(("foreign", "name"), [(pathlib.PurePosixPath("x"), "pathlib.PurePosixPath"), (print, "print")])
def test_foreign_pickle_keeps_its_precise_message(tmp_path, foreign, name):
    path = tmp_path / "00003.frame"
    frame = _frame()
    frame["extra"] = foreign
    torch.save(frame, path)
    msg = _message(path)
    assert "\n" not in msg and str(path) in msg
    assert f"other than tensors and numpy arrays ({name})" in msg and "not executed" in msg, msg
    assert "damaged" not in msg and "delete it and run track.py again" in msg


def test_zip_without_the_frame_blocks_says_not_a_frame(tmp_path):
    path = tmp_path / "00003.frame"
    torch.save({"weights": torch.zeros(2)}, path)
    msg = _message(path)
    assert str(path) in msg and "not a .frame file" in msg and "delete it and run track.py again" in msg


def test_resume_tracks_a_damaged_frame_of_its_recorded_size_again(tmp_path):
    """Random bytes of the recorded size pass the size check; the read fails and the frame is
    tracked again (exact resume: the same numbers as the first run), with one warning naming it."""
    from loguru import logger

    import track

    *_, out = track_synthetic(tmp_path, real=False, n_frames=4, noise_px=0.3)
    path = out / "checkpoint" / "00002.frame"
    clean = read_frame(path)
    path.write_bytes(np.random.default_rng(1).bytes(path.stat().st_size))
    msgs: list[str] = []
    sink = logger.add(lambda m: msgs.append(str(m)), level="WARNING")
    try:
        track.main(argv_of_last_run(out, video=False))
    finally:
        logger.remove(sink)
    again = read_frame(path)
    for block in ("flame", "camera", "opencv"):
        for key, val in clean[block].items():
            np.testing.assert_array_equal(again[block][key], val)
    assert sum(str(path) in m and "tracking those frames again" in m for m in msgs) == 1


def test_a_flipped_bit_that_makes_a_dtype_a_timedelta_is_one_line_not_a_crash(tmp_path):
    """'i8' -> 'm8' (one bit: 0x69 ^ 0x04 = 'm') makes the pickle build numpy's timedelta dtype and
    set a plain dtype's state on it, on which numpy 2 segfaults (numpy's own bug): the read runs
    in a child process, so a crash fails this test instead of ending the test run. Our files hold
    no datetime arrays; the reader refuses such dtypes unexecuted, as damage."""
    import subprocess
    import sys

    data = _ours()
    assert data.count(b"X\x02\x00\x00\x00i8") >= 1  # a BINUNICODE 'i8': an int64 array's dtype
    path = tmp_path / "00003.frame"
    path.write_bytes(data.replace(b"X\x02\x00\x00\x00i8", b"X\x02\x00\x00\x00m8", 1))
    code = ("import sys; from micalib.tracking.outputs import read_frame; from utils.errors import MICAError\n"
            "try:\n    read_frame(sys.argv[1])\nexcept MICAError as e:\n    print(e)\n")
    root = pathlib.Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", code, str(path)], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-500:])
    msg = run.stdout.strip()
    assert "\n" not in msg and str(path) in msg and "is damaged" in msg and "delete it and run track.py again" in msg, msg
