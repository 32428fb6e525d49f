"""Raw photos + FLAME fits -> the MICA training layout of one dataset.

For every actor of the reader (:mod:`datasets.creation.readers`) that has a fit::

    OUT/NAME/FLAME_parameters/ACTOR/FIT.npz      betas (400,) float32, pose (15,) float32
    OUT/NAME/arcface_input/ACTOR/IMAGE.jpg|png   224x224 ArcFace-aligned crop (template x2)
    OUT/NAME/arcface_input/ACTOR/IMAGE.npy       (3, 112, 112) float32, (RGB - 127.5) / 127.5

Each photo, in the original creation scripts' order: read (``utils.image_io.read_image``) -> detect
(5 keypoints; the detector's own threshold, 0.5 by default, drops weak detections) -> the face closest
to the image centre (``models.face_prep.prepare_centre``) -> drop the photo when that face's score is below the
dataset's minimum (``reader.min_score``: FLORENCE 0.85, STIRLING 0.75, others none; SCRFD scores,
so a warning says so once when MTCNN detects) -> similarity-align to the ArcFace template
(``norm_crop`` at 112 and 224) -> write. Every file is written atomically; a photo whose crop and
``.npy`` both exist is skipped, so an interrupted run resumes where it stopped. Unreadable photos and photos without a
face are skipped and reported (log summary + ``OUT/NAME/creation_failures.txt``). At the end the
image list is rebuilt from what is on disk.

Fit files (``.npz``, read without pickles) may hold ``betas`` (300..400 values: identity first,
then expression) or ``shape`` (+ optional ``expression``/``exp``), and ``pose`` with 15 numbers
(global, neck, jaw, eyes) or MICA's 6 (global + jaw, placed at [0:3] and [6:9]); a missing pose is
zero. Values beyond 400 betas are an error.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from loguru import logger
from tqdm import tqdm

from datasets.build_lists import build_image_list
from datasets.creation.readers import RawDatasetReader
from datasets.image_lists import save_image_list
from datasets.mica_dataset import ARCFACE_FOLDER, FLAME_FOLDER
from models.detectors import MTCNN
from models.face_prep import prepare_centre
from utils.errors import MICAError
from utils.image_io import read_image, write_image
from utils.io import atomic_save, atomic_save_npy, atomic_write_text

N_BETAS = 400  # FLAME 2020: 300 identity + 100 expression
N_POSE = 15  # global, neck, jaw, left eye, right eye (axis-angle)
FAILURES_FILE = "creation_failures.txt"


def convert_fit(path: Path) -> dict[str, np.ndarray]:
    """Read a FLAME fit ``.npz`` into ``{'betas': (400,) float32, 'pose': (15,) float32}``.

    Raises:
        MICAError: unreadable file, no shape key, too many coefficients or a pose of the wrong size.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k], dtype=np.float64).reshape(-1) for k in data.files}
    except Exception as e:  # zipfile/pickle/OS errors: the file is unusable
        raise MICAError(f"fit {path} cannot be read as a .npz ({type(e).__name__}); re-export the fit") from None
    if "betas" in arrays:
        betas = arrays["betas"]
    elif "shape" in arrays:
        exp = arrays.get("expression", arrays.get("exp", np.zeros(0)))
        betas = np.concatenate([arrays["shape"], exp]) if len(arrays["shape"]) == 300 else arrays["shape"]
    else:
        raise MICAError(f"fit {path} has no 'betas' or 'shape' array (keys: {sorted(arrays)}); re-export the fit")
    if not 1 <= len(betas) <= N_BETAS:
        raise MICAError(f"fit {path} has {len(betas)} shape coefficients, expected at most {N_BETAS} (FLAME 2020)")
    out_betas = np.zeros(N_BETAS, dtype=np.float32)
    out_betas[: len(betas)] = betas
    pose = arrays.get("pose")
    out_pose = np.zeros(N_POSE, dtype=np.float32)
    if pose is not None:
        if len(pose) == N_POSE:
            out_pose[:] = pose
        elif len(pose) == 6:
            out_pose[0:3], out_pose[6:9] = pose[0:3], pose[3:6]
        else:
            raise MICAError(f"fit {path} has a pose of {len(pose)} numbers, expected 15 (FLAME) or 6 (global + jaw)")
    if not (np.isfinite(out_betas).all() and np.isfinite(out_pose).all()):
        raise MICAError(f"fit {path} holds non-finite values; re-export the fit")
    return {"betas": out_betas, "pose": out_pose}


@dataclass
class CreationSummary:
    """What one run did (counts of photos, and the photos/actors that failed with the reason)."""

    actors: int = 0
    written: int = 0
    existing: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    actors_without_fit: list[str] = field(default_factory=list)
    ignored_files: int = 0
    list_path: Path | None = None
    listed_actors: int = 0
    listed_images: int = 0

    def report(self) -> str:
        """Multi-line human-readable summary (for the log and the failures file)."""
        lines = [f"actors with a fit: {self.actors}; photos written: {self.written}; already done: {self.existing}; "
                 f"failed: {len(self.failed)}; actors without a fit: {len(self.actors_without_fit)}; "
                 f"ignored files: {self.ignored_files}"]
        if self.list_path is not None:
            lines.append(f"image list {self.list_path}: {self.listed_actors} actors, {self.listed_images} images")
        lines += [f"no fit: {a}" for a in self.actors_without_fit]
        lines += [f"failed: {p}: {why}" for p, why in self.failed]
        return "\n".join(lines)


def process_image(source: Path, crop_path: Path, detector, min_score: float | None = None) -> None:
    """Detect, align and write one photo's crop (224) and network input ``.npy`` (3, 112, 112).

    The centre face is picked among the detector's faces first; only then is its score compared
    with ``min_score`` (None or 0: no minimum), as in the original creation scripts.

    Raises:
        MICAError / FileNotFoundError: unreadable photo, no face found, or the centre face scores
            below ``min_score``.
    """
    aligned = prepare_centre(read_image(source), detector, str(source), min_score)
    atomic_save_npy(crop_path.with_suffix(".npy"), aligned.input112.astype(np.float32))
    write_image(crop_path, aligned.crop224)


def create_dataset(reader: RawDatasetReader, raw_dir: Path, fits_dir: Path, out_root: Path, detector,
                   list_path: Path | None = None, overwrite: bool = False,
                   actors: Sequence[str] | None = None, progress: bool = True,
                   min_score: float | None = None) -> CreationSummary:
    """Build ``out_root/NAME`` from raw photos and fits, then write its image list.

    Args:
        reader: the dataset's reader (naming conventions).
        raw_dir: raw photos; fits_dir: FLAME fits (see the reader's ``layout``).
        out_root: dataset root; the dataset goes to ``out_root/NAME``.
        detector: object with ``detect(rgb (H, W, 3) uint8) -> list[Face]`` (``models.detectors``).
        list_path: where to write the image list (default ``out_root/image_paths/NAME.npy``).
        overwrite: redo photos whose outputs exist (default: skip them, i.e. resume).
        actors: only these actors (default all).
        progress: show a tqdm bar.
        min_score: smallest score of the picked centre face (None: the reader's ``min_score``; 0: none).

    Returns:
        The run's :class:`CreationSummary`.

    Raises:
        MICAError: missing raw/fits folder or no photo found. (An unusable fit skips its actor and is
            reported in the summary, like an unusable photo.)
    """
    raw_dir, fits_dir, out_root = Path(raw_dir), Path(fits_dir), Path(out_root)
    if not fits_dir.is_dir():
        raise MICAError(f"fits folder {fits_dir} does not exist (pass --fits with the {reader.name} FLAME fits: "
                        f"{reader.layout})")
    by_actor, ignored = reader.images(raw_dir)
    if actors:
        wanted = set(actors)
        by_actor = {a: v for a, v in by_actor.items() if a in wanted}
    if not by_actor:
        raise MICAError(f"no {reader.name} photos found under {raw_dir} (expected {reader.layout})")
    out_dir = out_root / reader.name
    min_score = reader.min_score if min_score is None else float(min_score)
    if min_score and isinstance(detector, MTCNN):
        logger.warning(f"{reader.name}: the minimum face score {min_score:g} is an SCRFD score (the original "
                       f"detector); MTCNN scores differ, so photos may be kept or dropped unlike the original "
                       f"(use SCRFD, or --min-score 0 for no minimum)")
    summary = CreationSummary(ignored_files=len(ignored))
    jobs: list[tuple[Path, Path]] = []
    for actor, images in by_actor.items():
        fit = reader.find_fit(fits_dir, actor)
        if fit is None:
            summary.actors_without_fit.append(actor)
            continue
        fit_out = out_dir / FLAME_FOLDER / actor / fit.name
        if overwrite or not fit_out.is_file():
            try:
                params = convert_fit(fit)
            except MICAError as e:  # one bad fit skips its actor, not the run
                summary.failed.append((str(fit), str(e)))
                logger.warning(f"skipped actor {actor}: {e}")
                continue
            atomic_save(fit_out, lambda tmp, p=params: np.savez(tmp, **p))
        summary.actors += 1
        for img in images:
            jobs.append((img.source, out_dir / ARCFACE_FOLDER / actor / f"{img.name}{reader.crop_suffix}"))
    if summary.actors_without_fit:
        logger.warning(f"{reader.name}: {len(summary.actors_without_fit)} actors have no fit in {fits_dir} and are "
                       f"left out: {', '.join(summary.actors_without_fit[:10])}")
    for source, crop_path in tqdm(jobs, desc=f"{reader.name} photos", unit="img", disable=not progress):
        if not overwrite and crop_path.is_file() and crop_path.with_suffix(".npy").is_file():
            summary.existing += 1
            continue
        try:
            process_image(source, crop_path, detector, min_score)
            summary.written += 1
        except (MICAError, FileNotFoundError, ValueError) as e:
            summary.failed.append((str(source), str(e)))
            logger.warning(f"skipped {source}: {e}")
    if summary.actors:
        # no photo written at all (every one failed or was dropped): no arcface_input folder, no list
        image_list = build_image_list(out_dir) if (out_dir / ARCFACE_FOLDER).is_dir() else {}
        list_path = Path(list_path) if list_path is not None else out_root / "image_paths" / f"{reader.name}.npy"
        if image_list:
            save_image_list(list_path, image_list)
            summary.list_path = list_path
            summary.listed_actors = len(image_list)
            summary.listed_images = sum(len(i) for i, _ in image_list.values())
        else:
            logger.warning(f"{reader.name}: no actor has a usable photo; no image list written")
    if out_dir.is_dir():
        atomic_write_text(out_dir / FAILURES_FILE, summary.report() + "\n")
    logger.info(f"{reader.name}: " + summary.report().splitlines()[0])
    return summary
