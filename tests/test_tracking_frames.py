"""micalib.tracking.frames: the --fps resampling rule against hand-computed index lists, a synthetic
video written by OpenCV's own writer (mp4v) read back frame by frame, folders in sorted-name order,
and one-line errors for bad inputs."""
from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from micalib.tracking.frames import FolderFrames, VideoFrames, open_frames, prefetch, resample_indices
from utils.errors import MICAError

# ---------------------------------------------------------------------------- resampling rule


def test_resample_29_97_to_25_hand_computed():
    # k * (30000/1001) / 25 = 1.1988 k, rounded to nearest: 0, 1.20, 2.40, 3.60, 4.80, 5.99, 7.19,
    # 8.39, 9.59, 10.79, 11.99, 13.19, 14.39, 15.58
    idx = resample_indices(448, 30000 / 1001, 25)
    assert idx[:14] == [0, 1, 2, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16]
    # last: 1.1988 k <= 447.5 -> k <= 373.29 -> 374 output frames, the last one input 447
    assert len(idx) == 374 and idx[-1] == 447
    # the float rate OpenCV reports gives the same list
    assert resample_indices(448, 29.97002997002997, 25.0) == idx


def test_resample_ties_go_to_the_earlier_frame():
    # 30 -> 20 fps: times k * 1.5 input frames: 0, 1.5 (tie -> 1), 3, 4.5 (-> 4), 6, 7.5 (-> 7), 9, 10.5 (past 9)
    assert resample_indices(10, 30, 20) == [0, 1, 3, 4, 6, 7, 9]
    # 10 -> 4 fps: k * 2.5: 0, 2.5 (-> 2), 5, 7.5 (-> 7), 10, 12.5 (-> 12 > 11: stop)
    assert resample_indices(12, 10, 4) == [0, 2, 5, 7, 10]


def test_resample_upsampling_repeats_frames_and_none_keeps_all():
    # 10 -> 25 fps: k * 0.4: 0, .4, .8, 1.2, 1.6, 2.0, 2.4, 2.8, 3.2, 3.6 (-> 4 > 3: stop)
    assert resample_indices(4, 10, 25) == [0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert resample_indices(5, 30, None) == [0, 1, 2, 3, 4]
    assert resample_indices(0, 30, 25) == []


# ---------------------------------------------------------------------------- synthetic video

W, H, BITS, BLOCK = 160, 96, 6, 16


def _coded_frame(i: int) -> np.ndarray:
    """A BGR frame whose top row of 16x16 blocks spells i in binary (white = 1), plus a colour that
    tells RGB from BGR: blue in the bottom half."""
    img = np.zeros((H, W, 3), np.uint8)
    for b in range(BITS):
        if (i >> b) & 1:
            img[:BLOCK, b * BLOCK:(b + 1) * BLOCK] = 255
    img[H // 2:, :, 0] = 200  # B channel in OpenCV's BGR order
    return img


def _decode_index(rgb: np.ndarray) -> int:
    return sum(1 << b for b in range(BITS) if rgb[2:BLOCK - 2, b * BLOCK + 2:(b + 1) * BLOCK - 2].mean() > 128)


@pytest.fixture(scope="module")
def video_30fps(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (W, H))
    assert writer.isOpened()
    for i in range(40):
        writer.write(_coded_frame(i))
    writer.release()
    return path


def test_video_read_back_every_frame_in_order(video_30fps):
    src = open_frames(video_30fps)
    assert isinstance(src, VideoFrames)
    assert src.name == "clip" and src.size == (W, H) and src.n_input_frames == 40 and len(src) == 40
    assert src.input_fps == pytest.approx(30.0)
    seen = []
    for k, i, rgb in src:
        assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
        assert rgb[H - 4, W // 2, 2] > 150 and rgb[H - 4, W // 2, 0] < 60  # blue arrives in channel 2 (RGB)
        seen.append((k, i, _decode_index(rgb)))
    assert seen == [(k, k, k) for k in range(40)]


def test_video_resampled_to_20fps(video_30fps):
    src = open_frames(video_30fps, fps=20)
    expected = [0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22, 24, 25, 27, 28, 30, 31, 33, 34, 36, 37, 39]
    assert src.indices == expected and len(src) == len(expected)
    got = [(k, i, _decode_index(rgb)) for k, i, rgb in src]
    assert got == [(k, i, i) for k, i in enumerate(expected)]
    # a second pass reads the same (the source re-opens the video)
    assert [i for _, i, _ in src] == expected


def test_video_errors_are_one_line(tmp_path, video_30fps):
    with pytest.raises(MICAError, match="does not exist") as e:
        open_frames(tmp_path / "missing.mp4")
    assert "\n" not in str(e.value)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MICAError, match="empty.mp4.*0 bytes"):
        open_frames(empty)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(MICAError, match="junk.mp4") as e:
        open_frames(junk)
    assert "\n" not in str(e.value)
    with pytest.raises(MICAError, match="--fps"):
        open_frames(video_30fps, fps=0)


def _cut_video(tmp_path):
    """An MJPG video of 30 coded frames cut at 60% of its bytes: the header still says 30 frames."""
    path = tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (W, H))
    for i in range(30):
        writer.write(_coded_frame(i))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 6 // 10])
    return path


def test_truncated_video_yields_what_it_has_and_warns(tmp_path):
    from loguru import logger

    path = _cut_video(tmp_path)
    src = open_frames(path)
    assert src.n_input_frames == 30
    messages = []
    sink = logger.add(messages.append, level="WARNING", format="{message}")
    try:
        got = [(k, i, _decode_index(rgb)) for k, i, rgb in src]
    finally:
        logger.remove(sink)
    assert 5 <= len(got) < 30 and got == [(k, k, k) for k in range(len(got))]
    assert src.truncated_at == len(got)
    assert len(messages) == 1 and "cut.avi ends after" in messages[0]


def test_begin_past_where_a_truncated_video_ends_is_one_line(tmp_path):
    """The header says 30 frames, so --begin-frame 25 passes the count check; the file decodes to
    fewer (counted here with OpenCV directly): nothing is left to track, and the run says so naming
    --begin-frame, instead of tracking no frame and failing later (no .frame files to export)."""
    path = _cut_video(tmp_path)
    cap = cv2.VideoCapture(str(path))
    decodable = 0
    while cap.read()[0]:
        decodable += 1
    cap.release()
    assert 5 <= decodable < 25
    src = open_frames(path, None, 25)
    with pytest.raises(MICAError, match="--begin-frame 25") as e:
        list(src)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    ok = open_frames(path, None, decodable - 2)  # a begin the file reaches: its last two frames
    assert [(k, i, _decode_index(rgb)) for k, i, rgb in ok] == [(0, decodable - 2, decodable - 2), (1, decodable - 1, decodable - 1)]


# ---------------------------------------------------------------------------- folders


def test_folder_in_sorted_name_order_fps_ignored(tmp_path):
    names = ["b_002.png", "a_010.png", "a_002.jpg", "c.bmp"]  # sorted: a_002, a_010, b_002, c
    for n, name in enumerate(names):
        cv2.imwrite(str(tmp_path / name), _coded_frame(n + 1))
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "sub" / "0.png"), _coded_frame(9))  # subfolders are not frames
    (tmp_path / "notes.txt").write_text("x")
    src = open_frames(tmp_path, fps=25)
    assert isinstance(src, FolderFrames)
    assert src.name == tmp_path.name and len(src) == 4 and src.n_input_frames == 4 and src.size == (W, H)
    got = [(k, i, _decode_index(rgb)) for k, i, rgb in src]
    # a_002 holds 3, a_010 holds 2, b_002 holds 1, c holds 4
    assert got == [(0, 0, 3), (1, 1, 2), (2, 2, 1), (3, 3, 4)]


def test_folder_errors(tmp_path):
    with pytest.raises(MICAError, match="holds no images"):
        open_frames(tmp_path)
    cv2.imwrite(str(tmp_path / "0.png"), _coded_frame(1))
    cv2.imwrite(str(tmp_path / "1.png"), cv2.resize(_coded_frame(2), (W // 2, H // 2)))
    src = open_frames(tmp_path)
    with pytest.raises(MICAError, match=r"1\.png is 80x48 pixels but the first frame"):
        list(src)


# ---------------------------------------------------------------------------- --begin-frame


@pytest.mark.parametrize("fps", [None, 20.0])
def test_begin_skips_output_frames_after_the_resampling(video_30fps, fps):
    """Output frame k of ``begin=5`` is output frame 5 + k of the whole input: the same input
    index (the hand-computed 30 -> 20 fps list: 0, 1, 3, 4, 6, 7, 9, ...) and the same pixels."""
    whole = [(k, i, _decode_index(rgb)) for k, i, rgb in open_frames(video_30fps, fps=fps)]
    src = open_frames(video_30fps, fps=fps, begin=5)
    assert src.begin == 5 and src.n_input_frames == 40 and len(src) == len(whole) - 5
    got = [(k, i, _decode_index(rgb)) for k, i, rgb in src]
    assert got == [(k - 5, i, code) for k, i, code in whole[5:]]
    assert all(code == i for _, i, code in got)  # the pixels are those of input frame i
    if fps is not None:
        assert [i for _, i, _ in got[:4]] == [7, 9, 10, 12]  # 20 fps: input k * 1.5, ties to the earlier


def test_begin_in_a_folder_and_out_of_range(tmp_path):
    for n in range(6):
        cv2.imwrite(str(tmp_path / f"{n:03d}.png"), _coded_frame(n + 10))
    src = open_frames(tmp_path, begin=4)
    assert [(k, i, _decode_index(rgb)) for k, i, rgb in src] == [(0, 4, 14), (1, 5, 15)]
    for bad in (6, 100):
        with pytest.raises(MICAError, match=f"--begin-frame {bad} skips every output frame of .* it has 6") as e:
            open_frames(tmp_path, begin=bad)
        assert "\n" not in str(e.value)
    with pytest.raises(MICAError, match="--begin-frame -1: give the number of output frames to skip"):
        open_frames(tmp_path, begin=-1)


# ---------------------------------------------------------------------------- prefetch


def test_prefetch_keeps_order_and_content(video_30fps):
    src = open_frames(video_30fps, fps=20)
    plain = [(k, i, rgb.copy()) for k, i, rgb in src]
    fetched = list(prefetch(src, depth=3))
    assert [(k, i) for k, i, _ in fetched] == [(k, i) for k, i, _ in plain]
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(fetched, plain, strict=True))


def test_prefetch_raises_where_the_source_failed_and_stops_early():
    def items():
        yield 1
        yield 2
        raise MICAError("broken at 3")

    got = []
    with pytest.raises(MICAError, match="broken at 3"):
        for x in prefetch(items(), depth=1):
            got.append(x)
    assert got == [1, 2]

    closed = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    gen = prefetch(endless(), depth=2)
    assert [next(gen) for _ in range(5)] == [0, 1, 2, 3, 4]
    gen.close()  # leaving the loop early stops the thread and closes the source
    assert closed.wait(2.0)
    assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())


def test_unreadable_folder_frame_is_black_with_one_warning(tmp_path):
    from loguru import logger

    (tmp_path / "0.png").write_bytes(b"not a png at all")  # the first one: the size comes from the next
    for k in (1, 2):
        cv2.imwrite(str(tmp_path / f"{k}.png"), _coded_frame(k))
    (tmp_path / "3.png").write_bytes(b"")
    msgs = []
    sink = logger.add(lambda m: msgs.append(str(m)), level="WARNING")
    try:
        src = open_frames(tmp_path)
        first = list(src)
        second = list(src)  # a second pass warns no more
    finally:
        logger.remove(sink)
    assert src.size == (W, H) and src.unreadable == {0, 3}
    for got in (first, second):
        assert [(k, i) for k, i, _ in got] == [(k, k) for k in range(4)]
        assert not got[0][2].any() and not got[3][2].any() and got[0][2].shape == (H, W, 3)
        assert [_decode_index(rgb) for _, _, rgb in got[1:3]] == [1, 2]
    assert len(msgs) == 2 and "0.png cannot be read" in msgs[0] and "3.png cannot be read" in msgs[1]
