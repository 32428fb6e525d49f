"""The fits of a fresh track.py run in a forked process (``micalib/tracking/fit_ahead.py``): the
same numbers as the frame loop's own fits, the child's failures raised in the run, and the cases
where it must not be used."""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys

import numpy as np
import pytest
import torch

from micalib.tracking import fit_ahead, runner
from micalib.tracking.fitting import LandmarkFitter
from tests.synthetic_tracking import track_synthetic
from tests.test_tracking_exact_resume import _differences
from utils.errors import MICAError, sigterm_as_interrupt

N = 16
BLANK = (0, 1, 6, 7, 15)  # faceless frames: two before the first face (held at it), two inside, the last (held)


@pytest.fixture
def counted(monkeypatch):
    """How many ``FitAhead`` children the runner started."""
    started = []

    class Counted(fit_ahead.FitAhead):
        def __init__(self, *a, **kw):
            started.append(a[3])
            super().__init__(*a, **kw)

    monkeypatch.setattr(runner, "FitAhead", Counted)
    return started


def test_fits_in_the_child_are_the_frame_loops_own(tmp_path, counted):
    """Every .frame value, mesh, PNG, csv row, video frame and solver record of a run whose fits
    come from the child equals the run that fits in the frame loop (the oracle: the code path
    the child replaces), with faceless frames before, between and after the tracked ones."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    *_, ahead = track_synthetic(tmp_path / "a", real=False, n_frames=N, noise_px=0.5, video=True, blank_frames=BLANK)
    assert counted == [[k for k in range(N) if k not in BLANK]]  # the child fitted exactly the face frames
    *_, plain = track_synthetic(tmp_path / "b", real=False, n_frames=N, noise_px=0.5, video=True, blank_frames=BLANK,
                                extra_opts=["tracker.fit_process", "False"])
    assert len(counted) == 1  # turned off: fitted in the frame loop
    assert _differences(ahead, plain) == []
    for k in range(N):  # the solver records (the exact-resume state: the fitter's basis pose) too
        rec = f"{k:05d}.json"
        assert (ahead / ".solver" / rec).read_bytes() == (plain / ".solver" / rec).read_bytes(), rec
    assert multiprocessing.active_children() == []  # the child is gone


def test_an_exception_in_the_child_is_raised_in_the_run(tmp_path, counted, monkeypatch):
    orig, parent = LandmarkFitter.fit_frame, os.getpid()
    calls = []

    def failing(self, *a, **kw):  # the child's 4th fit fails (the parent's keyframe fits, if any, do not count)
        if os.getpid() != parent:
            calls.append(1)
            if len(calls) == 4:
                raise ValueError("fit failed in the child")
        return orig(self, *a, **kw)

    monkeypatch.setattr(LandmarkFitter, "fit_frame", failing)
    with pytest.raises(ValueError, match="fit failed in the child"):
        track_synthetic(tmp_path, real=False, n_frames=8, noise_px=0.3)
    assert len(counted) == 1
    assert multiprocessing.active_children() == []
    written = sorted(p.name for p in (tmp_path / "out" / "clip" / "checkpoint").glob("*.frame"))
    assert written == [f"{k:05d}.frame" for k in range(3)]  # the frames fitted before it are written


def test_a_killed_child_is_one_line(tmp_path, counted, monkeypatch):
    orig, parent = LandmarkFitter.fit_frame, os.getpid()
    calls = []

    def dying(self, *a, **kw):  # the child dies in its 3rd fit
        if os.getpid() != parent:
            calls.append(1)
            if len(calls) == 3:
                os._exit(9)  # as killed: no message, no exception
        return orig(self, *a, **kw)

    monkeypatch.setattr(LandmarkFitter, "fit_frame", dying)
    with pytest.raises(MICAError, match=r"^the fitting process ended before frame 2 \(killed\?\); run track.py "
                                        r"again: it resumes"):
        track_synthetic(tmp_path, real=False, n_frames=8, noise_px=0.3)
    assert len(counted) == 1
    assert multiprocessing.active_children() == []


def test_where_the_child_is_not_used():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert fit_ahead.fit_ahead_possible(True, photometric=False, resumed=False) == (
            os.name == "posix" and os.uname().sysname == "Linux")
        assert not fit_ahead.fit_ahead_possible(False, photometric=False, resumed=False)  # tracker.fit_process False
        assert not fit_ahead.fit_ahead_possible(True, photometric=True, resumed=False)  # refines each state first
        assert not fit_ahead.fit_ahead_possible(True, photometric=False, resumed=True)  # restores frame by frame
        torch.set_num_threads(2)  # other BLAS results than a one-thread fit
        assert not fit_ahead.fit_ahead_possible(True, photometric=False, resumed=False)
    finally:
        torch.set_num_threads(threads)


def _possible_here(conn) -> None:
    torch.set_num_threads(1)
    conn.send(fit_ahead.fit_ahead_possible(True, photometric=False, resumed=False))
    conn.close()


def test_not_inside_a_daemonic_process():
    """A multiprocessing.Pool worker is daemonic and may not start children: the frame loop fits there."""
    ctx = multiprocessing.get_context("fork")
    for daemon in (True, False):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_possible_here, args=(send,), daemon=daemon)
        proc.start()
        send.close()
        possible = recv.recv()
        proc.join()
        assert possible is (not daemon and os.uname().sysname == "Linux")


def test_a_resumed_run_fits_in_the_frame_loop(tmp_path, counted, monkeypatch):
    """A re-run with finished frames restores the solver frame by frame: no child."""
    *_, out = track_synthetic(tmp_path, real=False, n_frames=6, noise_px=0.3)
    assert len(counted) == 1
    for k in (4, 5):
        (out / "checkpoint" / f"{k:05d}.frame").unlink()
    import track
    from tests.synthetic_tracking import argv_of_last_run

    track.main(argv_of_last_run(out, video=False))
    assert len(counted) == 1
    assert np.all([(out / "checkpoint" / f"{k:05d}.frame").is_file() for k in range(6)])


class _SignalReporter:
    """A stand-in fitter whose 'fit' reports how the child handles Ctrl-C and SIGTERM."""

    _basis = None

    def fit_frame(self, obs, valid, init, prev):
        from micalib.tracking.fitting import FrameFit, FrameState

        rms = {"sigint_ignored": float(signal.getsignal(signal.SIGINT) is signal.SIG_IGN),
               "sigterm_default": float(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)}
        return FrameFit(FrameState(), 0.0, rms, 0, np.zeros((0, 2)))


def test_the_child_leaves_ctrl_c_and_sigterm_to_the_parent():
    """The child does not inherit track.py's SIGTERM-as-Ctrl-C handler nor react to Ctrl-C (sent to
    the whole process group): an interrupted run ends it from the parent, with no traceback of its own
    (seen once: a KeyboardInterrupt raised in the child after its last fit, printed by
    multiprocessing)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the fitting process is forked on Linux only")
    with sigterm_as_interrupt(), fit_ahead.FitAhead(_SignalReporter(), [None] * 3, [None] * 3, [0, 1, 2]) as ahead:
        _state, rms, _bpose = ahead.take(0)
    assert rms == {"sigint_ignored": 1.0, "sigterm_default": 1.0}
    assert multiprocessing.active_children() == []


def test_the_child_ends_when_the_run_stops_reading():
    """A run killed without a word (kill -9: no close()) leaves the child no reader of its pipe: it
    must end by itself (it held a copy of the reading end once, and blocked forever on a full pipe)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the fitting process is forked on Linux only")
    n = 5000  # far more fits than the pipe holds
    ahead = fit_ahead.FitAhead(_SignalReporter(), [None] * n, [None] * n, list(range(n)))
    try:
        ahead.take(0)
        ahead._recv.close()  # what the parent's death does to its end
        ahead._proc.join(timeout=30)
        assert not ahead._proc.is_alive()
    finally:
        ahead.close()
