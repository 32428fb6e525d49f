"""The exact per-frame solver state of a tracked frame, kept beside the ``.frame`` so that a re-run
after a kill continues bit-identically to a run that was never stopped.

A ``.frame`` holds float32 values as the original tracker's clients read them; the solver works in
float64. For each written frame ``OUT/NAME/.solver/NNNNN.json`` records, in float64 (JSON's shortest
round-trip repr, so exact):

* the frame's state (expression, jaw/eye axis-angles, eyelids, camera R and t): the warm start and
  the smoothing reference of the next fitted frame, and what the overlay video draws;
* ``basis_pose``: the jaw/eye pose at which the fitter's cached expression Jacobian was built when
  this frame was fitted (``LandmarkFitter._basis``; the basis is rebuilt from that pose, which gives
  the same numbers as the one the uninterrupted run reused);
* the byte sizes of the frame's ``input/NNNNN.png``, ``depth/NNNNN.png``, ``mesh/NNNNN.ply`` and
  ``checkpoint/NNNNN.frame``: a file cut short or replaced afterwards no longer matches, so the frame
  is tracked again (a size check costs one ``stat`` per file).

It is written last, after the frame's files and its ``tracking.csv`` journal row: its presence marks
the frame finished. The intrinsics and a refined identity are not stored: they are fitted again on
the keyframes on every run, from the landmarks alone, so they are the same numbers.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from micalib.tracking.fitting import FrameState
from micalib.tracking.layout import TrackLayout
from utils.io import atomic_save_npy, atomic_write_text

# Test hook: the process ends (os._exit, like a kill -9) after this many frames were written.
EXIT_AFTER_ENV = "MICA_TRACK_EXIT_AFTER_FRAMES"
_exit_lock = threading.Lock()
_written = [0]


@dataclass
class FrameRecord:
    state: FrameState
    basis_pose: np.ndarray | None
    sizes: dict[str, int]


def frame_files(layout: TrackLayout, k: int) -> dict[str, Path]:
    """The files of frame k whose sizes are recorded (by their path relative to ``OUT/NAME``)."""
    return {p.relative_to(layout.root).as_posix(): p
            for p in (layout.png(k), layout.depth(k), layout.mesh(k), layout.frame(k))}


def write_frame_state(layout: TrackLayout, k: int, st: FrameState, basis_pose: np.ndarray | None) -> None:
    """Record frame k's state and its files' sizes (call after its files are written)."""
    sizes = {rel: os.stat(p).st_size for rel, p in frame_files(layout, k).items()}
    doc = {"exp": st.exp.tolist(), "pose": st.pose.tolist(), "eyelids": st.eyelids.tolist(),
           "r": st.r.reshape(-1).tolist(), "t": st.t.tolist(),
           "basis_pose": None if basis_pose is None else np.asarray(basis_pose, np.float64).tolist(),
           "sizes": sizes}
    atomic_write_text(layout.solver_state(k), json.dumps(doc), fsync=False)
    _maybe_exit()


def _maybe_exit() -> None:
    limit = os.environ.get(EXIT_AFTER_ENV)
    if not limit:
        return
    with _exit_lock:
        _written[0] += 1
        if _written[0] >= int(limit):
            os._exit(137)


def _vector(doc: dict, key: str, n: int) -> np.ndarray:
    v = np.asarray(doc[key], np.float64)
    if v.shape != (n,) or not np.isfinite(v).all():
        raise ValueError(key)
    return v


def read_frame_state(layout: TrackLayout, k: int) -> tuple[FrameRecord | None, str]:
    """Frame k's record and "" when it is complete and its files have the recorded sizes; else
    (None, why)."""
    path = layout.solver_state(k)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        st = FrameState(_vector(doc, "exp", len(doc["exp"])), _vector(doc, "pose", 9), _vector(doc, "eyelids", 2),
                        _vector(doc, "r", 9).reshape(3, 3), _vector(doc, "t", 3))
        bp = None if doc["basis_pose"] is None else _vector(doc, "basis_pose", 9)
        sizes = {str(rel): int(v) for rel, v in doc["sizes"].items()}
    except FileNotFoundError:
        return None, "not finished"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, f"{path} is unreadable"
    for rel, p in frame_files(layout, k).items():
        try:
            size = os.stat(p).st_size
        except OSError:
            return None, f"{p} is missing"
        if sizes.get(rel) != size:
            return None, f"{p} has {size} bytes, {sizes.get(rel)} when written (cut short or replaced)"
    return FrameRecord(st, bp, sizes), ""


def restore_basis(fitter, basis_pose: np.ndarray | None) -> None:
    """Give ``fitter`` the expression Jacobian it had after fitting a finished frame (its pose)."""
    if basis_pose is not None:
        fitter._basis = (basis_pose.copy(), fitter.model.exp_basis(basis_pose))


def basis_pose_of(fitter) -> np.ndarray | None:
    """The pose of the fitter's cached expression Jacobian (None before the first fit)."""
    return None if fitter._basis is None else fitter._basis[0].copy()


# --photometric: the appearance (per-vertex albedo, SH lighting) carries over frames; it is kept for
# the last KEEP_APPEARANCE fitted frames (more than the frames a kill can leave unfinished after the
# last finished fitted one: the writer pool holds at most 8), older files are removed as the run goes.
KEEP_APPEARANCE = 32


def save_appearance(layout: TrackLayout, k: int, appearance: np.ndarray, drop: int | None = None) -> None:
    """Keep the appearance after fitting frame k (call before ``write_frame_state``); remove frame
    ``drop``'s."""
    atomic_save_npy(layout.appearance(k), np.asarray(appearance, np.float32), fsync=False)
    if drop is not None:
        layout.appearance(drop).unlink(missing_ok=True)


def load_appearance(layout: TrackLayout, k: int) -> np.ndarray | None:
    """The appearance kept after fitting frame k, or None (not kept, unreadable)."""
    try:
        return np.load(layout.appearance(k), allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
