"""``python -m micalib.viewer FOLDER``: write the viewer page (``micalib/viewer/page.py``) of a
tracking folder (``OUT/NAME``, needs ``NAME.glb``: ``python -m micalib.export.gltf OUT/NAME``), of
every clip in a ``track.py -o`` folder, or of a demo output folder; prints the page paths."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loguru import logger

from utils.errors import MICAError, run_main


def main(argv=None) -> int:
    from micalib.viewer.page import write_demo_page, write_tracking_page

    p = argparse.ArgumentParser(prog="python -m micalib.viewer", description="write index.html to look at results")
    p.add_argument("folder", help="tracking folder OUT/NAME, track.py's -o folder, or demo.py's -o folder")
    p.add_argument("-a", "--arcface", default=None, help="demo.py's -a folder (the crops shown beside the meshes)")
    args = p.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        raise MICAError(f"{folder} is not a folder; pass a tracking folder OUT/NAME or a demo output folder")
    clips = [folder] if (folder / "checkpoint").is_dir() else sorted(d for d in folder.iterdir() if (d / "checkpoint").is_dir())
    if clips and not any(folder.rglob("mesh.ply")):
        for clip in clips:
            glb = clip / f"{clip.name}.glb"
            if not glb.is_file():
                raise MICAError(f"{glb} not found; write it with: python -m micalib.export.gltf {clip}")
            print(write_tracking_page(clip, glb))
        return 0
    if not any(folder.rglob("mesh.ply")):
        raise MICAError(f"{folder} holds no tracked clip (checkpoint/) and no demo mesh (NAME/mesh.ply)")
    print(write_demo_page(folder, args.arcface))
    return 0


if __name__ == "__main__":
    logger.remove()
    logger.add(sys.stderr, format="<level>{level: <8}</level> {message}", level="INFO")
    run_main(main)
