"""What a re-run of track.py may reuse: the run record, finished frames and the per-frame csv rows.

* ``OUT/NAME/.track_run.json`` records the options that shape the outputs (input file and its size
  and mtime, fps, ``--begin-frame``, crop size, landmarks / identity file hashes, photometric, the ``tracker`` config
  section and the FLAME / MediaPipe / eyelid files). A re-run with other options is refused in one
  line naming the option (``--overwrite`` or another ``-o`` is the fix): finished frames are reused
  only by a run with the same options.
* A frame is finished when its solver record ``.solver/NNNNN.json`` (``solver_state.py``, written
  last) is there, its ``checkpoint/NNNNN.frame``, ``mesh/NNNNN.ply``, ``input/NNNNN.png`` and ``depth/NNNNN.png`` have
  the sizes recorded there, and the ``.frame`` reads back with finite values of the right shapes.
* ``OUT/NAME/.tracking_rows.jsonl`` holds the csv row of each written frame as it is written (one
  appended line each), so that a killed run's rows are back in ``tracking.csv`` after the re-run.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import threading
from pathlib import Path

from loguru import logger

from micalib.tracking.layout import RUN_RECORD, TrackLayout
from micalib.tracking.outputs import frame_problem, read_frame
from micalib.tracking.solver_state import FrameRecord, read_frame_state
from utils.errors import MICAError
from utils.io import atomic_write_text, written_file

# tracker keys that change speed only, not the outputs
_NO_EFFECT = ("workers", "png_compression", "fit_process")
# what a record written before an option existed means by its absence (the option's old behaviour)
_ABSENT = {"begin_frame": 0}
# recorded to explain a refusal, never compared
_INFO = ("tracker_values",)
# how the refusal names each recorded option
# Version of the files' format, recorded with the options: outputs of another version are refused.
# 2: K in the renderers' pixel convention (pixel i's centre at i + 0.5), numpy-1 pickle names, depth/.
FORMAT_VERSION = 2
OPTION_NAMES = {"format": "the file format version (outputs of an older track.py)", "input": "-i (path)", "input_stat": "-i (file size / modification time)", "fps": "--fps",
                "begin_frame": "--begin-frame",
                "image_size": "--image-size", "landmarks": "--landmarks (file content)",
                "identity": "--identity (file content)", "photometric": "--photometric",
                "tracker": "the tracker.* config", "assets": "the FLAME / MediaPipe / eyelid files"}


def file_hash(path) -> str:
    """SHA-1 of a file's content (16 hex digits); "missing" when it cannot be read (its loader says why)."""
    h = hashlib.sha1()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return "missing"
    return h.hexdigest()[:16]


def _stat(path) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def run_settings(options, source, landmarks_path, identity_path, asset_paths: dict) -> dict:
    """The options of this run that shape its outputs (JSON-able; ``options`` a ``TrackOptions``:
    its config keys are recorded as the hash of the config's ``tracker`` section)."""
    tracker = {k: v for k, v in options.config_values().items() if k not in _NO_EFFECT}
    tracker_text = json.dumps(tracker, sort_keys=True, default=str)
    return {"format": FORMAT_VERSION,
            "input": str(Path(source.path).expanduser().resolve()),
            "input_stat": f"{source.n_input_frames}:{_stat(source.path)}",
            "fps": None if source.fps is None else float(source.fps),
            "begin_frame": int(getattr(source, "begin", 0)),
            "image_size": int(options.image_size),
            "landmarks": None if landmarks_path is None else file_hash(landmarks_path),
            "identity": None if identity_path is None else file_hash(identity_path),
            "photometric": bool(options.photometric),
            "tracker": hashlib.sha1(tracker_text.encode()).hexdigest()[:16],
            "tracker_values": json.loads(tracker_text),  # not compared: names the keys when the hash differs
            "assets": {k: f"{p}|{_stat(p)}" for k, p in sorted(asset_paths.items())}}


def check_run_record(layout: TrackLayout, settings: dict) -> bool:
    """Refuse a re-run into ``layout.root`` with other options. Returns whether a record exists;
    a first run records its options with :func:`write_run_record` once its inputs are accepted (a
    run refused at its input check leaves no record that would refuse the corrected command).

    Raises:
        MICAError: it holds frames of a run with other options (or without a record).
    """
    out, path = layout.root, layout.run_record
    fix = "pass --overwrite to track it again from scratch, or another -o"
    if written_file(path):
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if not isinstance(old, dict):
            raise MICAError(f"run record {path} is unreadable; {fix}")
        for key, value in settings.items():
            if key not in _INFO and old.get(key, _ABSENT.get(key)) != value:
                if key == "tracker":
                    change = _config_change(old.get("tracker_values"), settings.get("tracker_values"))
                else:
                    shown = (lambda v: v if not isinstance(v, dict) else "changed")
                    change = f"{shown(old.get(key, _ABSENT.get(key)))} before, {shown(value)} now"
                raise MICAError(f"{out} was tracked with other options ({OPTION_NAMES.get(key, key)}: {change}); {fix}")
        return True
    if layout.has_frames():
        raise MICAError(f"{out} holds tracked frames but no record of their options ({RUN_RECORD}); {fix}")
    return False


def _flat(values: dict, prefix: str = "tracker.") -> dict:
    out = {}
    for k, v in values.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _config_change(old, new) -> str:
    """The ``tracker`` keys that differ between two recorded sections (at most three named), or what
    is known when the old record holds only the section's hash (written before the values were kept)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ("a key differs; the record, written by an older track.py, holds only a hash of the section "
                "(a key added to track.py since, e.g. tracker.fit.calib_window_s, changes it too)")
    a, b = _flat(old), _flat(new)
    diffs = [f"{k} {a.get(k, 'absent')} before, {b.get(k, 'absent')} now" for k in sorted(set(a) | set(b))
             if a.get(k, "absent") != b.get(k, "absent")]
    return ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "") if diffs else "changed"


def record_camera(layout: TrackLayout, camera: dict) -> None:
    """Add what the keyframes decided about the camera (``focal_prior.CameraEstimate``, source
    pixels) to the run record as its ``camera`` entry (not an option: re-runs do not compare it)."""
    path = layout.run_record
    try:
        rec = json.loads(path.read_text()) if written_file(path) else {}
    except (OSError, ValueError):
        rec = {}
    rec["camera"] = camera
    atomic_write_text(path, json.dumps(rec, indent=1, sort_keys=True), fsync=False)


def write_run_record(layout: TrackLayout, settings: dict) -> None:
    """Record the options of the run (``check_run_record``), unless recorded already."""
    if not written_file(layout.run_record):
        atomic_write_text(layout.run_record, json.dumps(settings, indent=1, sort_keys=True), fsync=False)


def finished_frames(layout: TrackLayout, n: int) -> list[FrameRecord | None]:
    """Per output frame its solver record (``solver_state.py``) when the frame is finished: the
    record is there, its input and depth .png, .ply and .frame have the recorded sizes, and the .frame reads back
    with every array of the original's shapes and finite values; else None. Damaged frames are
    tracked again (one warning naming the first three)."""
    done: list[FrameRecord | None] = [None] * n
    bad = []
    for k in range(n):
        rec, why = read_frame_state(layout, k)
        if rec is None:
            if why != "not finished":
                bad.append(why)
            continue
        try:
            problem = frame_problem(read_frame(layout.frame(k)))
        except MICAError:
            problem = "unreadable"
        if problem is not None:
            bad.append(f"{layout.frame(k)}: {problem}")
            continue
        done[k] = rec
    if bad:
        shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        logger.warning(f"{len(bad)} frame(s) with an unreadable checkpoint or a damaged file ({shown}): "
                       "tracking those frames again")
    return done


class RowJournal:
    """Appends each written frame's csv row to ``OUT/NAME/.tracking_rows.jsonl`` (thread-safe)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._f = open(self.path, "a", encoding="utf-8")
        if self._f.tell() > 0:  # a killed run's last line may be cut short: the next row starts on a line of its own
            self._f.write("\n")

    def add(self, row: dict) -> None:
        line = json.dumps(row) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            self._f.close()


def old_rows(layout: TrackLayout) -> dict[int, dict]:
    """The csv rows of earlier runs: ``tracking.csv`` overlaid with the journal of a killed run."""
    rows: dict[int, dict] = {}
    path = layout.csv
    if written_file(path):
        try:
            with open(path, newline="") as f:
                rows = {int(r["frame"]): r for r in csv.DictReader(f)}
        except (OSError, ValueError, KeyError):
            rows = {}
    journal = layout.rows_journal
    if written_file(journal):
        try:
            with open(journal, encoding="utf-8") as f:
                for line in f:
                    try:
                        r = json.loads(line)
                        rows[int(r["frame"])] = r
                    except (ValueError, KeyError, TypeError):
                        continue  # the line a kill cut short
        except OSError:
            pass
    return rows
