"""From a photo to the network input: detect faces, choose, align (shared by demo.py and test.py).

MICA's preparation: detect faces with 5 keypoints, keep the face whose box centre is closest to the
image centre (or every face), warp it onto the ArcFace template: a 224x224 crop for display and the
(3, 112, 112) float32 network input ``(RGB - 127.5) / 127.5``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from utils.alignment import norm_crop, to_network_input
from utils.detectors import Face, pick_centre_face
from utils.errors import MICAError


@dataclass
class AlignedFace:
    """One aligned face: ``crop224`` uint8 RGB (224, 224, 3), ``input112`` float32 (3, 112, 112)."""

    face: Face
    crop224: np.ndarray
    input112: np.ndarray


def align_face(image: np.ndarray, face: Face) -> AlignedFace:
    """Warp ``face`` of the RGB ``image`` onto the ArcFace template (224 crop + 112 network input)."""
    crop112 = norm_crop(image, face.kps, size=112)
    crop224 = norm_crop(image, face.kps, size=224)
    return AlignedFace(face=face, crop224=crop224, input112=to_network_input(crop112))


def select_faces(faces: Sequence[Face], image_shape, all_faces: bool = False) -> List[Face]:
    """Every face (left to right) or only the one closest to the image centre (MICA's choice)."""
    if not faces:
        return []
    if all_faces:
        return sorted(faces, key=lambda f: float(f.box[0]))
    return [pick_centre_face(list(faces), image_shape)]


def detect_and_align(image: np.ndarray, detector, all_faces: bool = False, source: str = "image",
                     hint: str = "") -> List[AlignedFace]:
    """Detect, select and align faces of an RGB uint8 image.

    Raises:
        MICAError: no face was found (the message names ``source`` and gives ``hint`` as the fix,
            by default: another photo or SCRFD).
    """
    faces = select_faces(detector.detect(image), image.shape, all_faces)
    if not faces:
        fix = hint or "try another photo, or --detector scrfd with antelopev2 installed"
        raise MICAError(f"{source}: no face found ({fix})")
    return [align_face(image, f) for f in faces]


def aligned_input(image: np.ndarray) -> AlignedFace:
    """An already aligned ArcFace crop (112 or 224 square, ``--aligned``) as network input."""
    h, w = image.shape[:2]
    if h != w or h not in (112, 224):
        raise MICAError(f"an aligned input must be a 112x112 or 224x224 ArcFace crop, not {w}x{h}")
    import cv2

    crop224 = image if h == 224 else cv2.resize(image, (224, 224), interpolation=cv2.INTER_LINEAR)
    crop112 = image if h == 112 else cv2.resize(image, (112, 112), interpolation=cv2.INTER_AREA)
    return AlignedFace(face=None, crop224=crop224, input112=to_network_input(crop112))
