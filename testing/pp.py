"""MeshLab PickedPoints (``.pp``) landmark files, as shipped with the NoW scans.

A ``.pp`` file is XML: ``<PickedPoints>`` holding ``<point x=".." y=".." z=".." name=".."/>``
elements, one per landmark, in order. NoW's scan files hold the 7 landmarks (mm) in NoW order.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from utils.errors import MICAError, UserFileNotFound
from utils.io import atomic_write_text

PathLike = str | os.PathLike

__all__ = ["read_pp", "write_pp"]


def read_pp(path: PathLike, expected: int | None = 7) -> np.ndarray:
    """Read the picked points of a MeshLab ``.pp`` file.

    Args:
        path: the ``.pp`` file.
        expected: number of points required (None = any).

    Returns:
        (N, 3) float64 points in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        MICAError: not a PickedPoints XML file, or the wrong number of points.
    """
    path = Path(path)
    if not path.is_file():
        raise UserFileNotFound(f"landmark file {path} does not exist (NoW ships them in scans_lmks_onlypp/SUBJECT/)")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise MICAError(f"landmark file {path} is not valid PickedPoints XML ({e}); re-export it from MeshLab") from None
    pts = []
    for el in root.iter("point"):
        try:
            pts.append([float(el.attrib[k]) for k in ("x", "y", "z")])
        except (KeyError, ValueError):
            raise MICAError(f"landmark file {path} has a <point> without numeric x/y/z attributes; fix or re-export it") from None
    if expected is not None and len(pts) != expected:
        raise MICAError(f"landmark file {path} holds {len(pts)} points, expected {expected} (the 7 NoW landmarks)")
    return np.asarray(pts, dtype=np.float64).reshape(-1, 3)


def write_pp(path: PathLike, points: np.ndarray, data_file: str = "") -> None:
    """Write (N, 3) points as a MeshLab ``.pp`` file (atomically), names "0".."N-1"."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    lines = [
        "<!DOCTYPE PickedPoints>",
        "<PickedPoints>",
        " <DocumentData>",
        '  <DateTime time="00:00:00" date="2000-01-01"/>',
        '  <User name="mica"/>',
        f'  <DataFileName name="{data_file}"/>',
        '  <templateName name=""/>',
        " </DocumentData>",
    ]
    for i, (x, y, z) in enumerate(points.tolist()):
        lines.append(f' <point x="{x!r}" y="{y!r}" z="{z!r}" active="1" name="{i}"/>')
    lines.append("</PickedPoints>")
    atomic_write_text(path, "\n".join(lines) + "\n")
