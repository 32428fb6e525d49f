"""The per-frame fits of a fresh run computed ahead in a forked process, beside the writer threads.

The per-frame Levenberg-Marquardt fit (``LandmarkFitter.fit_frame``) is sequential (each frame
starts from the previous one) and is Python and small numpy operations that hold the GIL. In one
process the writer threads' Python (posing the mesh, dispatching the rasterisation, pickling the
``.frame``, drawing the landmarks) competes for the same GIL, and the fit, the critical path of the
second pass, waits for it: on justin.mp4 (2 cores) the fit took 13 ms of wall time per frame for
6 ms of its own CPU (bench/README.md, "Tracking"). ``FitAhead`` forks the process once, before the
second pass starts any thread; the child (its own interpreter, so its own GIL) runs the fits of the
frames with a face in order and sends each frame's state, RMS and the fitter's expression-Jacobian
pose through a pipe; the frame loop takes them instead of fitting.

The same numbers as fitting in the process: the child is a copy of the process at that moment (the
same fitter with its intrinsics and cached Jacobian, model and settings, torch on one thread) and
makes the same calls in the same order as the frame loop of a fresh run does (face frames only,
each warm-started from the previous face frame; faceless frames are interpolated or held, never
fitted, while fewer than ``MAX_HELD`` of them precede the first face). Tested bit for bit against
the in-process fits (tests/test_tracking_fit_ahead.py).

Used only where all of that holds and ``fork`` is safe: Linux, torch on one thread, no photometric
stage (it refines each state with the frame's pixels before the next fit starts from it), a run
with no finished frames (a resumed run restores the solver frame by frame), not inside a daemonic
process (e.g. a ``multiprocessing.Pool`` worker, which may not start children) and
``tracker.fit_process`` True (the default). Elsewhere the frame loop fits in its own thread, as before.
"""
from __future__ import annotations

import multiprocessing
import signal
import sys
from collections.abc import Sequence

import numpy as np
import torch

from micalib.tracking.fitting import FrameState, LandmarkFitter
from micalib.tracking.solver_state import basis_pose_of
from utils.errors import MICAError

__all__ = ["FitAhead", "fit_ahead_possible"]

# Left to the parent: Ctrl-C reaches the whole process group and track.py turns SIGTERM into Ctrl-C
# (utils.errors.sigterm_as_interrupt); the child ignores the one and dies quietly of the other, so an
# interrupted run ends it from the parent without a traceback of the child's.
_PARENTS_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def fit_ahead_possible(enabled: bool, photometric: bool, resumed: bool) -> bool:
    """Whether ``FitAhead`` may replace the frame loop's own fits (see the module docstring)."""
    return (bool(enabled) and not photometric and not resumed and sys.platform.startswith("linux")
            and torch.get_num_threads() == 1 and "fork" in multiprocessing.get_all_start_methods()
            and not multiprocessing.current_process().daemon)  # a daemonic process may not have children


class FitAhead:
    """The fits of ``frames`` (output frame numbers with a face, ascending), computed by a forked
    child; ``take(k)`` returns frame k's in that order. Use as a context manager (the child is
    stopped on leaving it, also after an error)."""

    def __init__(self, fitter: LandmarkFitter, obs: Sequence[np.ndarray], valid: Sequence[np.ndarray],
                 frames: Sequence[int]) -> None:
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_fit_frames, args=(fitter, obs, valid, list(frames), send, self._recv),
                                 name="track-fit", daemon=True)
        # blocked until the child has set its own handlers (it unblocks them), then restored here
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENTS_SIGNALS)
        try:
            self._proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        send.close()  # the child's end: EOF here when the child ends

    def take(self, k: int) -> tuple[FrameState, dict[str, float], np.ndarray | None]:
        """Frame k's fit: (state, RMS by landmark set, the fitter's basis pose after it).

        Raises:
            the child's exception, as raised there; MICAError when the child ended without one
            (killed: a re-run resumes from the last finished frame).
        """
        try:
            msg = self._recv.recv()
        except (EOFError, OSError):
            raise MICAError(f"the fitting process ended before frame {k} (killed?); run track.py again: it "
                            "resumes from the last finished frame (or set tracker.fit_process False)") from None
        if msg[0] == "error":
            raise msg[1]
        _tag, kk, state, rms, bpose = msg
        if kk != k:  # the frame loop asked for another frame than the child fitted: a logic error here
            raise RuntimeError(f"FitAhead: the fit of frame {kk} came where frame {k} was expected")
        return state, rms, bpose

    def close(self) -> None:
        self._recv.close()
        if self._proc.is_alive():
            self._proc.kill()
        self._proc.join()

    def __enter__(self) -> FitAhead:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fit_frames(fitter: LandmarkFitter, obs, valid, frames: list[int], send, recv) -> None:
    """The child: the frame loop's fits of a fresh run, in order, each sent as soon as it is done.
    ``recv``: its copy of the parent's end, closed first, so that a parent gone without a word
    (kill -9) leaves the pipe without a reader and the next send ends the child."""
    recv.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _PARENTS_SIGNALS)
    try:
        prev = None
        for k in frames:
            res = fitter.fit_frame(obs[k], valid[k], prev, prev)
            send.send(("fit", k, res.state, res.rms, basis_pose_of(fitter)))
            prev = res.state
    except BaseException as e:  # noqa: BLE001 - every failure goes to the parent, which raises it
        try:
            try:
                send.send(("error", e))
            except (TypeError, AttributeError, ValueError):  # an exception that does not pickle: its text
                send.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))
        except OSError:  # the parent stopped listening
            pass
    finally:
        send.close()
