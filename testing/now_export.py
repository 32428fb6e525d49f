"""Predicted meshes for the NoW benchmark, in the layout its official scorer reads.

For each line ``SUBJECT/CHALLENGE/NAME.jpg`` of the image list(s) (validation, test):
photo + NoW's face box -> square crop (box centre, 1.6 x mean box side) resampled to 224 ->
face detection on the crop (exactly one face, as MICA) -> ArcFace alignment -> network ->
``OUT/predicted_meshes/SUBJECT/CHALLENGE/NAME.{ply,obj}`` (mm, no colours) and ``NAME.npy``
(7x3 mm, NoW landmark order). Previews go to ``OUT/renders/`` so the predicted folder holds only
what the scorer reads. Items whose mesh and landmarks already exist are skipped (resumable).

``ExportWriter`` (writing, previews, the status report; batching by ``micalib.batching.BatchLoop``,
the demo's loop) is shared with ``testing.stirling_export``. A sharded run (torchrun ranks or
``test.py --shard K/N``, ``micalib.sharding``) exports item i of the sorted keys in shard i mod N.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from loguru import logger

from models.flame import M_TO_MM
from testing.now_eval import NOW_IMAGE_LISTS, read_image_list
from utils.errors import MICAError
from utils.io import atomic_save_npy, atomic_write_text, written_file
from utils.safe_pickle import load_object_npy

PathLike = Union[str, os.PathLike]

NOW_IMAGES_DIR = Path("NoW_Dataset/final_release_version/iphone_pictures")
NOW_BOXES_DIR = Path("NoW_Dataset/final_release_version/detected_face")
CROP_SCALE = 1.6  # crop side = 1.6 x mean(box width, box height)
CROP_SIZE = 224

__all__ = ["read_now_box", "prepare_from_box", "ExportItem", "ExportWriter", "now_export_items", "export_now",
           "NOW_IMAGES_DIR", "NOW_BOXES_DIR"]


# ---------------------------------------------------------------------------------------------
# NoW face boxes
# ---------------------------------------------------------------------------------------------
def read_now_box(path: PathLike) -> np.ndarray:
    """A NoW ``detected_face`` file (``np.save`` of a dict with left/right/top/bottom pixels) as
    (4,) float64 x1, y1, x2, y2. Read with a restricted unpickler (no code from the file runs).

    Raises:
        FileNotFoundError / MICAError: missing or not a NoW box file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"face box {path} does not exist (NoW ships them in NoW_Dataset/final_release_version/detected_face/)")
    try:
        obj = load_object_npy(path)
        return np.array([float(obj["left"]), float(obj["top"]), float(obj["right"]), float(obj["bottom"])])
    except (ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError, IndexError) as e:
        raise MICAError(f"face box {path} is not a NoW box file (dict with left/right/top/bottom): {e}") from None


def prepare_from_box(image: np.ndarray, box: np.ndarray, detector, source: str = "image"):
    """MICA's NoW preparation: box crop (x1.6) -> 224, detect (exactly one face), align.

    Returns:
        ``micalib.face_prep.AlignedFace`` (224 crop for display, (3,112,112) network input).

    Raises:
        MICAError: no face or more than one face in the crop.
    """
    from micalib.face_prep import align_face
    from utils.alignment import crop_from_box

    crop, _ = crop_from_box(image, box, scale=CROP_SCALE, size=CROP_SIZE)
    return _align_single(crop, detector, source, align_face)


def _align_single(image: np.ndarray, detector, source: str, align_face: Callable):
    faces = detector.detect(image)
    if len(faces) != 1:
        raise MICAError(f"{source}: {len(faces)} faces detected, MICA's protocol needs exactly one")
    return align_face(image, faces[0])


# ---------------------------------------------------------------------------------------------
# Shared writer
# ---------------------------------------------------------------------------------------------
@dataclass
class ExportItem:
    """One output to write: ``key`` (report name), candidate ``images`` (tried in order until one
    yields a face), output ``stem`` (no suffix), ``prepare(image_rgb, source) -> AlignedFace``,
    optional preview path ``render``."""

    key: str
    images: list[Path]
    stem: Path
    prepare: Callable
    render: Optional[Path] = None


@dataclass
class ExportReport:
    """Counts and per-image failures of an export run."""

    written: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # image key -> reason


class ExportWriter:
    """Run prepared images through the predictor in batches and write mesh + 7 landmarks (mm).

    Args:
        predictor: ``micalib.predictor.Predictor`` (``(B,3,112,112) -> vertices (B,V,3) m, landmarks7``).
        faces: (F, 3) triangles of the FLAME topology.
        mesh_suffix: ".ply" (MICA's choice) or ".obj".
        batch_size: faces per network call.
        overwrite: redo items whose outputs exist.
        render: write a preview image per item (``ExportItem.render``).
        shard: export only this shard's items (``micalib.sharding``; default: all).
    """

    def __init__(self, predictor, faces: np.ndarray, mesh_suffix: str = ".ply", batch_size: int = 16,
                 overwrite: bool = False, render: bool = True, shard=None) -> None:
        from micalib.sharding import Shard

        if mesh_suffix not in (".ply", ".obj"):
            raise ValueError(f"mesh format must be .ply or .obj, not '{mesh_suffix}'")
        self.predictor, self.faces = predictor, np.asarray(faces, dtype=np.int64)
        self.mesh_suffix, self.batch_size = mesh_suffix, max(1, int(batch_size))
        self.overwrite, self.render = overwrite, render
        self.shard = shard or Shard()

    def paths(self, stem: Path) -> tuple[Path, Path]:
        """(mesh path, landmark path) of an output stem."""
        return stem.with_name(stem.name + self.mesh_suffix), stem.with_name(stem.name + ".npy")

    def done(self, stem: Path) -> bool:
        """Both outputs of ``stem`` exist (and are not empty: see ``utils.io.written_file``)."""
        return all(written_file(p) for p in self.paths(stem))

    def run(self, items: Sequence[ExportItem], desc: str = "export") -> ExportReport:
        """Export every item of this shard (skipping done ones); failures are recorded, not fatal."""
        from micalib.batching import BatchLoop

        report = ExportReport()
        todo = []
        for item in self.shard.select(items, key=lambda it: it.key):
            if not self.overwrite and self.done(item.stem):
                report.skipped += 1
            else:
                todo.append((item,))

        def prepare(item: ExportItem) -> list:
            from micalib.batching import Job
            from utils.image_io import read_image

            for img in item.images:
                source = str(img.name) if len(item.images) > 1 else item.key
                try:
                    return [Job(item.key, item, item.prepare(read_image(img), source))]
                except (MICAError, FileNotFoundError, ValueError) as e:
                    report.failed[f"{item.key}:{img.name}" if len(item.images) > 1 else item.key] = str(e)
                    logger.warning(f"{item.key}: {e}")
            return []

        def finish(job, error: Optional[str], decoded: dict, i: int) -> None:
            if error is None:
                report.written += 1
            else:
                report.failed[job.name] = error
                logger.warning(f"{job.name}: {error}")

        BatchLoop(self.predictor, self.batch_size).run(todo, prepare, self._write, finish, fail=None, desc=desc)
        return report

    def _write(self, job, decoded: dict, i: int) -> None:
        from utils.mesh import write_mesh

        verts_mm = np.asarray(decoded["vertices"][i], dtype=np.float64) * M_TO_MM
        lmk_mm = np.asarray(decoded["landmarks7"][i], dtype=np.float64) * M_TO_MM
        mesh_path, lmk_path = self.paths(job.item.stem)
        write_mesh(mesh_path, verts_mm, self.faces, fsync=False)  # bulk outputs: see utils.io
        atomic_save_npy(lmk_path, lmk_mm.reshape(7, 3), fsync=False)
        if self.render and job.item.render is not None:
            self._preview(job.item.render, verts_mm, job.aligned.crop224)

    def _preview(self, path: Path, vertices_mm: np.ndarray, crop: np.ndarray) -> None:
        try:
            from micalib.renderer import render_preview
            from utils.image_io import write_image

            write_image(path, render_preview(vertices_mm, self.faces, crop), fsync=False)
        except (ImportError, ValueError) as e:  # previews are a convenience; never fail the export
            logger.debug(f"preview {path} skipped: {e}")


def write_export_report(report: ExportReport, path: PathLike, shard=None) -> None:
    """JSON report of an export run (counts, failures by image). Torchrun ranks: rank 0 writes the
    sum of all ranks' reports (every rank must call this); a ``--shard K/N`` job writes
    ``NAME.shard-K-of-N.json`` beside ``path``."""
    from micalib.sharding import Shard, gather

    shard = shard or Shard()
    if shard.independent:
        path = Path(path)
        path = path.with_name(f"{path.stem}.shard-{shard.index}-of-{shard.count}{path.suffix}")
    elif shard.distributed:
        parts = gather(shard, report)
        if not shard.leader:
            return
        report = ExportReport(sum(r.written for r in parts), sum(r.skipped for r in parts),
                              {k: v for r in parts for k, v in r.failed.items()})
    atomic_write_text(path, json.dumps(asdict(report), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# NoW
# ---------------------------------------------------------------------------------------------
def now_export_items(now_root: PathLike, out_dir: PathLike, detector,
                     splits: Sequence[str] = ("validation", "test")) -> list[ExportItem]:
    """Work items for the NoW image lists of ``splits`` (a missing list is an error naming it)."""
    root = Path(now_root)
    if not root.is_dir():
        raise FileNotFoundError(f"NoW folder {root} does not exist (set test.now_root in the config or pass --now-root)")
    images_dir, boxes_dir = root / NOW_IMAGES_DIR, root / NOW_BOXES_DIR
    for folder in (images_dir, boxes_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"NoW folder {folder} does not exist (unpack the NoW images and detected_face boxes under {root})")
    out = Path(out_dir)
    items, seen = [], set()
    for split in splits:
        if split not in NOW_IMAGE_LISTS:
            raise ValueError(f"NoW split must be validation or test, not '{split}'")
        for line in read_image_list(root / NOW_IMAGE_LISTS[split]):
            if line in seen:
                continue
            seen.add(line)
            rel = Path(line)
            box_path = (boxes_dir / rel).with_suffix(".npy")

            def prepare(img: np.ndarray, source: str, box_path: Path = box_path):
                return prepare_from_box(img, read_now_box(box_path), detector, source=source)

            items.append(ExportItem(line, [images_dir / rel], out / "predicted_meshes" / rel.with_suffix(""), prepare,
                                    out / "renders" / rel.with_suffix(".jpg")))
    return items


def export_now(predictor, faces: np.ndarray, detector, now_root: PathLike, out_dir: PathLike,
               splits: Sequence[str] = ("validation", "test"), mesh_suffix: str = ".ply", batch_size: int = 16,
               overwrite: bool = False, render: bool = True, shard=None) -> ExportReport:
    """Write ``out_dir/predicted_meshes`` for NoW (see module docstring) and ``out_dir/export_report.json``
    (``shard``: this process's share, see ``ExportWriter``)."""
    writer = ExportWriter(predictor, faces, mesh_suffix, batch_size, overwrite, render, shard)
    items = now_export_items(now_root, out_dir, detector, splits)
    report = writer.run(items, desc="NoW export")
    write_export_report(report, Path(out_dir) / "export_report.json", shard)
    logger.info(f"NoW export: {report.written} written, {report.skipped} already done, {len(report.failed)} failed "
                f"-> {Path(out_dir) / 'predicted_meshes'}")
    return report

