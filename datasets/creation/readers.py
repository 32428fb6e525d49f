"""Readers of the eight raw source datasets: which photos belong to which actor, and which FLAME fit.

Every reader answers the same questions for the pipeline (:mod:`datasets.creation.pipeline`):

1. ``images(raw_dir)``: ``{actor: [RawImage(actor, source, name)]}``, where ``name`` is the output
   file stem (unique within the actor) of ``arcface_input/ACTOR/NAME.{jpg|png}`` and ``.npy``;
2. ``find_fit(fits_dir, actor)``: the actor's FLAME fit ``.npz`` (or None);
3. ``crop_suffix``: the crop format of that dataset in the shipped lists (``.png`` for LYHM and
   FaceWarehouse, ``.jpg`` for the others);
4. ``min_score``: the smallest detection score of the picked (centre) face for a photo to be kept,
   as in the original creation scripts (``datasets/creation/instances/``): FLORENCE 0.85, STIRLING
   0.75, the others none. These are SCRFD scores.

The conventions come from the file names in the shipped lists (``datasets/image_paths``): the
output keeps the raw photo's file stem and the fit's file name, so lists built from regenerated
data name the same files as the originals. Readers only look at names, never at file contents.

Actors come from the first folder level under ``RAW`` (``RAW/ACTOR/**/IMAGE``), except for datasets
whose photo names carry the subject id (FRGC, Stirling, BU-3DFE): there the actor is read from the
file name, so a flat folder works too. Image files are ``utils.image_io.IMAGE_EXTENSIONS``; files
whose name does not match the dataset's photo pattern are ignored (counted in the summary).
When two photos of one actor share a stem (e.g. BP4D+ ``T1/0001.jpg`` and ``T2/0001.jpg``), their
sub-folders are prefixed (``T1_0001``, ``T2_0001``).

Fits are looked up as ``FITS/ACTOR/*.npz`` and, for flat fit folders, ``FITS/*.npz`` whose name
starts with the actor id (case-insensitive). Each reader documents which fit wins when an actor
has several.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from utils.errors import MICAError
from utils.image_io import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class RawImage:
    """One raw photo: its actor, file, and the output stem (unique within the actor)."""

    actor: str
    source: Path
    name: str


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


class RawDatasetReader:
    """Base reader: actor folders ``RAW/ACTOR/**/IMAGE`` and fits ``FITS/ACTOR/*.npz``.

    Subclasses set the class attributes below and may override :meth:`fit_preference`.
    """

    #: Dataset name (upper case): output folder ``ROOT/NAME`` and list ``NAME.npy``.
    name: str = ""
    #: Crop format of the dataset's shipped list.
    crop_suffix: str = ".jpg"
    #: Regex (``re.fullmatch`` on the file stem) a photo must match; None accepts every image file.
    image_pattern: str | None = None
    #: Regex with group ``actor`` on the file stem; when set, the actor comes from the file name.
    actor_pattern: str | None = None
    #: One line on the raw layout, shown by ``generate --help``.
    layout: str = ""
    #: Minimum SCRFD score of the picked centre face (None: no minimum), the original's per-dataset value.
    min_score: float | None = None

    def normalise_actor(self, actor: str) -> str:
        """Actor id as it appears in the list (default: unchanged)."""
        return actor

    def normalise_name(self, stem: str) -> str:
        """Output file stem of a photo with stem ``stem`` (default: unchanged)."""
        return stem

    def actor_of(self, path: Path, raw_dir: Path) -> str | None:
        """The actor of photo ``path`` (None: not a photo of this dataset)."""
        stem = path.stem
        if self.image_pattern is not None and not re.fullmatch(self.image_pattern, stem, flags=re.IGNORECASE):
            return None
        if self.actor_pattern is not None:
            m = re.fullmatch(self.actor_pattern, stem, flags=re.IGNORECASE)
            return self.normalise_actor(m.group("actor")) if m else None
        rel = path.relative_to(raw_dir)
        return self.normalise_actor(rel.parts[0]) if len(rel.parts) > 1 else None

    def images(self, raw_dir: Path) -> tuple[dict[str, list[RawImage]], list[Path]]:
        """All photos under ``raw_dir`` grouped by actor (natural name order), and the ignored files.

        Raises:
            MICAError: ``raw_dir`` is not a folder.
        """
        raw_dir = Path(raw_dir)
        if not raw_dir.is_dir():
            raise MICAError(f"raw folder {raw_dir} does not exist (pass --raw with the {self.name} photos: {self.layout})")
        grouped: dict[str, list[Path]] = defaultdict(list)
        ignored: list[Path] = []
        for path in sorted(raw_dir.rglob("*"), key=lambda p: _natural_key(p.as_posix())):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            actor = self.actor_of(path, raw_dir)
            if actor is None:
                ignored.append(path)
            else:
                grouped[actor].append(path)
        result: dict[str, list[RawImage]] = {}
        for actor in sorted(grouped, key=_natural_key):
            paths = grouped[actor]
            stems = defaultdict(int)
            for p in paths:
                stems[self.normalise_name(p.stem)] += 1
            items = []
            for p in paths:
                name = self.normalise_name(p.stem)
                if stems[name] > 1:  # disambiguate with the sub-folders below the actor folder
                    parts = [q for q in p.relative_to(raw_dir).parent.parts if q != actor]
                    name = "_".join(parts + [name]) if parts else name
                items.append(RawImage(actor=actor, source=p, name=name))
            names = [i.name for i in items]
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})
                logger.warning(f"{self.name} actor {actor}: photos share names {dup[:5]}; keeping the first of each")
                seen, unique = set(), []
                for it in items:
                    if it.name not in seen:
                        seen.add(it.name)
                        unique.append(it)
                items = unique
            result[actor] = items
        return result, ignored

    def fit_candidates(self, fits_dir: Path, actor: str) -> list[Path]:
        """``FITS/ACTOR/*.npz`` plus flat ``FITS/*.npz`` whose name starts with the actor id."""
        fits_dir = Path(fits_dir)
        cands = sorted((fits_dir / actor).glob("*.npz")) if (fits_dir / actor).is_dir() else []
        if not cands and fits_dir.is_dir():
            low = actor.lower()
            cands = sorted(p for p in fits_dir.glob("*.npz") if p.stem.lower().startswith(low)
                           and not p.stem[len(low):len(low) + 1].isdigit())
        return cands

    def fit_preference(self, path: Path) -> int:
        """Rank of a fit among an actor's candidates (lower wins; ties: name order)."""
        return 0

    def find_fit(self, fits_dir: Path, actor: str) -> Path | None:
        """The actor's fit, or None when there is none."""
        cands = self.fit_candidates(fits_dir, actor)
        if not cands:
            return None
        cands = sorted(cands, key=lambda p: (self.fit_preference(p), _natural_key(p.name)))
        if len(cands) > 1 and self.fit_preference(cands[0]) == self.fit_preference(cands[1]):
            logger.info(f"{self.name} actor {actor}: {len(cands)} fits, using {cands[0].name}")
        return cands[0]


class LYHMReader(RawDatasetReader):
    """LYHM (Headspace): ``RAW/00001/1C.png`` (photos per 5-digit subject), ``FITS/00001/130925161618.npz``."""

    name = "LYHM"
    crop_suffix = ".png"
    layout = "RAW/SUBJECT/*.png|jpg per 5-digit subject (e.g. 00001/1C.png), FITS/SUBJECT/SCANID.npz"


class FRGCReader(RawDatasetReader):
    """FRGC v2: photos ``SUBJECTdSEQ.jpg`` (e.g. ``02463d567.jpg``) anywhere under RAW (flat session
    folders work); fits ``FITS/02463/02463d546.npz`` or flat ``FITS/02463d546.npz`` (first in name order)."""

    name = "FRGC"
    actor_pattern = r"(?P<actor>\d{5})d\d+"
    layout = "photos SUBJECTdSEQ.jpg anywhere under RAW (e.g. 02463d567.jpg), FITS/SUBJECT/SUBJECTdSEQ.npz or flat"


class StirlingReader(RawDatasetReader):
    """Stirling/ESRC: photos ``F1001_003.jpg`` / ``m1042_001.jpg`` anywhere under RAW (actor and output name
    upper-cased);
    fits ``FITS/F1001/F1001_N.npz`` or flat ``FITS/f1004b_N.npz``; a neutral ``_N`` fit wins over ``_NH``."""

    name = "STIRLING"
    min_score = 0.75
    actor_pattern = r"(?P<actor>[FM]\d{4})_\d+"
    layout = "photos F1001_003.jpg anywhere under RAW, FITS/F1001/F1001_N.npz or flat FITS/f1001_N.npz"

    def normalise_actor(self, actor: str) -> str:
        return actor.upper()

    def normalise_name(self, stem: str) -> str:
        return stem.upper()  # the shipped list names photos F1001_003 even when the raw file is f1001_003

    def fit_preference(self, path: Path) -> int:
        return 0 if path.stem.upper().endswith("_N") else 1


class FaceWarehouseReader(RawDatasetReader):
    """FaceWarehouse: ``RAW/Tester_1/TrainingPose/pose_0.png`` .. ``pose_19.png``; fits
    ``FITS/Tester_1/pose_0.npz`` (the neutral ``pose_0`` wins when there are several)."""

    name = "FACEWAREHOUSE"
    crop_suffix = ".png"
    image_pattern = r"pose_\d+"
    layout = "RAW/Tester_K/**/pose_N.png (FaceWarehouse TrainingPose), FITS/Tester_K/pose_0.npz"

    def fit_preference(self, path: Path) -> int:
        return 0 if path.stem == "pose_0" else 1


class BP4DReader(RawDatasetReader):
    """BP4D+: ``RAW/F001/**/0491.jpg`` (frames per subject; task sub-folders are prefixed when frame
    names repeat), fits ``FITS/F001/F001.npz``."""

    name = "BP4D"
    layout = "RAW/SUBJECT/**/NNNN.jpg (e.g. F001/T1/0491.jpg), FITS/SUBJECT/SUBJECT.npz"


class BU3DFEReader(RawDatasetReader):
    """BU-3DFE: photos ``F0001_FE03WH_RAW_0.jpg`` (subject, expression+level, race, view) anywhere
    under RAW; fits ``FITS/F0001/F0001_NE00WH_RAW.npz`` (the neutral ``NE00`` scan's fit wins)."""

    name = "BU3DFE"
    actor_pattern = r"(?P<actor>[FM]\d{4})_[A-Z]{2}\d{2}[A-Z]{2}.*"
    layout = "photos F0001_FE03WH_RAW_0.jpg anywhere under RAW, FITS/F0001/F0001_NE00WH_RAW.npz"

    def normalise_actor(self, actor: str) -> str:
        return actor.upper()

    def fit_preference(self, path: Path) -> int:
        return 0 if "_NE00" in path.stem.upper() else 1


class FlorenceReader(RawDatasetReader):
    """Florence (MICC): ``RAW/subject_01/**/frame_0001.jpg`` (video frames), fits ``FITS/subject_01/SCANID.npz``."""

    name = "FLORENCE"
    min_score = 0.85
    layout = "RAW/subject_NN/**/frame_NNNN.jpg (frames of the videos), FITS/subject_NN/SCANID.npz"


class D3DFACSReader(RawDatasetReader):
    """D3DFACS: ``RAW/Adrian/**/texture_1C_061.jpg`` (camera + frame), fits ``FITS/Adrian/Adrian.npz``."""

    name = "D3DFACS"
    layout = "RAW/ACTOR/**/texture_1C_061.jpg (actor first names), FITS/ACTOR/ACTOR.npz"


READERS: dict[str, type[RawDatasetReader]] = {
    cls.name: cls for cls in (LYHMReader, FRGCReader, StirlingReader, FaceWarehouseReader, BP4DReader,
                              BU3DFEReader, FlorenceReader, D3DFACSReader)
}


def canonical_name(name: str) -> str:
    """``'BP4D+'`` -> ``'BP4D'``, ``'BU-3DFE'`` -> ``'BU3DFE'``, ``'Stirling'`` -> ``'STIRLING'``."""
    return re.sub(r"[^A-Z0-9]", "", str(name).upper())


def get_reader(name: str) -> RawDatasetReader:
    """The reader of dataset ``name`` (any case; ``+``/``-`` ignored).

    Raises:
        MICAError: unknown dataset name.
    """
    key = canonical_name(name)
    if key not in READERS:
        raise MICAError(f"unknown dataset '{name}' for --dataset (use one of {', '.join(READERS)})")
    return READERS[key]()
