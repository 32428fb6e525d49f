"""Predicted meshes for the Stirling/ESRC benchmark (FG2018 "Real_images__Subset_2D_FG2018").

Images ``ROOT/images/Real_images__Subset_2D_FG2018/{HQ,LQ}/*.jpg``; the subject id (ID9) is the
first 9 characters of the file name, upper-cased, and ID5 its first 5. As MICA, the detector
(threshold 0.1 by default, ``detector.det_size`` 224) runs on the **full-resolution photo** and the
ArcFace crop is aligned from it (``models.face_prep.prepare_full``); a photo counts only when exactly one face is
found. MICA writes every such photo of a subject to the same ``ID9`` files, so the file left is the
one of the **last** photo in sorted path order that has exactly one face: the export walks each
subject's photos from the last one backwards and stops at the first with exactly one face (same
result, less work). The photos after it that have no face or several are ``skipped`` in the export
report; a subject none of whose photos has exactly one face is ``failed``. A subject whose ``ID9``
files exist is done (resumable). MICA's 224x224 resize of the photo feeds only its preview; our
previews show the aligned crop.

Output: ``OUT/predicted_meshes/{HQ,LQ}/ID5/ID9.{ply,obj}`` (mm) and ``ID9.npy`` (7x3 mm).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from loguru import logger

from models.face_prep import prepare_full
from testing.now_export import ExportItem, ExportReport, run_export
from utils.errors import MICAError
from utils.io import path_inside

PathLike = Union[str, os.PathLike]

STIRLING_IMAGES_DIR = Path("images/Real_images__Subset_2D_FG2018")
QUALITIES = ("HQ", "LQ")
STIRLING_THRESHOLD = 0.1
IMAGE_SUFFIX = ".jpg"  # as MICA, which lists {HQ,LQ}/*.jpg (case-sensitive)

__all__ = ["STIRLING_IMAGES_DIR", "QUALITIES", "STIRLING_THRESHOLD", "subject_ids",
           "subject_groups", "stirling_export_items", "export_stirling"]


def subject_ids(file_name: str) -> tuple[str, str]:
    """(ID9, ID5) of a Stirling image name: its first 9 characters upper-cased, and their first 5."""
    id9 = Path(file_name).name[:9].upper()
    return id9, id9[:5]


def subject_groups(folder: Path) -> dict[str, list[Path]]:
    """ID9 -> the subject's photos in ``folder``, in sorted path order (MICA's order)."""
    images = sorted((p for p in folder.iterdir() if p.suffix == IMAGE_SUFFIX and p.is_file()), key=str)
    groups: dict[str, list[Path]] = {}
    for img in images:
        groups.setdefault(subject_ids(img.name)[0], []).append(img)
    return groups


def stirling_export_items(stirling_root: PathLike, out_dir: PathLike, detector,
                          qualities: Sequence[str] = QUALITIES) -> list[ExportItem]:
    """One work item per quality and subject id; its photos are tried from the last (sorted) one
    backwards, so the first with exactly one face is the one whose mesh MICA leaves on disk."""
    root = Path(stirling_root)
    if not root.is_dir():
        raise FileNotFoundError(f"Stirling folder {root} does not exist (set test.stirling_root in the config or pass --stirling-root)")
    out = Path(out_dir)

    def prepare(rgb: np.ndarray, source: str):
        return prepare_full(rgb, detector, source=source)

    items = []
    for q in qualities:
        if q not in QUALITIES:
            raise ValueError(f"Stirling quality must be HQ or LQ, not '{q}'")
        folder = root / STIRLING_IMAGES_DIR / q
        if not folder.is_dir():
            raise FileNotFoundError(f"Stirling image folder {folder} does not exist (unpack Real_images__Subset_2D_FG2018 under {root / 'images'})")
        groups = subject_groups(folder)
        if not groups:
            raise MICAError(f"no images in {folder} (expected Stirling .jpg photos)")
        for id9, imgs in groups.items():
            key = f"{q}/{id9[:5]}/{id9}"
            try:  # ID9 comes from a file name: the outputs stay under OUT whatever it holds
                stem = path_inside(out / "predicted_meshes", key, "Stirling subject")
            except MICAError as e:
                items.append(ExportItem.refused(key, str(e)))
                continue
            items.append(ExportItem(key, imgs[::-1], stem, prepare, out / "renders" / f"{key}.jpg"))
    return items


def export_stirling(predictor, faces: np.ndarray, detector, stirling_root: PathLike, out_dir: PathLike,
                    qualities: Sequence[str] = QUALITIES, mesh_suffix: str = ".ply", batch_size: int = 16,
                    overwrite: bool = False, render: bool = True, shard=None) -> ExportReport:
    """Write ``out_dir/predicted_meshes/{HQ,LQ}/ID5/ID9.*`` and ``out_dir/export_report.json``
    (``shard``: this process's share; the unit is the (quality, subject) item)."""
    items = stirling_export_items(stirling_root, out_dir, detector, qualities)
    report = run_export(items, predictor, faces, out_dir, "Stirling export", mesh_suffix, batch_size, overwrite,
                        render, shard)
    logger.info(f"Stirling export: {report.written} subject meshes written, {report.done} already done, "
                f"{len(report.failed)} subjects failed, {len(report.skipped)} photos skipped (not exactly one face) "
                f"-> {Path(out_dir) / 'predicted_meshes'} (report: {Path(out_dir) / 'export_report.json'})")
    return report
