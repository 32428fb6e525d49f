"""Create one MICA training dataset from raw photos and FLAME fits.

    python -m datasets.creation.generate --dataset LYHM --raw RAW_DIR --fits FITS_DIR --out ROOT

Writes ``ROOT/NAME/{FLAME_parameters,arcface_input}`` (see ``datasets/creation/pipeline.py``) and
the image list (default ``ROOT/image_paths/NAME.npy``; point ``dataset.image_lists`` at that folder,
or copy the list into ``datasets/image_paths/``). Re-running resumes: finished photos are skipped.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from datasets.creation.pipeline import FAILURES_FILE, create_dataset
from datasets.creation.readers import READERS, get_reader
from models.detectors import DEFAULT_ANTELOPEV2_DIR, create_detector
from utils.device import resolve_device
from utils.errors import check_range, run_main
from utils.io import prepare_output_dir
from utils.log_setup import setup_logging


def _parser() -> argparse.ArgumentParser:
    layouts = "\n".join(f"  {name:<14} {cls.layout}" for name, cls in READERS.items())
    parser = argparse.ArgumentParser(
        prog="python -m datasets.creation.generate", description=__doc__.split("\n\n")[0],
        epilog=f"expected raw layouts (RAW = --raw, FITS = --fits):\n{layouts}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, help=f"one of {', '.join(READERS)} (any case; BP4D+, BU-3DFE ok)")
    parser.add_argument("--raw", required=True, type=Path, help="folder of the raw photos")
    parser.add_argument("--fits", required=True, type=Path, help="folder of the FLAME fits (.npz)")
    parser.add_argument("--out", required=True, type=Path, help="dataset root ROOT (the dataset goes to ROOT/NAME)")
    parser.add_argument("--list", type=Path, default=None, help="image list to write (default ROOT/image_paths/NAME.npy)")
    parser.add_argument("--detector", default="auto", choices=("auto", "scrfd", "mtcnn"),
                        help="face detector (auto: SCRFD when antelopev2 is installed, else MTCNN)")
    parser.add_argument("--antelopev2", default=DEFAULT_ANTELOPEV2_DIR, help="insightface antelopev2 folder")
    parser.add_argument("--det-size", type=int, nargs=2, default=(224, 224), metavar=("W", "H"),
                        help="SCRFD input size (default 224 224, as MICA)")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="detector threshold, applied before the centre face is picked (default 0.5, as MICA)")
    parser.add_argument("--min-score", type=float, default=None,
                        help="drop a photo whose picked centre face scores below this (default: the dataset's, "
                             "as the original: FLORENCE 0.85, STIRLING 0.75, others none; 0 = none)")
    parser.add_argument("--device", default="cpu", help="torch device of MTCNN (cpu, cuda, auto)")
    parser.add_argument("--actors", nargs="*", default=None, help="only these actors")
    parser.add_argument("--overwrite", action="store_true", help="redo photos whose outputs already exist")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    reader = get_reader(args.dataset)
    check_range("--threshold", args.threshold, 0, 1, low_open=True, hint="a detection score")
    if args.min_score is not None:
        check_range("--min-score", args.min_score, 0, 1, hint="0 = no minimum")
    # refuse an unusable output before loading the detector; remove what killed runs left behind
    prepare_output_dir(args.out / reader.name, "dataset folder (--out)")
    if args.list is not None:
        prepare_output_dir(args.list.parent, "folder of --list", recursive=False)
    detector = create_detector(args.detector, args.antelopev2, tuple(args.det_size), args.threshold,
                               device=resolve_device(args.device))
    summary = create_dataset(reader, args.raw, args.fits, args.out, detector, list_path=args.list,
                             overwrite=args.overwrite, actors=args.actors, min_score=args.min_score)
    if summary.failed or summary.actors_without_fit:
        print(f"{len(summary.failed)} photos/fits failed, {len(summary.actors_without_fit)} actors had no fit; "
              f"see {args.out / reader.name / FAILURES_FILE}")
    return 0


if __name__ == "__main__":
    setup_logging()
    run_main(main)
