"""What every face detector returns (``Face``, sorted by score), the detector interface and MICA's
choice among several faces (``pick_centre_face``).

Keypoints are in ArcFace order: left eye, right eye, nose, left mouth corner, right mouth corner
("left" = image left), in photo pixels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Face", "FaceDetector", "check_image", "pick_centre_face"]


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: (4,) float32 x1, y1, x2, y2 in photo pixels.
        kps: (5, 2) float32 keypoints (left eye, right eye, nose, left/right mouth corner).
        score: detection confidence in [0, 1].
    """

    box: np.ndarray
    kps: np.ndarray
    score: float


class FaceDetector(Protocol):
    """Anything with ``detect(image_rgb (H,W,3) uint8) -> list[Face]`` (sorted by score)."""

    def detect(self, image_rgb: np.ndarray) -> list[Face]: ...


def check_image(image_rgb: np.ndarray) -> np.ndarray:
    img = np.asarray(image_rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"detect() expects an RGB uint8 (H,W,3) image, got {img.dtype} {img.shape}")
    return img



def pick_centre_face(faces: Sequence[Face], image_shape: Sequence[int]) -> Face | None:
    """The face whose box centre is closest to the image centre (MICA's choice among several).

    Args:
        faces: detections.
        image_shape: (H, W, ...) of the photo.

    Returns:
        That face, or None when ``faces`` is empty. Ties keep the earlier (higher-scoring) face.
    """
    if len(faces) == 0:
        return None
    cy, cx = image_shape[0] / 2.0, image_shape[1] / 2.0
    dists = [math.hypot((f.box[0] + f.box[2]) / 2.0 - cx, (f.box[1] + f.box[3]) / 2.0 - cy) for f in faces]
    return faces[int(np.argmin(dists))]
