"""Face detection with 5 keypoints: SCRFD (insightface antelopev2, onnxruntime) and MTCNN (torch).

Both detectors take an RGB uint8 photo (H, W, 3) and return ``list[Face]`` sorted by score
(highest first). Keypoints are in ArcFace order: left eye, right eye, nose, left mouth corner,
right mouth corner ("left" = image left), in photo pixels.

- ``SCRFD`` runs ``scrfd_10g_bnkps.onnx`` from insightface's antelopev2 pack (what MICA uses).
  The pack is licence-restricted and never downloaded at run time.
- ``MTCNN`` is our own P-Net/R-Net/O-Net cascade running the MIT-licensed weights shipped in the
  ``facenet-pytorch`` package (installed with ``--no-deps``; the package itself is never imported,
  it needs torchvision). It works on a fresh install with nothing to download.

``create_detector('auto', ...)`` picks SCRFD when antelopev2 is present, else MTCNN.
Modules: ``face`` (``Face``, ``FaceDetector``, ``pick_centre_face``), ``nms``, ``scrfd``, ``mtcnn``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from loguru import logger

from models.detectors.face import Face, FaceDetector, pick_centre_face
from models.detectors.mtcnn import MTCNN
from models.detectors.scrfd import _ANTELOPE_HOWTO, DEFAULT_ANTELOPEV2_DIR, SCRFD, SCRFD_FILE
from utils.errors import MICAError

PathLike = str | os.PathLike

__all__ = ["Face", "FaceDetector", "SCRFD", "MTCNN", "create_detector", "detector_from_config", "pick_centre_face",
           "DEFAULT_ANTELOPEV2_DIR", "SCRFD_FILE"]


def create_detector(name: str = "auto", antelopev2_dir: PathLike = DEFAULT_ANTELOPEV2_DIR,
                    det_size: Sequence[int] = (224, 224), threshold: float = 0.5,
                    device: str | torch.device = "cpu", mtcnn_max_side: int | None = 320,
                    mtcnn_min_face: float = 0.0) -> FaceDetector:
    """Build a face detector.

    Args:
        name: "auto" (SCRFD when ``antelopev2_dir/scrfd_10g_bnkps.onnx`` exists, else MTCNN with a
            one-line notice), "scrfd" or "mtcnn".
        antelopev2_dir: folder of insightface's antelopev2 models.
        det_size: SCRFD input (width, height).
        threshold: minimum detection score (both detectors).
        device: torch device of MTCNN (SCRFD picks its onnxruntime provider itself).
        mtcnn_max_side: MTCNN's ``max_side`` (photos are searched shrunk to this longer side).
        mtcnn_min_face: MTCNN's ``min_face`` (smallest face as a fraction of the longer side; 0 = all).

    Raises:
        MICAError: "scrfd" without the ONNX file, unknown name, or missing MTCNN weights.
    """
    scrfd_path = Path(antelopev2_dir).expanduser() / SCRFD_FILE
    if name == "scrfd":
        return SCRFD(scrfd_path, det_size=det_size, threshold=threshold)
    if name == "auto":
        if scrfd_path.is_file():
            return SCRFD(scrfd_path, det_size=det_size, threshold=threshold)
        logger.warning(f"antelopev2 not found ({scrfd_path}); using the MTCNN detector instead. "
                    f"For MICA's own detector (SCRFD) {_ANTELOPE_HOWTO}")
        return MTCNN(threshold=threshold, device=device, max_side=mtcnn_max_side, min_face=mtcnn_min_face)
    if name == "mtcnn":
        return MTCNN(threshold=threshold, device=device, max_side=mtcnn_max_side, min_face=mtcnn_min_face)
    raise MICAError(f"unknown detector '{name}' (use auto, scrfd or mtcnn)")


def detector_from_config(cfg, device: str | torch.device = "cpu",
                         threshold: float | None = None, all_faces: bool = False) -> FaceDetector:
    """The one builder of the detector from the config's ``detector.*`` keys (demo.py, test.py, the
    tracker): ``create_detector(detector.name, detector.antelopev2_dir, detector.det_size,
    threshold (default detector.threshold), device, detector.mtcnn_max_side,
    detector.mtcnn_min_face)``; ``all_faces`` (every face of a photo is wanted): MTCNN's full
    search (``mtcnn_min_face`` 0)."""
    from configs.config import resolve_path

    return create_detector(cfg.detector.name, antelopev2_dir=resolve_path(cfg.detector.antelopev2_dir),
                           det_size=tuple(cfg.detector.det_size),
                           threshold=cfg.detector.threshold if threshold is None else threshold, device=device,
                           mtcnn_max_side=cfg.detector.mtcnn_max_side,
                           mtcnn_min_face=0.0 if all_faces else cfg.detector.mtcnn_min_face)
