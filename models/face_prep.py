"""From a photo to the network input: detect faces, choose, align -- the one face preparation of
demo.py, the NoW and Stirling exports (test.py) and dataset creation.

MICA's preparation: detect faces with 5 keypoints, keep the face whose box centre is closest to the
image centre (or every face), warp it onto the ArcFace template: a 224x224 crop for display and the
(3, 112, 112) float32 network input ``(RGB - 127.5) / 127.5``. The protocols differ only in what the
detector sees and which faces count:

- demo (``detect_and_align``): the centre face (or every face, left to right) of the photo;
- NoW (``prepare_from_box``): NoW's face box -> a 224 crop of the photo, exactly one face in it;
- Stirling (``prepare_full``): exactly one face in the full-resolution photo;
- dataset creation (``prepare_centre``): the centre face, dropped below the dataset's minimum score.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.detectors import Face, pick_centre_face
from utils.alignment import crop_from_box, norm_crop, to_network_input
from utils.errors import MICAError

NOW_CROP_SCALE = 1.6  # NoW crop side = 1.6 x mean(box width, box height)
NOW_CROP_SIZE = 224


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


def select_faces(faces: Sequence[Face], image_shape, all_faces: bool = False) -> list[Face]:
    """Every face (left to right) or only the one closest to the image centre (MICA's choice)."""
    if not faces:
        return []
    if all_faces:
        return sorted(faces, key=lambda f: float(f.box[0]))
    return [pick_centre_face(list(faces), image_shape)]


def detect_and_align(image: np.ndarray, detector, all_faces: bool = False, source: str = "image",
                     hint: str = "") -> list[AlignedFace]:
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


# ---------------------------------------------------------------------------------------------
# The benchmark protocols (NoW, Stirling): exactly one face
# ---------------------------------------------------------------------------------------------
class NotExactlyOneFace(MICAError):
    """A photo in which the detector found no face or several (the protocols drop such photos)."""


def single_face(faces: Sequence[Face], source: str) -> Face:
    """The only face of ``faces``; else ``NotExactlyOneFace`` (MICA's protocols need exactly one)."""
    if len(faces) != 1:
        what = "no face" if not faces else f"{len(faces)} faces"
        raise NotExactlyOneFace(f"{source}: {what} detected, MICA's protocol needs exactly one")
    return faces[0]


def align_float(image: np.ndarray, face: Face) -> AlignedFace:
    """ArcFace alignment of a float image: the 112 network input warped from it without
    quantisation, the 224 crop rounded to uint8 for previews."""
    image = np.asarray(image, dtype=np.float32)
    crop224 = np.clip(np.rint(norm_crop(image, face.kps, size=224)), 0, 255).astype(np.uint8)
    return AlignedFace(face=face, crop224=crop224, input112=to_network_input(norm_crop(image, face.kps, size=112)))


def prepare_from_box(image: np.ndarray, box: np.ndarray, detector, source: str = "image") -> AlignedFace:
    """MICA's NoW preparation of one photo: photo + NoW's face box -> square crop (box centre, side
    ``int(1.6 x mean box side)``, three corners onto (0,0), (0,223), (223,0)) -> face detection on that
    crop truncated to uint8 (exactly one face) -> ArcFace alignment of the float crop.

    The crop is sampled bilinearly in float64 (``utils.alignment.crop_from_box``; sampling is
    linear, so this is MICA's scikit-image ``warp`` of photo / 255 up to rounding), divided by 255
    and scaled back in float32 (MICA: the float crop x 255 as float32). The detector sees that crop
    truncated to uint8 (what insightface's uint8 letterbox does to it); ``input112`` is the ArcFace
    alignment of the float crop (never quantised).

    Raises:
        NotExactlyOneFace: no face or more than one face in the crop.
        ValueError: an empty or invalid box.
    """
    crop, _ = crop_from_box(image, box, scale=NOW_CROP_SCALE, size=NOW_CROP_SIZE)
    crop = (crop / 255.0).astype(np.float32) * np.float32(255.0)
    detected = np.clip(crop, 0, 255).astype(np.uint8)  # truncation, as a float -> uint8 assignment
    face = single_face(detector.detect(detected), source)
    return align_float(crop, face)


def prepare_full(image: np.ndarray, detector, source: str = "image") -> AlignedFace:
    """MICA's Stirling preparation: detect on the full-resolution photo (exactly one face), then
    ArcFace-align from the same photo.

    Raises:
        NotExactlyOneFace: no face or several.
    """
    return align_face(image, single_face(detector.detect(image), source))


# ---------------------------------------------------------------------------------------------
# Dataset creation
# ---------------------------------------------------------------------------------------------
def prepare_centre(image: np.ndarray, detector, source: str = "image",
                   min_score: float | None = None) -> AlignedFace:
    """The preparation of the original creation scripts: the detector's own threshold drops weak
    detections, the face closest to the image centre is picked among the rest, and only then is its
    score compared with ``min_score`` (None or 0: no minimum).

    Raises:
        MICAError: no face found, the centre face scores below ``min_score``, or the detector
            returned unusable keypoints.
    """
    face = pick_centre_face(detector.detect(image), image.shape)
    if face is None:
        raise MICAError(f"{source}: no face found")
    if min_score and float(face.score) < min_score:
        raise MICAError(f"{source}: the centre face's detection score {float(face.score):.3f} is below the "
                        f"minimum {min_score:g} (lower it with --min-score)")
    kps = np.asarray(face.kps, dtype=np.float64)
    if kps.shape != (5, 2) or not np.isfinite(kps).all():
        raise MICAError(f"{source}: the detector returned unusable keypoints {kps.shape}")
    return align_face(image, face)
