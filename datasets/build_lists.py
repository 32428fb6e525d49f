"""Build an image list ``NAME.npy`` from a dataset folder in the MICA layout.

    python -m datasets.build_lists ROOT/NAME -o datasets/image_paths/NAME.npy

Scans ``ROOT/NAME/arcface_input/ACTOR/`` for crops (``.jpg``/``.jpeg``/``.png``) that have their
network input ``.npy`` beside them, and ``ROOT/NAME/FLAME_parameters/ACTOR/*.npz`` for the actor's fit.
Only files directly inside each actor folder count. Actors without a fit or without a usable image
are left out (with a warning); an actor with several fits uses the first in name order (warning).
Actors and images are listed in natural name order (``frame_2`` before ``frame_10``), so the
validation "first N images" are reproducible.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from datasets.image_lists import ImageList, save_image_list
from datasets.mica_dataset import ARCFACE_FOLDER, FLAME_FOLDER
from utils.errors import MICAError, UserError, run_main
from utils.log_setup import setup_logging

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def natural_key(text: str) -> list:
    """Sort key that orders digit runs by value (``a2`` < ``a10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def build_image_list(dataset_dir: Path, min_images: int = 1) -> ImageList:
    """The image list of the dataset folder ``dataset_dir`` (= ``ROOT/NAME``).

    Args:
        dataset_dir: folder holding ``arcface_input/`` and ``FLAME_parameters/``.
        min_images: actors with fewer usable images are left out.

    Returns:
        ``{actor: ([ACTOR/IMAGE.ext, ...], ACTOR/FIT.npz)}`` in natural name order.

    Raises:
        MICAError: ``dataset_dir`` or one of its two sub-folders does not exist.
    """
    dataset_dir = Path(dataset_dir)
    image_root, fit_root = dataset_dir / ARCFACE_FOLDER, dataset_dir / FLAME_FOLDER
    for folder in (image_root, fit_root):
        if not folder.is_dir():
            raise MICAError(f"{folder} does not exist ({dataset_dir} must hold {ARCFACE_FOLDER}/ and "
                            f"{FLAME_FOLDER}/; create it with python -m datasets.creation.generate)")
    result: ImageList = {}
    actors = sorted((p.name for p in image_root.iterdir() if p.is_dir()), key=natural_key)
    no_fit, no_images, no_npy = [], [], 0
    for actor in actors:
        images = []
        for p in sorted((image_root / actor).iterdir(), key=lambda q: natural_key(q.name)):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                if p.with_suffix(".npy").is_file():
                    images.append(f"{actor}/{p.name}")
                else:
                    no_npy += 1
        fits = sorted((fit_root / actor).glob("*.npz"), key=lambda q: natural_key(q.name)) \
            if (fit_root / actor).is_dir() else []
        if not fits:
            no_fit.append(actor)
            continue
        if len(images) < min_images or not images:
            no_images.append(actor)
            continue
        if len(fits) > 1:
            logger.warning(f"{actor}: {len(fits)} fits in {fit_root / actor}, using {fits[0].name}")
        result[actor] = (images, f"{actor}/{fits[0].name}")
    if no_npy:
        logger.warning(f"{no_npy} crops without their .npy network input were left out")
    if no_fit:
        logger.warning(f"{len(no_fit)} actors without a fit in {fit_root} were left out: {', '.join(no_fit[:10])}"
                       + (" ..." if len(no_fit) > 10 else ""))
    if no_images:
        logger.warning(f"{len(no_images)} actors with fewer than {max(1, min_images)} usable images were left out: "
                       f"{', '.join(no_images[:10])}" + (" ..." if len(no_images) > 10 else ""))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets.build_lists", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset_dir", type=Path, help="dataset folder ROOT/NAME (holds arcface_input/, FLAME_parameters/)")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="list to write (default: datasets/image_paths/NAME.npy)")
    parser.add_argument("--min-images", type=int, default=1, help="leave out actors with fewer images (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing list")
    args = parser.parse_args(argv)
    output = args.output or Path(__file__).resolve().parent / "image_paths" / f"{args.dataset_dir.name.upper()}.npy"
    if output.suffix != ".npy":
        raise UserError(f"output {output} must end in .npy (e.g. -o datasets/image_paths/NAME.npy)")
    if output.exists() and not args.overwrite:
        raise MICAError(f"{output} already exists (pass --overwrite to replace it, or choose another -o)")
    image_list = build_image_list(args.dataset_dir, min_images=args.min_images)
    if not image_list:
        raise MICAError(f"no actor with a fit and usable images found under {args.dataset_dir} "
                        f"(expected {ARCFACE_FOLDER}/ACTOR/IMAGE.jpg+.npy and {FLAME_FOLDER}/ACTOR/FIT.npz)")
    save_image_list(output, image_list)
    n_images = sum(len(i) for i, _ in image_list.values())
    logger.info(f"wrote {output}: {len(image_list)} actors, {n_images} images")
    return 0


if __name__ == "__main__":
    setup_logging()
    run_main(main)
