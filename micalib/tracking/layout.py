"""Where a tracking run writes: ``TrackLayout``, the one owner of the paths under ``OUT/NAME`` (like
the original tracker's folder attributes).

    OUT/NAME/checkpoint/NNNNN.frame   mesh/NNNNN.ply   input/NNNNN.png   depth/NNNNN.png
             canonical.obj identity.npy landmarks.npz crop.json bbox.pt tracking.csv video.mp4
             .crops.raw (landmark pass -> second pass, deleted) .track_run.json (the run's options)
             .tracking_rows.jsonl (csv rows of written frames, until tracking.csv has them)
             .track_lock (held while a run writes here: one run per OUT/NAME)

It also keeps the run's hands off the user's files: ``check_input`` refuses an ``OUT/NAME`` that is,
contains or lies inside the input folder (or holds the input video), ``clear`` (``--overwrite``)
removes only the files of these names, and ``lock`` lets one run at a time write into ``OUT/NAME``.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from micalib.inference.output_lock import output_lock
from micalib.tracking.outputs import frame_name
from utils.errors import MICAError
from utils.io import RELATION_WORDS, folder_relation

CHECKPOINT, MESH, INPUT, DEPTH = "checkpoint", "mesh", "input", "depth"
RUN_RECORD = ".track_run.json"
ROWS_JOURNAL = ".tracking_rows.jsonl"
CROP_CACHE = ".crops.raw"
LOCK_FILE = ".track_lock"
# the files track.py writes directly into OUT/NAME
TOP_FILES = ("canonical.obj", "identity.npy", "landmarks.npz", "crop.json", "bbox.pt", "tracking.csv",
             "video.mp4", "index.html", CROP_CACHE, RUN_RECORD, ROWS_JOURNAL)
VIEWER = "viewer"  # the viewer page's scripts (micalib.viewer.page)
# the files of each sub-folder track.py writes (per frame: 5 digits, more beyond frame 99999)
FRAME_FILES = {CHECKPOINT: re.compile(r"\d{5,}\.frame"), MESH: re.compile(r"\d{5,}\.ply"),
               INPUT: re.compile(r"\d{5,}\.png"), DEPTH: re.compile(r"\d{5,}\.png"),
               VIEWER: re.compile(r"data\.js|three\.bundle\.js|viewer\.js|THREE_LICENSE\.txt")}
# what a run derives from its input before the run record exists (cleared when there is no record)
DERIVED = ("landmarks.npz", "bbox.pt", "identity.npy")


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
        self.glb = r / f"{name}.glb"  # the animated clip (micalib.export.gltf)
        self.page = r / "index.html"  # the viewer page (micalib.viewer.page)

    def frame(self, k: int) -> Path:
        """``checkpoint/NNNNN.frame`` of output frame ``k`` (written last: marks the frame finished)."""
        return self.root / CHECKPOINT / f"{frame_name(k)}.frame"

    def mesh(self, k: int) -> Path:
        """``mesh/NNNNN.ply`` of output frame ``k``."""
        return self.root / MESH / f"{frame_name(k)}.ply"

    def png(self, k: int) -> Path:
        """``input/NNNNN.png`` (the crop) of output frame ``k``."""
        return self.root / INPUT / f"{frame_name(k)}.png"

    def depth(self, k: int) -> Path:
        """``depth/NNNNN.png`` (camera-space depth in mm, ``micalib.tracking.depth``) of output frame ``k``."""
        return self.root / DEPTH / f"{frame_name(k)}.png"

    def has_frames(self) -> bool:
        """Any ``checkpoint/NNNNN.frame`` present."""
        return any(FRAME_FILES[CHECKPOINT].fullmatch(p.name) for p in (self.root / CHECKPOINT).glob("*.frame"))

    def make_dirs(self) -> None:
        for sub in (CHECKPOINT, MESH, INPUT, DEPTH):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def clear(self) -> None:
        """``--overwrite``: remove what track.py writes into ``root``, by name (``TOP_FILES`` and
        the per-frame files ``FRAME_FILES``; a sub-folder is removed only when that leaves it empty);
        nothing else, never a whole folder."""
        for p in [self.root / name for name in TOP_FILES] + [self.glb]:
            if p.is_symlink() or p.is_file():
                p.unlink()
        for sub, pattern in FRAME_FILES.items():
            folder = self.root / sub
            if folder.is_symlink() or not folder.is_dir():
                continue
            for p in folder.iterdir():
                if pattern.fullmatch(p.name) and (p.is_symlink() or p.is_file()):
                    p.unlink()
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty

    def clear_unrecorded(self) -> None:
        """Without a run record: remove what an earlier attempt derived from its input before its
        options were recorded (``DERIVED``: its options, which shaped them, are unknown)."""
        for name in DERIVED:
            (self.root / name).unlink(missing_ok=True)

    def check_input(self, input_path) -> None:
        """Refuse an ``OUT/NAME`` that is, contains or lies inside the input folder, or that holds
        the input video: its files would be written among the user's (one line, before anything
        is written)."""
        inp = Path(input_path)
        if inp.is_dir():
            relation = folder_relation(inp, self.root)
            where = None if relation is None else f"{RELATION_WORDS[relation]} the input folder {inp}"
        else:
            inside = folder_relation(self.root, inp.parent) in ("same", "inside")
            where = f"holds the input video {inp}" if inside else None
        if where is not None:
            raise MICAError(f"-o {self.root.parent}: the outputs would go to {self.root}, which {where}; they "
                            "would replace or delete files there: pass an -o outside the input folder")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``OUT/NAME/.track_lock`` (``micalib.inference.output_lock``): a second run into the
        same ``OUT/NAME`` is refused in one line; a dead owner's lock is taken over."""
        with output_lock(self.root, lock_file=LOCK_FILE, what="track.py run"):
            yield
