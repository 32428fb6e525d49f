"""Predicted meshes for the Stirling/ESRC benchmark (FG2018 "Real_images__Subset_2D_FG2018").

Images ``ROOT/images/Real_images__Subset_2D_FG2018/{HQ,LQ}/*.jpg``; the subject id (ID9) is the
first 9 characters of the file name, upper-cased, and ID5 its first 5. As in MICA, the whole
photo is resized to 224x224, faces are detected (threshold 0.1 by default) and only images with
exactly one face are used. Output: ``OUT/predicted_meshes/{HQ,LQ}/ID5/ID9.{ply,obj}`` (mm) and
``ID9.npy`` (7x3 mm). One mesh per subject id and quality, from the first image (sorted by name)
that yields exactly one face. Resumable like the NoW export.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from loguru import logger

from testing.now_export import ExportItem, ExportReport, ExportWriter, _align_single, write_export_report
from utils.errors import MICAError

PathLike = Union[str, os.PathLike]

STIRLING_IMAGES_DIR = Path("images/Real_images__Subset_2D_FG2018")
QUALITIES = ("HQ", "LQ")
STIRLING_SIZE = 224
STIRLING_THRESHOLD = 0.1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

__all__ = ["STIRLING_IMAGES_DIR", "QUALITIES", "STIRLING_THRESHOLD", "subject_ids", "prepare_resized",
           "stirling_export_items", "export_stirling"]


def subject_ids(file_name: str) -> tuple[str, str]:
    """(ID9, ID5) of a Stirling image name: its first 9 characters upper-cased, and their first 5."""
    id9 = Path(file_name).name[:9].upper()
    return id9, id9[:5]


def prepare_resized(image: np.ndarray, detector, source: str = "image"):
    """MICA's Stirling preparation: resize the photo to 224x224, detect (exactly one face), align."""
    import cv2

    from micalib.face_prep import align_face

    small = cv2.resize(image, (STIRLING_SIZE, STIRLING_SIZE), interpolation=cv2.INTER_AREA)
    return _align_single(small, detector, source, align_face)


def stirling_export_items(stirling_root: PathLike, out_dir: PathLike, detector,
                          qualities: Sequence[str] = QUALITIES) -> list[ExportItem]:
    """One work item per quality and subject id; its images (sorted) are tried in order."""
    root = Path(stirling_root)
    if not root.is_dir():
        raise FileNotFoundError(f"Stirling folder {root} does not exist (set test.stirling_root in the config or pass --stirling-root)")
    out = Path(out_dir)

    def prepare(rgb: np.ndarray, source: str):
        return prepare_resized(rgb, detector, source=source)

    items = []
    for q in qualities:
        if q not in QUALITIES:
            raise ValueError(f"Stirling quality must be HQ or LQ, not '{q}'")
        folder = root / STIRLING_IMAGES_DIR / q
        if not folder.is_dir():
            raise FileNotFoundError(f"Stirling image folder {folder} does not exist (unpack Real_images__Subset_2D_FG2018 under {root / 'images'})")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise MICAError(f"no images in {folder} (expected Stirling .jpg photos)")
        groups: dict[str, list[Path]] = {}
        for img in images:
            groups.setdefault(subject_ids(img.name)[0], []).append(img)
        for id9, imgs in groups.items():
            id5 = id9[:5]
            items.append(ExportItem(f"{q}/{id5}/{id9}", imgs, out / "predicted_meshes" / q / id5 / id9, prepare,
                                    out / "renders" / q / id5 / f"{id9}.jpg"))
    return items


def export_stirling(predictor, faces: np.ndarray, detector, stirling_root: PathLike, out_dir: PathLike,
                    qualities: Sequence[str] = QUALITIES, mesh_suffix: str = ".ply", batch_size: int = 16,
                    overwrite: bool = False, render: bool = True, shard=None) -> ExportReport:
    """Write ``out_dir/predicted_meshes/{HQ,LQ}/ID5/ID9.*`` and ``out_dir/export_report.json``
    (``shard``: this process's share; the unit is the (quality, subject) item)."""
    writer = ExportWriter(predictor, faces, mesh_suffix, batch_size, overwrite, render, shard)
    items = stirling_export_items(stirling_root, out_dir, detector, qualities)
    report = writer.run(items, desc="Stirling export")
    write_export_report(report, Path(out_dir) / "export_report.json", shard)
    logger.info(f"Stirling export: {report.written} subject meshes written, {report.skipped} already done, "
                f"{len(report.failed)} images failed -> {Path(out_dir) / 'predicted_meshes'}")
    return report
