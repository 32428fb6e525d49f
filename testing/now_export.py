"""Predicted meshes for the NoW benchmark, in the layout its official scorer reads.

For each line ``SUBJECT/CHALLENGE/NAME.jpg`` of the image list(s) (validation, test), as MICA
prepares NoW images (``models.face_prep.prepare_from_box``): photo + NoW's face box -> square crop (box centre, side
``int(1.6 x mean box side)``, three corners onto (0,0), (0,223), (223,0)) sampled bilinearly from the
float photo into 224x224 -> face detection on that crop truncated to uint8 (exactly one face) ->
ArcFace alignment of the float crop (the 112 network input is never quantised) -> network ->
``OUT/predicted_meshes/SUBJECT/CHALLENGE/NAME.{ply,obj}`` (mm, no colours) and ``NAME.npy``
(7x3 mm, NoW landmark order). Unlike MICA, an image with no face or several is reported as failed
(MICA appends nothing, so the later images of that folder get the wrong names). Previews go to
``OUT/renders/`` so the predicted folder holds only what the scorer reads. Items whose mesh and
landmarks already exist are counted as done (resumable).

Report (``export_report.json``): ``written`` and ``done`` items, ``failed`` items (no output:
key -> reason) and ``skipped`` images (dropped by the protocol while their item still got an
output: image -> reason).

``ExportWriter`` (writing, previews, the status report; batching by ``micalib.inference.batching.BatchLoop``,
the demo's loop) and its driver ``run_export`` are shared with ``testing.stirling_export``. A
sharded run (torchrun ranks or ``test.py --shard K/N``, ``micalib.inference.sharding``) exports item i of the
sorted keys in shard i mod N.
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

from models.face_prep import NotExactlyOneFace, prepare_from_box
from models.flame import M_TO_MM
from testing.now_eval import NOW_IMAGE_LISTS, read_image_list
from utils.errors import MICAError
from utils.io import atomic_save_npy, atomic_write_text, path_inside, written_file
from utils.safe_pickle import load_object_npy

PathLike = Union[str, os.PathLike]

NOW_IMAGES_DIR = Path("NoW_Dataset/final_release_version/iphone_pictures")
NOW_BOXES_DIR = Path("NoW_Dataset/final_release_version/detected_face")

__all__ = ["read_now_box", "ExportItem", "ExportReport", "ExportWriter", "write_export_report", "run_export",
           "now_export_items", "export_now", "NOW_IMAGES_DIR", "NOW_BOXES_DIR"]


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


# ---------------------------------------------------------------------------------------------
# Shared writer
# ---------------------------------------------------------------------------------------------
@dataclass
class ExportItem:
    """One output to write: ``key`` (report name), candidate ``images`` (tried in this order until
    one yields exactly one face), output ``stem`` (no suffix), ``prepare(image_rgb, source) ->
    AlignedFace``, optional preview path ``render``; ``error``: why the item cannot be made (a
    list line naming a path outside its root): it fails with that line, the others run."""

    key: str
    images: list[Path]
    stem: Path
    prepare: Callable
    render: Optional[Path] = None
    error: Optional[str] = None

    @classmethod
    def refused(cls, key: str, error: str) -> "ExportItem":
        return cls(key, [], Path(), lambda *a: None, None, error)


@dataclass
class ExportReport:
    """Outcome of an export run.

    Attributes:
        written: items written by this run.
        done: items whose outputs existed already (not redone).
        failed: item key -> reason, for items that yield no output (they make test.py exit 1).
        skipped: image -> reason, for images the protocol drops (e.g. a Stirling photo without
            exactly one face) while their item still got an output from another image.
    """

    written: int = 0
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


class ExportWriter:
    """Run prepared images through the predictor in batches and write mesh + 7 landmarks (mm).

    Args:
        predictor: ``micalib.predictor.Predictor`` (``(B,3,112,112) -> vertices (B,V,3) m, landmarks7``).
        faces: (F, 3) triangles of the FLAME topology.
        mesh_suffix: ".ply" (MICA's choice) or ".obj".
        batch_size: faces per network call.
        overwrite: redo items whose outputs exist.
        render: write a preview image per item (``ExportItem.render``).
        shard: export only this shard's items (``micalib.inference.sharding``; default: all).
    """

    def __init__(self, predictor, faces: np.ndarray, mesh_suffix: str = ".ply", batch_size: int = 16,
                 overwrite: bool = False, render: bool = True, shard=None) -> None:
        from micalib.inference.sharding import Shard

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

    @staticmethod
    def _image_key(item: ExportItem, img: Path) -> str:
        return f"{item.key}:{img.name}" if len(item.images) > 1 else item.key

    def _prepare(self, item: ExportItem, report: ExportReport):
        """The first of ``item.images`` that yields exactly one face, aligned; the images tried
        before it go to ``report.skipped``; with none, the item goes to ``report.failed``."""
        from utils.image_io import read_image

        reasons: list[tuple[str, str, bool]] = []
        for img in item.images:
            source = img.name if len(item.images) > 1 else item.key
            try:
                aligned = item.prepare(read_image(img), source)
            except (MICAError, ValueError, OSError) as e:  # FileNotFoundError is an OSError
                reasons.append((self._image_key(item, img), str(e), isinstance(e, NotExactlyOneFace)))
                continue
            for key, why, by_protocol in reasons:
                report.skipped[key] = why
                # Dropped by the protocol (not exactly one face): expected; anything else: say so.
                (logger.info if by_protocol else logger.warning)(f"skipped {key}: {why}")
            return aligned
        if len(reasons) == 1:
            why = reasons[0][1]
        else:
            why = (f"none of its {len(reasons)} images has exactly one face: "
                   + "; ".join(w for _, w, _ in reasons))
        report.failed[item.key] = why
        logger.warning(f"failed {item.key}: {why}")
        return None

    def run(self, items: Sequence[ExportItem], desc: str = "export") -> ExportReport:
        """Export every item of this shard (counting done ones); failures are recorded, not fatal."""
        from micalib.inference.batching import BatchLoop, Job

        report = ExportReport()
        todo = []
        for item in self.shard.select(items, key=lambda it: it.key):
            if item.error is not None:
                report.failed[item.key] = item.error
                logger.warning(f"failed {item.key!r}: {item.error}")
            elif not self.overwrite and self.done(item.stem):
                report.done += 1
            else:
                todo.append((item,))

        def prepare(item: ExportItem) -> list:
            aligned = self._prepare(item, report)
            return [] if aligned is None else [Job(item.key, item, aligned)]

        def finish(job, error: Optional[str], decoded: dict, i: int) -> None:
            if error is None:
                report.written += 1
            else:
                report.failed[job.name] = error
                logger.warning(f"failed {job.name}: {error}")

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
            from micalib.render.preview import render_preview
            from utils.image_io import write_image

            write_image(path, render_preview(vertices_mm, self.faces, crop), fsync=False)
        except (ImportError, ValueError) as e:  # previews are a convenience; never fail the export
            logger.debug(f"preview {path} skipped: {e}")


def write_export_report(report: ExportReport, path: PathLike, shard=None) -> None:
    """JSON report of an export run (counts, failed items, skipped images). Torchrun ranks: rank 0
    writes the sum of all ranks' reports (every rank must call this); a ``--shard K/N`` job writes
    ``NAME.shard-K-of-N.json`` beside ``path``."""
    from micalib.inference.sharding import Shard, gather

    shard = shard or Shard()
    if shard.independent:
        path = Path(path)
        path = path.with_name(f"{path.stem}.shard-{shard.index}-of-{shard.count}{path.suffix}")
    elif shard.distributed:
        parts = gather(shard, report)
        if not shard.leader:
            return
        report = ExportReport(sum(r.written for r in parts), sum(r.done for r in parts),
                              {k: v for r in parts for k, v in r.failed.items()},
                              {k: v for r in parts for k, v in r.skipped.items()})
    atomic_write_text(path, json.dumps(asdict(report), indent=2) + "\n")


def run_export(items: Sequence[ExportItem], predictor, faces: np.ndarray, out_dir: PathLike, desc: str,
               mesh_suffix: str = ".ply", batch_size: int = 16, overwrite: bool = False, render: bool = True,
               shard=None) -> ExportReport:
    """Export ``items`` with an ``ExportWriter`` (this ``shard``'s share) and write
    ``out_dir/export_report.json``: the driver of both benchmark exports."""
    writer = ExportWriter(predictor, faces, mesh_suffix, batch_size, overwrite, render, shard)
    report = writer.run(items, desc=desc)
    write_export_report(report, Path(out_dir) / "export_report.json", shard)
    return report


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
            try:  # every path of the item is built from this one checked relative path
                image = path_inside(images_dir, line, f"image list {NOW_IMAGE_LISTS[split]} line")
            except MICAError as e:
                items.append(ExportItem.refused(line, str(e)))
                continue
            rel = image.relative_to(images_dir)
            box_path = (boxes_dir / rel).with_suffix(".npy")

            def prepare(img: np.ndarray, source: str, box_path: Path = box_path):
                return prepare_from_box(img, read_now_box(box_path), detector, source=source)

            items.append(ExportItem(line, [image], out / "predicted_meshes" / rel.with_suffix(""), prepare,
                                    out / "renders" / rel.with_suffix(".jpg")))
    return items


def export_now(predictor, faces: np.ndarray, detector, now_root: PathLike, out_dir: PathLike,
               splits: Sequence[str] = ("validation", "test"), mesh_suffix: str = ".ply", batch_size: int = 16,
               overwrite: bool = False, render: bool = True, shard=None) -> ExportReport:
    """Write ``out_dir/predicted_meshes`` for NoW (see module docstring) and ``out_dir/export_report.json``
    (``shard``: this process's share, see ``ExportWriter``)."""
    items = now_export_items(now_root, out_dir, detector, splits)
    report = run_export(items, predictor, faces, out_dir, "NoW export", mesh_suffix, batch_size, overwrite, render,
                        shard)
    logger.info(f"NoW export: {report.written} written, {report.done} already done, {len(report.failed)} failed "
                f"-> {Path(out_dir) / 'predicted_meshes'} (report: {Path(out_dir) / 'export_report.json'})")
    return report

