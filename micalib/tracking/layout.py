"""Where a tracking run writes: ``TrackLayout``, the one owner of the paths under ``OUT/NAME`` (like
the original tracker's folder attributes).

    OUT/NAME/checkpoint/NNNNN.frame   mesh/NNNNN.ply   input/NNNNN.png
             canonical.obj identity.npy landmarks.npz crop.json bbox.pt tracking.csv video.mp4
             .crops.raw (landmark pass -> second pass, deleted) .track_run.json (the run's options)
             .tracking_rows.jsonl (csv rows of written frames, until tracking.csv has them)
"""
from __future__ import annotations

import shutil
from pathlib import Path

from micalib.tracking.outputs import frame_name

CHECKPOINT, MESH, INPUT = "checkpoint", "mesh", "input"
RUN_RECORD = ".track_run.json"
ROWS_JOURNAL = ".tracking_rows.jsonl"
CROP_CACHE = ".crops.raw"
# the files track.py writes directly into OUT/NAME
TOP_FILES = ("canonical.obj", "identity.npy", "landmarks.npz", "crop.json", "bbox.pt", "tracking.csv",
             "video.mp4", CROP_CACHE, RUN_RECORD, ROWS_JOURNAL)


class TrackLayout:
    """The output files of one tracked input, ``out_root/name``.

    Attributes:
        root: ``OUT/NAME``; ``landmarks``, ``bbox``, ``crop_json``, ``identity``, ``canonical``,
            ``csv``, ``video``, ``crop_cache``, ``run_record``, ``rows_journal``: its files.
    """

    def __init__(self, out_root, name: str) -> None:
        self.root = Path(out_root) / name
        r = self.root
        self.landmarks = r / "landmarks.npz"
        self.bbox = r / "bbox.pt"
        self.crop_json = r / "crop.json"
        self.identity = r / "identity.npy"
        self.canonical = r / "canonical.obj"
        self.csv = r / "tracking.csv"
        self.video = r / "video.mp4"
        self.crop_cache = r / CROP_CACHE
        self.run_record = r / RUN_RECORD
        self.rows_journal = r / ROWS_JOURNAL

    def frame(self, k: int) -> Path:
        """``checkpoint/NNNNN.frame`` of output frame ``k`` (written last: marks the frame finished)."""
        return self.root / CHECKPOINT / f"{frame_name(k)}.frame"

    def mesh(self, k: int) -> Path:
        """``mesh/NNNNN.ply`` of output frame ``k``."""
        return self.root / MESH / f"{frame_name(k)}.ply"

    def png(self, k: int) -> Path:
        """``input/NNNNN.png`` (the crop) of output frame ``k``."""
        return self.root / INPUT / f"{frame_name(k)}.png"

    def has_frames(self) -> bool:
        """Any ``checkpoint/*.frame`` present."""
        return any((self.root / CHECKPOINT).glob("*.frame"))

    def make_dirs(self) -> None:
        for sub in (CHECKPOINT, MESH, INPUT):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """``--overwrite``: remove what track.py wrote into ``root`` (nothing else)."""
        for name in (CHECKPOINT, MESH, INPUT, *TOP_FILES):
            p = self.root / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
